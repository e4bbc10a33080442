"""Quality benchmark, a miniature of the paper's main table: full attention vs token reduction vs VISOR (+ policy).

    .venv/bin/python bench/bench_quality.py [--write docs/BENCHMARKS.md]   # about 40 minutes on 2 CPUs
    .venv/bin/python bench/bench_quality.py --smoke [--write FILE]         # a minute: what the test suite runs

Every model is made by the real jobs on a local Ray, tracked in a fresh MLflow
store in the work directory: synthetic shards (:mod:`pipelines.synth`, seeded) →
three trainings from scratch with the training preset ``bench-quality`` (same
steps, data, seed and optimiser; they differ only in the layer plan) —

* (a) ``full attention``: every decoder layer in mode S — LLaVA-OneVision itself;
* (b) ``token reduction``: (a) with 2×2 average pooling of every tile's visual tokens;
* (c) ``VISOR``: the default plan (C layers 1 and 4, budgets ∅ ⊂ {2} ⊂ {2, 5}), universal
  training over its budgets —

then (d) the policy job on (c) with the held-out ``policy`` split, and one
``visor evaluate`` of (d) on the held-out ``eval`` split with (a) and (b) as
baselines. The report has accuracy per question type and mean prefill FLOPs per
sample for every row, the budgets the policy chose per question type, the
Pareto plot and the budget histogram (PNG files next to the Markdown file).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import provenance, publish  # noqa: E402  (bench/ is a folder of scripts, not a package)

from pipelines.synth import CHANCE  # noqa: E402

SECTION = "## Quality: full attention vs token reduction vs VISOR"
PRESET = "bench-quality"
BASELINES = ("full attention", "token reduction")


@dataclass(frozen=True)
class Scale:
    """Sample counts and training length; the model, optimiser and seeds come from the preset."""

    train: int
    eval: int
    policy: int
    shard_size: int
    overrides: tuple[str, ...] = ()


FULL = Scale(train=12_000, eval=600, policy=900, shard_size=1000)
SMOKE = Scale(train=48, eval=24, policy=32, shard_size=16, overrides=(
    "optim.max_steps=3", "optim.warmup_steps=1", "data.batch_size=4", "run.log_every=1", "run.checkpoint_every=3",
))


def variants(num_layers: int) -> dict[str, list[str]]:
    """Training overrides of (a), (b) and (c): only the layer plan and the token reduction differ."""
    full = ["model.cross_layers=[]", f"model.budgets=[{list(range(num_layers))}]"]
    return {"full attention": full, "token reduction": [*full, "model.token_reduction=2"], "VISOR": []}


def run(scale: Scale, workdir: Path, seed: int) -> dict:
    """Data → three trainings → policy → evaluation; returns the evaluation report plus stage times."""
    from jobs.evaluation.config import PolicyOptions, ScoreOptions
    from jobs.evaluation.evaluate import evaluate
    from jobs.evaluation.policy import run_policy_job
    from jobs.train.config import load_train_config
    from jobs.train.driver import run_training
    from pipelines.synth import write_synth

    times: dict[str, float] = {}
    started = time.perf_counter()
    data = workdir / "data"
    write_synth(data, scale.train, scale.eval, scale.shard_size, seed, policy=scale.policy)
    times["data"] = time.perf_counter() - started
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    common = [f"data.train=['{data}/train-*.tar']", f"run.storage_path={workdir / 'runs'}",
              f"mlflow.tracking_uri={uri}", f"seed={seed}", f"budgets.seed={seed}", *scale.overrides]
    shared = load_train_config(PRESET, common)  # what the three trainings have in common
    models = {}
    for name, extra in variants(shared.model.tiny.num_layers).items():
        slug = name.replace(" ", "-").lower()
        config = load_train_config(PRESET, [*common, *extra, f"name=bench-{slug}",
                                            f"mlflow.registered_model=bench-{slug}"])
        started = time.perf_counter()
        outcome = run_training(config)
        times[f"train {name}"] = time.perf_counter() - started
        assert outcome.registered_version is not None, "the bench-quality preset registers every trained model"
        models[name] = f"models:/bench-{slug}/{outcome.registered_version}"

    score = ScoreOptions(batch_size=32)
    started = time.perf_counter()
    policy = run_policy_job(models["VISOR"], str(data / "policy-*.tar"), uri,
                            PolicyOptions(registered_model="bench-visor", seed=seed, score=score))
    times["policy"] = time.perf_counter() - started
    started = time.perf_counter()
    outcome = evaluate(f"models:/bench-visor/{policy.registered_version}", str(data / "eval-*.tar"), uri, score,
                       baselines={name: models[name] for name in BASELINES})
    times["evaluate"] = time.perf_counter() - started
    return {"report": outcome.report, "times": times, "tau": policy.tau, "seed": seed,
            "steps": shared.optim.max_steps, "batch": shared.data.batch_size * shared.scaling.num_workers,
            "lr": shared.optim.lr, "samples": {"train": scale.train, "eval": scale.eval, "policy": scale.policy},
            "plan": json.loads(_plan_tag(uri, policy.registered_version))}


def _plan_tag(uri: str, version: str) -> str:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri).get_model_version("bench-visor", version).tags["plan"]


# ------------------------------------------------------------------------------------------------ report
def ordered_rows(report: dict) -> list[dict]:
    """(a) full attention, (b) token reduction, (c) VISOR per budget, (d) VISOR + policy."""
    rows = {r["name"]: r for r in report["rows"]}
    budgets = sorted((r for r in report["rows"] if r["budget"] is not None and not r.get("baseline")),
                     key=lambda r: r["budget"])
    return [rows[name] for name in BASELINES] + budgets + [rows["policy"]]


def label(row: dict) -> str:
    """The table's name for a report row."""
    if row.get("baseline"):
        return {"full attention": "(a) full attention (LLaVA-OneVision)",
                "token reduction": "(b) token reduction, 2×2 pooling"}[row["name"]]
    return "(d) VISOR + policy" if row["name"] == "policy" else f"(c) VISOR, budget {row['budget']}"


def table(result: dict) -> list[str]:
    """Markdown rows: chance, then (a)–(d) with accuracy per type, overall, FLOPs and the saving vs (a)."""
    rows = ordered_rows(result["report"])
    types = sorted(CHANCE)
    full = rows[0]
    lines = ["| model | " + " | ".join(types) + " | all | mean MFLOPs | LM MFLOPs | FLOPs saving vs (a) |",
             "| --- | " + " | ".join("---:" for _ in types) + " | ---: | ---: | ---: | ---: |",
             "| chance | " + " | ".join(f"{CHANCE[t]:.2f}" for t in types)
             + f" | {sum(CHANCE.values()) / len(CHANCE):.2f} | | | |"]
    for row in rows:
        by_type = " | ".join(f"{row['accuracy_by_type'][t]:.2f}" for t in types)
        lines.append(f"| {label(row)} | {by_type} | {row['accuracy']:.3f} | {row['mean_flops'] / 1e6:.2f} | "
                     f"{row['mean_language_flops'] / 1e6:.2f} | {full['mean_flops'] / row['mean_flops']:.2f}x |")
    return lines


def mean_budget(policy: dict, kind: str) -> float:
    """The mean budget the policy row chose for questions of type ``kind``."""
    counts = policy["budget_histogram"][kind]
    return sum(int(b) * n for b, n in counts.items()) / max(sum(counts.values()), 1)


def histogram_table(policy: dict) -> list[str]:
    """Markdown rows: per question type, how many samples the policy sent to each budget."""
    histogram = policy["budget_histogram"]
    budgets = sorted({int(b) for counts in histogram.values() for b in counts})
    lines = ["| question type | " + " | ".join(f"budget {b}" for b in budgets) + " | mean budget |",
             "| --- | " + " | ".join("---:" for _ in budgets) + " | ---: |"]
    for kind, counts in histogram.items():
        lines.append(f"| {kind} | " + " | ".join(str(counts.get(str(b), 0)) for b in budgets)
                     + f" | {mean_budget(policy, kind):.2f} |")
    return lines


def analysis(result: dict) -> list[str]:
    """The claims of the issue, each checked against the measured rows (no claim is assumed)."""
    rows = ordered_rows(result["report"])
    full, reduced, *budgets, policy = rows
    largest = budgets[-1]
    fine_drop = full["accuracy_by_type"]["fine"] - reduced["accuracy_by_type"]["fine"]
    gap = full["accuracy"] - largest["accuracy"]
    beats = all(row["accuracy_by_type"][t] > CHANCE[t] + 0.1 for row in rows for t in CHANCE)
    return [
        f"* Every model beats chance by more than 10 points on every question type: {'yes' if beats else 'NO'}.",
        f"* Token reduction vs full attention on *fine* questions: {reduced['accuracy_by_type']['fine']:.2f} vs "
        f"{full['accuracy_by_type']['fine']:.2f} ({fine_drop * 100:.1f} points lost) at "
        f"{full['mean_flops'] / reduced['mean_flops']:.2f}x fewer FLOPs; on coarse "
        f"{reduced['accuracy_by_type']['coarse']:.2f} vs {full['accuracy_by_type']['coarse']:.2f}.",
        f"* VISOR's largest budget vs full attention: accuracy {largest['accuracy']:.3f} vs {full['accuracy']:.3f} "
        f"({-gap * 100:+.1f} points; the claim is within ~1 point: {'holds' if gap <= 0.01 else 'does NOT hold'}) "
        f"at {full['mean_flops'] / largest['mean_flops']:.2f}x fewer FLOPs "
        f"({full['mean_language_flops'] / largest['mean_language_flops']:.2f}x in the language model).",
        f"* VISOR + policy (τ = {result['tau']:.2f}): accuracy {policy['accuracy']:.3f} at "
        f"{full['mean_flops'] / policy['mean_flops']:.2f}x fewer FLOPs than full attention; mean budget chosen: "
        + ", ".join(f"{t} {mean_budget(policy, t):.2f}" for t in sorted(CHANCE))
        + f" (the claim — little on coarse, more on fine — "
        f"{'holds' if mean_budget(policy, 'fine') > mean_budget(policy, 'coarse') else 'does NOT hold'}).",
    ]


def save_plots(result: dict, folder: Path) -> list[str]:
    """Pareto plot and budget histogram as PNG files in ``folder``; returns their file names."""
    from jobs.evaluation.evaluate import histogram_figure, pareto_figure

    folder.mkdir(parents=True, exist_ok=True)
    report = result["report"]
    names = ["quality-pareto.png", "quality-budgets.png"]
    pareto = pareto_figure(report["rows"])
    pareto.axes[0].set_title("Held-out accuracy vs prefill FLOPs (synthetic benchmark)")
    pareto.savefig(folder / names[0], dpi=110)
    policy = [r for r in report["rows"] if r["name"] == "policy"][0]
    histogram_figure(policy).savefig(folder / names[1], dpi=110)
    return names


def markdown(result: dict, command: str, images: list[str]) -> str:
    """The whole section: provenance, set-up, the tables, the plots, the checked claims, wall time."""
    report = result["report"]
    times = result["times"]
    stage_times = ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items())
    lines = provenance(SECTION, command) + [
        f"Synthetic data (`pipelines/synth.py`, seed {result['seed']}): {result['samples']['train']:,} training, "
        f"{result['samples']['policy']:,} policy and {report['samples']:,} held-out evaluation samples (a training "
        "sample asks all three questions, a held-out one asks one; question types in turn). Each model: "
        "the `bench-quality` preset (`jobs/configs/bench-quality.yaml`), trained from scratch for "
        f"{result['steps']:,} steps of {result['batch']} samples, lr {result['lr']:g}, seed "
        f"{result['seed']} (initialisation, data order and budget draws). VISOR plan: cross-attention layers "
        f"{result['plan']['cross_layers']}, budgets {result['plan']['budgets']} (self-attention layers). "
        f"Accuracy is greedy exact match on the held-out split; FLOPs are prefill FLOPs per sample "
        "(`visor_model.flops`, vision tower included).",
        "",
        *table(result),
        "",
        "Budgets the policy chose on the held-out split:",
        "",
        *histogram_table(ordered_rows(report)[-1]),
        "",
        *[f"![{name}]({'img/' + name})" for name in images],
        "",
        "What the numbers say:",
        "",
        *analysis(result),
        "",
        f"Wall time: {sum(times.values()) / 60:.1f} min ({stage_times}).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="Tiny counts, 3 steps: checks the report, not quality.")
    parser.add_argument("--seed", type=int, default=0, help="Data, initialisation, data order and budget draws.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Extra training-config override for all three models (e.g. optim.max_steps=500).")
    parser.add_argument("--workdir", type=Path, help="Keep data, checkpoints and the MLflow store here.")
    parser.add_argument("--write", type=Path, help="Markdown file whose quality section is replaced.")
    args = parser.parse_args()
    base = SMOKE if args.smoke else FULL
    scale = replace(base, overrides=(*base.overrides, *args.overrides))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        result = run(scale, workdir, args.seed)
        (workdir / "bench-quality.json").write_text(json.dumps(result, indent=2) + "\n")
    images = save_plots(result, args.write.parent / "img") if args.write else []
    publish(markdown(result, " ".join(["python", "bench/bench_quality.py", *sys.argv[1:]]), images), SECTION,
            args.write)


if __name__ == "__main__":
    main()
