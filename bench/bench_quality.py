"""Quality benchmark, a miniature of the paper's main table built with the paper's recipe.

    .venv/bin/python bench/bench_quality.py [--seeds 0 1] [--write docs/BENCHMARKS.md]   # see docs for the time
    .venv/bin/python bench/bench_quality.py --smoke [--write FILE]                        # what the test suite runs

Every model is made by the real jobs on a local Ray, tracked in a fresh MLflow store per seed, from the
training preset ``bench-quality`` (``jobs/configs/bench-quality.yaml``), whose four stages are the recipe:

* (a) ``full attention`` — stages 1-2 of the preset: a tiny full-attention model (LLaVA-OneVision itself)
  trained from scratch on a frozen patch-only vision tower, the stand-in for a pretrained LLaVA-OneVision;
* (b) ``token reduction`` — the preset's fine-tuning stage started from (a) with full attention and 2×2
  pooling of every tile's visual tokens;
* (c) ``VISOR`` — the fine-tuning stage started from (a) as the preset states it: converted to the default plan
  with gated cross-attention, then the universal network trained over every budget;

(b) and (c) share the data, seeds, steps and learning rates. The fine-tuning stage keeps a checkpoint every
quarter of its steps, and every budget of (c) is scored at each (the curve: whether the budgets still differ
at twice the steps, once VISOR has converged). Then (d) the policy job on (c) with the held-out ``policy``
split, and one ``visor evaluate`` of (d) on the held-out ``eval`` split with (a) and (b) as baselines. With
several seeds the whole pipeline runs once per seed (data, initialisation, data order, budget draws) and the
report gives the mean and each seed's figures. The report has accuracy per question type and mean prefill FLOPs
per sample for every row, the curve, the budgets the policy chose per question type, the issue's goals checked
against the numbers, the Pareto plot, the budget histogram and the curve (PNG files next to the Markdown file).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import provenance, publish  # noqa: E402  (bench/ is a folder of scripts, not a package)

from pipelines.synth import CHANCE  # noqa: E402

if TYPE_CHECKING:
    from jobs.evaluation.config import ScoreOptions
    from jobs.train.driver import TrainOutcome

SECTION = "## Quality: full attention vs token reduction vs VISOR"
PRESET = "bench-quality"
PRETRAINING_STAGES = 2  # the preset's first stages make (a); the others convert and fine-tune it
BASELINES = ("full attention", "token reduction")
DATA = "bench-data"  # the preset's shard paths are relative to the work directory


@dataclass(frozen=True)
class Scale:
    """Sample counts and extra training overrides; the recipe itself comes from the preset."""

    train: int
    detail: int
    eval: int
    policy: int
    shard_size: int
    overrides: tuple[str, ...] = ()


FULL = Scale(train=12_000, detail=20_000, eval=600, policy=900, shard_size=1000)  # detail: a fresh sample a step
SMOKE = Scale(train=48, detail=16, eval=24, policy=32, shard_size=16, overrides=(
    "optim.warmup_steps=1", "data.batch_size=4", "run.log_every=1", "run.checkpoint_every=3",
))
SMOKE_STEPS = 3  # every stage, in the smoke run


def recipe(overrides: tuple[str, ...], smoke: bool) -> dict:
    """The preset as a mapping with ``overrides`` applied (every stage's steps set to 3 in a smoke run)."""
    from jobs.config import apply_override, config_path

    raw = yaml.safe_load(config_path(PRESET).read_text())
    for item in overrides:
        apply_override(raw, item)
    if smoke:
        for stage in raw["stages"]:
            stage.setdefault("optim", {})["max_steps"] = SMOKE_STEPS
            if "run" in stage:  # the fine-tuning stage's curve: checkpoints at steps 2 and 3
                stage["run"]["checkpoint_every"] = SMOKE_STEPS - 1
    return raw


def variants(raw: dict, pretrained: str) -> dict[str, dict]:
    """The training configs of (b) and (c): the preset's fine-tuning stages started from ``pretrained`` (a);
    (b) keeps full attention and pools tokens 2×2, (c) is the preset as written."""
    finetune = {**raw, "model": {"init": "visor", "path": pretrained}, "stages": raw["stages"][PRETRAINING_STAGES:]}
    pooled = copy.deepcopy(finetune)
    for stage in pooled["stages"]:
        stage["model"] = {"plan": "full_attention", "token_reduction": 2}
    return {"token reduction": pooled, "VISOR": finetune}


def train(raw: dict, name: str, uri: str) -> TrainOutcome:
    """Run the recipe ``raw`` as ``name`` (also its registered model)."""
    from jobs.config import load_config
    from jobs.train.config import TrainConfig
    from jobs.train.driver import run_training

    config = load_config(TrainConfig, {**raw, "name": name,
                                       "mlflow": {"tracking_uri": uri, "registered_model": name}})
    outcome = run_training(config)
    assert outcome.registered_version is not None, "the bench-quality preset registers every trained model"
    return outcome


def registered(outcome: TrainOutcome, name: str) -> str:
    return f"models:/{name}/{outcome.registered_version}"


def budget_curve(outcome: TrainOutcome, spec: str, uri: str, score: ScoreOptions) -> list[dict]:
    """Every budget of the model at each checkpoint its last training stage kept (in step order): ``[{"step",
    "rows"}]`` with the evaluation's per-budget rows (accuracy, accuracy per question type). A checkpoint holds the
    weights (``state.pt``); its model directory is written from them and the final model's config and processor."""
    from jobs.evaluation.report import summarize
    from jobs.evaluation.scoring import score_split
    from jobs.train.checkpoint import read_state
    from pipelines.shards import ShardSet
    from visor_model import VisorForConditionalGeneration
    from visor_model.processing import VisorProcessor

    data = ShardSet.of(spec)
    final = Path(outcome.model_dir)
    points = []
    for folder in (p for p in Path(outcome.checkpoint).parent.glob("checkpoint_*") if p.is_dir()):
        state = read_state(folder)
        model_dir = folder / "model"
        if not model_dir.is_dir():
            model = VisorForConditionalGeneration.from_pretrained(final, local_files_only=True)
            model.load_state_dict(state["model"])
            model.save_pretrained(model_dir)
            VisorProcessor.from_pretrained(final).save_pretrained(model_dir)
        rows = [r.model_dump(mode="json") for r in summarize(score_split(str(model_dir), data, uri, score))
                if r.budget is not None]
        points.append({"step": int(state["step"]), "rows": rows})
    return sorted(points, key=lambda p: p["step"])


def run(scale: Scale, workdir: Path, seed: int, smoke: bool) -> dict:
    """Data → (a) → (b) and (c) from (a) → policy → evaluation, in ``workdir``; returns the evaluation report,
    the stage times and the settings."""
    from jobs.evaluation.config import PolicyTraining, ScoreOptions
    from jobs.evaluation.evaluate import evaluate
    from jobs.evaluation.policy import run_policy_job
    from pipelines.synth import write_synth

    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)  # the preset's relative paths (shards, checkpoints) resolve here
    times: dict[str, float] = {}
    started = time.perf_counter()
    write_synth(Path(DATA), scale.train, scale.eval, scale.shard_size, seed, policy=scale.policy,
                detail=scale.detail)
    times["data"] = time.perf_counter() - started
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    raw = recipe((f"seed={seed}", f"sampling.seed={seed}", *scale.overrides), smoke)
    models, outcomes = {}, {}
    started = time.perf_counter()
    outcomes["full attention"] = train({**raw, "stages": raw["stages"][:PRETRAINING_STAGES]},
                                       "bench-full-attention", uri)
    models["full attention"] = registered(outcomes["full attention"], "bench-full-attention")
    times["train (a) full attention"] = time.perf_counter() - started
    for name, config in variants(raw, models["full attention"]).items():
        started = time.perf_counter()
        registered_name = f"bench-{name.replace(' ', '-').lower()}"
        outcomes[name] = train(config, registered_name, uri)
        models[name] = registered(outcomes[name], registered_name)
        times[f"train {name}"] = time.perf_counter() - started

    score = ScoreOptions(batch_size=32)
    started = time.perf_counter()
    curve = budget_curve(outcomes["VISOR"], f"{DATA}/eval-*.tar", uri, score)
    times["curve"] = time.perf_counter() - started
    started = time.perf_counter()
    policy = run_policy_job(models["VISOR"], f"{DATA}/policy-*.tar", uri, PolicyTraining(seed=seed), score,
                            "bench-visor")
    times["policy"] = time.perf_counter() - started
    started = time.perf_counter()
    outcome = evaluate(f"models:/bench-visor/{policy.registered_version}", f"{DATA}/eval-*.tar", uri, score,
                       baselines={name: models[name] for name in BASELINES})
    times["evaluate"] = time.perf_counter() - started
    stages = [{"name": s["name"], "steps": s.get("optim", {}).get("max_steps", raw["optim"]["max_steps"])}
              for s in raw["stages"]]
    return {"report": outcome.report.model_dump(mode="json"), "curve": curve, "times": times, "tau": policy.tau,
            "seed": seed, "stages": stages, "batch": raw["data"]["batch_size"] * raw["scaling"]["num_workers"],
            "samples": {"train": scale.train, "detail": scale.detail, "eval": scale.eval, "policy": scale.policy},
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


def mean_rows(results: list[dict]) -> list[dict]:
    """The rows of :func:`ordered_rows` averaged over the seeds' results (accuracies, FLOPs, histograms)."""
    per_seed = [ordered_rows(r["report"]) for r in results]
    out = []
    for rows in zip(*per_seed, strict=True):
        row = dict(rows[0])
        for key in ("accuracy", "mean_flops", "mean_language_flops"):
            row[key] = sum(r[key] for r in rows) / len(rows)
        row["accuracy_by_type"] = {t: sum(r["accuracy_by_type"][t] for r in rows) / len(rows)
                                   for t in rows[0]["accuracy_by_type"]}
        if "budget_histogram" in row:
            row["budget_histogram"] = {t: {b: sum(r["budget_histogram"][t].get(b, 0) for r in rows)
                                           for b in {b for r in rows for b in r["budget_histogram"][t]}}
                                       for t in rows[0]["budget_histogram"]}
        out.append(row)
    return out


def label(row: dict) -> str:
    """The table's name for a report row."""
    if row.get("baseline"):
        return {"full attention": "(a) full attention (LLaVA-OneVision)",
                "token reduction": "(b) token reduction, 2×2 pooling"}[row["name"]]
    return "(d) VISOR + policy" if row["name"] == "policy" else f"(c) VISOR, budget {row['budget']}"


def table(rows: list[dict]) -> list[str]:
    """Markdown rows: chance, then (a)–(d) with accuracy per type, overall, FLOPs and the saving vs (a)."""
    types = sorted(CHANCE)
    full = rows[0]
    lines = ["| model | " + " | ".join(types) + " | all | mean MFLOPs | LM MFLOPs | FLOPs saving vs (a) | "
             "LM FLOPs saving vs (a) |",
             "| --- | " + " | ".join("---:" for _ in types) + " | ---: | ---: | ---: | ---: | ---: |",
             "| chance | " + " | ".join(f"{CHANCE[t]:.2f}" for t in types)
             + f" | {sum(CHANCE.values()) / len(CHANCE):.2f} | | | | |"]
    for row in rows:
        by_type = " | ".join(f"{row['accuracy_by_type'][t]:.3f}" for t in types)
        lines.append(f"| {label(row)} | {by_type} | {row['accuracy']:.3f} | {row['mean_flops'] / 1e6:.2f} | "
                     f"{row['mean_language_flops'] / 1e6:.2f} | {full['mean_flops'] / row['mean_flops']:.2f}x | "
                     f"{full['mean_language_flops'] / row['mean_language_flops']:.2f}x |")
    return lines


def seed_table(results: list[dict]) -> list[str]:
    """Markdown rows: each seed's overall and *fine* accuracy per model, and the policy's LM FLOPs saving."""
    head = [label(r) for r in ordered_rows(results[0]["report"])]
    lines = ["| seed | " + " | ".join(f"{h}: all / fine" for h in head) + " | (d) LM FLOPs saving |",
             "| ---: | " + " | ".join("---:" for _ in head) + " | ---: |"]
    for result in results:
        rows = ordered_rows(result["report"])
        cells = " | ".join(f"{r['accuracy']:.3f} / {r['accuracy_by_type']['fine']:.3f}" for r in rows)
        saving = rows[0]["mean_language_flops"] / rows[-1]["mean_language_flops"]
        lines.append(f"| {result['seed']} | {cells} | {saving:.2f}x |")
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


HARD = "fine"  # the fine type is the hard one: which white box is on top exists only in how tokens relate


def budget_gap(rows: list[dict], kind: str) -> float:
    """Largest budget's accuracy on ``kind`` minus budget 0's, from per-budget rows (sorted by budget)."""
    return rows[-1]["accuracy_by_type"][kind] - rows[0]["accuracy_by_type"][kind]


def curve_point(results: list[dict], fraction: float) -> list[dict]:
    """Per-budget rows of the curve at ``fraction`` of the fine-tuning steps, averaged over the seeds."""
    picked = []
    for result in results:
        last = result["curve"][-1]["step"]
        picked.append(min(result["curve"], key=lambda p: abs(p["step"] - fraction * last))["rows"])
    out = []
    for rows in zip(*picked, strict=True):
        row = dict(rows[0])
        row["accuracy"] = sum(r["accuracy"] for r in rows) / len(rows)
        row["accuracy_by_type"] = {t: sum(r["accuracy_by_type"][t] for r in rows) / len(rows)
                                   for t in rows[0]["accuracy_by_type"]}
        out.append(row)
    return sorted(out, key=lambda r: r["budget"])


def goals(rows: list[dict], results: list[dict], tau: str) -> list[str]:
    """The issue's goals, each checked against the (mean) rows and the curve — no claim is assumed."""
    full, reduced, *budgets, policy = rows
    largest = budgets[-1]
    fine_drop = full["accuracy_by_type"]["fine"] - reduced["accuracy_by_type"]["fine"]
    gap, policy_gap = full["accuracy"] - largest["accuracy"], full["accuracy"] - policy["accuracy"]
    lm_saving = full["mean_language_flops"] / policy["mean_language_flops"]
    half, end = curve_point(results, 0.5), curve_point(results, 1.0)
    coarse = [b["accuracy_by_type"]["coarse"] for b in budgets]
    spend = mean_budget(policy, HARD) - mean_budget(policy, "coarse")
    steps = results[0]["curve"][-1]["step"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    return [
        f"* (a) ≥ 0.90 on every question type: {verdict(min(full['accuracy_by_type'].values()) >= 0.9)} ("
        + ", ".join(f"{t} {v:.3f}" for t, v in sorted(full["accuracy_by_type"].items())) + ").",
        f"* (b) ≥ 10 points below (a) on *fine*: {verdict(fine_drop >= 0.1)} ({reduced['accuracy_by_type']['fine']:.3f}"
        f" vs {full['accuracy_by_type']['fine']:.3f}, {fine_drop * 100:.1f} points) at "
        f"{full['mean_flops'] / reduced['mean_flops']:.2f}x fewer FLOPs.",
        f"* (c) VISOR's largest budget within 2 points of (a) overall: {verdict(gap <= 0.02)} "
        f"({largest['accuracy']:.3f} vs {full['accuracy']:.3f}, {-gap * 100:+.1f} points) at "
        f"{full['mean_language_flops'] / largest['mean_language_flops']:.2f}x fewer language-model FLOPs.",
        f"* (c) on *{HARD}* the largest budget ≥ 15 points above budget 0 after {steps // 2} fine-tuning steps: "
        f"{verdict(budget_gap(half, HARD) >= 0.15)} ({budget_gap(half, HARD) * 100:+.1f} points); still so at twice "
        f"the steps ({steps}): {verdict(budget_gap(end, HARD) >= 0.15)} ({budget_gap(end, HARD) * 100:+.1f} points).",
        f"* (c) *coarse* flat across budgets (within 2 points): {verdict(max(coarse) - min(coarse) <= 0.02)} ("
        + " / ".join(f"{v:.3f}" for v in coarse) + ").",
        f"* (d) VISOR + policy within 2 points of (a) at ≥ 3x fewer language-model FLOPs: "
        f"{verdict(policy_gap <= 0.02 and lm_saving >= 3)} ({policy['accuracy']:.3f} vs {full['accuracy']:.3f}, "
        f"{-policy_gap * 100:+.1f} points, {lm_saving:.2f}x fewer LM FLOPs, "
        f"{full['mean_flops'] / policy['mean_flops']:.2f}x fewer in total; τ {tau}).",
        f"* (d) the policy's mean budget on *{HARD}* ≥ 0.5 above *coarse*: {verdict(spend >= 0.5)} ("
        + ", ".join(f"{t} {mean_budget(policy, t):.2f}" for t in sorted(CHANCE)) + ").",
    ]


def curve_table(results: list[dict]) -> list[str]:
    """Markdown rows: each seed's accuracy per budget at every kept checkpoint of (c)'s fine-tuning, overall and
    per question type."""
    budgets = [r["budget"] for r in results[0]["curve"][0]["rows"]]
    types = sorted(CHANCE)
    lines = ["| seed | step | " + " | ".join(f"budget {b}: all / " + " / ".join(types) for b in budgets) + " |",
             "| ---: | ---: | " + " | ".join("---:" for _ in budgets) + " |"]
    for result in results:
        for point in result["curve"]:
            cells = " | ".join(f"{r['accuracy']:.3f} / " + " / ".join(f"{r['accuracy_by_type'][t]:.2f}" for t in types)
                               for r in point["rows"])
            lines.append(f"| {result['seed']} | {point['step']} | {cells} |")
    return lines


def curve_figure(results: list[dict]):
    """Accuracy on every question type per budget over (c)'s fine-tuning steps, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = sorted(CHANCE)
    figure, axes = plt.subplots(1, len(types), figsize=(4 * len(types), 3.4), sharey=True)
    for axis, kind in zip(axes, types, strict=True):
        for result in results:
            budgets = [r["budget"] for r in result["curve"][0]["rows"]]
            for b in budgets:
                axis.plot([p["step"] for p in result["curve"]],
                          [p["rows"][b]["accuracy_by_type"][kind] for p in result["curve"]],
                          marker="o", color=f"C{b}", alpha=0.8, label=f"budget {b}" if result is results[0] else None)
        axis.axhline(CHANCE[kind], color="grey", linestyle=":", linewidth=1)
        axis.set_title(kind)
        axis.set_xlabel("fine-tuning step")
    axes[0].set_ylabel("held-out accuracy")
    axes[0].legend(loc="lower right")
    figure.tight_layout()
    return figure


def save_plots(results: list[dict], folder: Path) -> list[str]:
    """Pareto plot and budget histogram (of the first seed) as PNG files in ``folder``; returns their names."""
    from jobs.evaluation.evaluate import histogram_figure, pareto_figure
    from jobs.evaluation.report import EvalReport

    folder.mkdir(parents=True, exist_ok=True)
    report = EvalReport.model_validate(results[0]["report"])
    names = ["quality-pareto.png", "quality-budgets.png", "quality-curve.png"]
    pareto = pareto_figure(report.rows)
    pareto.axes[0].set_title(f"Held-out accuracy vs prefill FLOPs (synthetic benchmark, seed {results[0]['seed']})")
    pareto.savefig(folder / names[0], dpi=110)
    histogram_figure(report.policy).savefig(folder / names[1], dpi=110)
    curve_figure(results).savefig(folder / names[2], dpi=110)
    return names


def markdown(results: list[dict], command: str, images: list[str]) -> str:
    """The whole section: provenance, set-up, the tables, the plots, the checked goals, wall time."""
    first = results[0]
    rows = mean_rows(results)
    seeds = ", ".join(str(r["seed"]) for r in results)
    stages = ", ".join(f"{s['name']} {s['steps']:,}" for s in first["stages"])
    minutes = [sum(r["times"].values()) / 60 for r in results]
    stage_times = "; ".join(f"seed {r['seed']}: " + ", ".join(f"{k} {v / 60:.1f}" for k, v in r["times"].items())
                            for r in results)
    samples = first["samples"]
    lines = provenance(SECTION, command) + [
        f"Synthetic data (`pipelines/synth.py`, one data seed per run: {seeds}): {samples['train']:,} training "
        f"samples asking every question, {samples['detail']:,} asking the box questions (the `detail` split), "
        f"{samples['policy']:,} policy and {first['report']['samples']:,} held-out evaluation samples (one question "
        f"each, types in turn). The recipe is the `bench-quality` preset (`jobs/configs/bench-quality.yaml`), "
        f"steps per stage: {stages}; {first['batch']} samples a step. (a) is its first two stages (full "
        f"attention from scratch); (b) and (c) are its last two stages started from (a) — (b) with full attention "
        f"and 2×2 token reduction, (c) as VISOR with plan C layers {first['plan']['cross_layers']}, budgets "
        f"{first['plan']['budgets']} and gated cross-attention. Accuracy is greedy exact match on the held-out "
        "split; FLOPs are prefill FLOPs per sample (`visor_model.flops`, vision tower included).",
        "",
        f"Mean over {len(results)} run(s) (seeds {seeds}):",
        "",
        *table(rows),
        "",
        "Each run (overall / *fine* accuracy) — the spread between seeds is the noise to read the table with:",
        "",
        *seed_table(results),
        "",
        "VISOR's budgets over its fine-tuning steps (every kept checkpoint scored on the held-out split; the "
        "table's (c) rows are the last step):",
        "",
        *curve_table(results),
        "",
        "Budgets the policy chose on the held-out split, summed over the runs:",
        "",
        *histogram_table(rows[-1]),
        "",
        *[f"![{name}]({'img/' + name})" for name in images],
        "",
        "The issue's goals against the mean figures:",
        "",
        *goals(rows, results, ", ".join(f"{r['tau']:.2f}" for r in results)),
        "",
        f"Wall time: {sum(minutes):.1f} min in all ({', '.join(f'{m:.1f}' for m in minutes)} per run; minutes per "
        f"stage — {stage_times}).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="Tiny counts, 3 steps a stage: checks the report.")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="One whole run per seed (default: 0 1; 0 with --smoke).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Extra override of the recipe, for every model (e.g. optim.lr=0.001).")
    parser.add_argument("--workdir", type=Path, help="Keep data, checkpoints and the MLflow stores here.")
    parser.add_argument("--write", type=Path, help="Markdown file whose quality section is replaced.")
    parser.add_argument("--report-only", action="store_true",
                        help="Write the report from the seeds' results already in --workdir (no training).")
    args = parser.parse_args()
    if args.report_only and not args.workdir:
        parser.error("--report-only needs --workdir (where the seeds' results are)")
    base = SMOKE if args.smoke else FULL
    scale = replace(base, overrides=(*base.overrides, *args.overrides))
    seeds = args.seeds or ([0] if args.smoke else [0, 1])
    write = args.write.resolve() if args.write else None
    with tempfile.TemporaryDirectory() as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        results = []
        for seed in seeds:  # each seed's result is kept as it finishes: --report-only rebuilds from them
            result_file = workdir / f"seed-{seed}" / "result.json"
            if not args.report_only:
                result_file.parent.mkdir(parents=True, exist_ok=True)
                result_file.write_text(json.dumps(run(scale, result_file.parent, seed, args.smoke), indent=2) + "\n")
            results.append(json.loads(result_file.read_text()))
        (workdir / "bench-quality.json").write_text(json.dumps(results, indent=2) + "\n")
        os.chdir(workdir.parent)
    images = save_plots(results, write.parent / "img") if write else []
    publish(markdown(results, " ".join(["python", "bench/bench_quality.py", *sys.argv[1:]]), images), SECTION, write)


if __name__ == "__main__":
    main()
