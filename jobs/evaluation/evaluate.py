"""``visor evaluate``: accuracy, FLOPs and latency of a model per budget and under its policy.

The report (:func:`summarize`, written as JSON and logged to MLflow with two plots)::

    {"model_uri", "data_version", "samples", "quarantine", "scored_on" (device, dtype, Ray GPU ids of the actors),
     "rows": [{"name": "budget 0" | … | "policy" | "<baseline> …", "budget": int | None,
               "accuracy", "accuracy_by_type": {type: acc}, "accuracy_by_benchmark": {data_source: score},
               "mean_flops", "mean_language_flops",
               "mean_latency_s", "saving_vs_llava_ov" (LLaVA-OneVision's mean FLOPs on the same samples
               / this row's), "budget_histogram": {type: {budget: n}} (policy rows only)}, …],
     "operating_point": the policy row if the policy is trained, else the largest budget}

Accuracy is the mean ``score`` of :mod:`jobs.evaluation.scoring`: greedy exact match of the reference answer, or,
for a sample that names a benchmark metric (``anls``, ``relaxed``, ``vqa``, ``contains``, ``exact``), that metric
of its generated answer (:mod:`jobs.evaluation.generation`); ``accuracy_by_benchmark`` is the same per
``data_source`` (only when some sample has one; ``mean_flops_by_benchmark`` beside it), logged to MLflow as
``<row>/accuracy/<benchmark>`` and drawn in ``plots/benchmarks.png``; the generated answers go to
``generated_answers.jsonl``.
FLOPs are per sample from :mod:`visor_model.flops` with each sample's own token
counts. Baselines (``--baseline NAME=URI``, e.g. a full-attention LLaVA-OneVision
conversion or a token-reduction model) are scored the same way and added as rows.

When the model URI is a registered version (``models:/name/N`` or
``models:/name@alias``) the version gets the tags ``eval/<data version>/accuracy``,
``…/mean_flops`` and ``…/run_id`` and ``eval/latest_data_version`` — what
promotion compares.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jobs.evaluation.config import EvaluateConfig, ScoreOptions
from jobs.evaluation.scoring import Scores, score_split
from pipelines.shards import ShardSet

EXPERIMENT = "visor-eval"


def _by_group(values: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    return {str(g): float(values[groups == g].mean()) for g in sorted(set(groups.tolist()))}


def _row(name: str, budget: int | None, correct: np.ndarray, flops: np.ndarray, language: np.ndarray,
         latency: np.ndarray, types: np.ndarray, baseline: np.ndarray, sources: np.ndarray | None = None) -> dict:
    row = {"name": name, "budget": budget, "accuracy": float(correct.mean()),
           "accuracy_by_type": _by_group(correct, types),
           "mean_flops": float(flops.mean()), "mean_language_flops": float(language.mean()),
           "mean_latency_s": float(latency.mean()), "saving_vs_llava_ov": float(baseline.mean() / flops.mean())}
    if sources is not None and any(sources):
        row["accuracy_by_benchmark"] = _by_group(correct, sources)
        row["mean_flops_by_benchmark"] = _by_group(flops, sources)
    return row


def summarize(scores: Scores) -> list[dict]:
    """One row per budget, plus a ``policy`` row (with the budget histogram per question type) when the
    model's policy is trained."""
    c = scores.columns
    types = c["question_type"].astype(str)
    sources = c["data_source"].astype(str) if "data_source" in c else None
    quality = c.get("score", c["correct"]).astype(np.float64)
    rows = [
        _row(f"budget {b}", b, quality[:, b], c["flops"][:, b], c["language_flops"][:, b],
             c["latency"][:, b], types, c["baseline_flops"], sources)
        for b in range(c["correct"].shape[1])
    ]
    chosen = c["chosen"].astype(int)
    if (chosen >= 0).all():
        pick = np.arange(len(chosen)), chosen
        row = _row("policy", None, quality[pick], c["flops"][pick], c["language_flops"][pick],
                   c["latency"][pick], types, c["baseline_flops"], sources)
        row["budget_histogram"] = {
            str(t): {str(b): int(((types == t) & (chosen == b)).sum()) for b in range(c["correct"].shape[1])}
            for t in sorted(set(types.tolist()))
        }
        rows.append(row)
    return rows


def generated_answers(scores: Scores) -> list[dict]:
    """One record per sample that names a metric: ``url``, ``key``, ``data_source``, ``metric``, the answer
    generated at the largest budget and its score at every budget (logged as ``generated_answers.jsonl``, to
    check a benchmark's scores by eye)."""
    c = scores.columns
    if "prediction" not in c or "metric" not in c:
        return []
    return [{"url": str(c["url"][i]), "key": str(c["key"][i]), "data_source": str(c["data_source"][i]),
             "metric": str(c["metric"][i]), "prediction": str(c["prediction"][i]),
             "score": [round(float(v), 6) for v in c["score"][i]]}
            for i in range(scores.num_samples) if str(c["metric"][i])]


def operating_point(rows: list[dict]) -> dict:
    """The row a deployed model runs at: its policy if trained, else its largest budget."""
    policy = [r for r in rows if r["name"] == "policy"]
    return policy[0] if policy else max((r for r in rows if r["budget"] is not None), key=lambda r: r["budget"])


def pareto_figure(rows: list[dict]):
    """Accuracy vs mean total FLOPs: one point per budget (joined), the policy, and each baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    budgets = [r for r in rows if r["budget"] is not None and not r.get("baseline")]
    ax.plot([r["mean_flops"] / 1e9 for r in budgets], [r["accuracy"] for r in budgets], "o-", label="VISOR budgets")
    for r in budgets:
        ax.annotate(str(r["budget"]), (r["mean_flops"] / 1e9, r["accuracy"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    for r in rows:
        if r["name"] == "policy":
            ax.plot(r["mean_flops"] / 1e9, r["accuracy"], "r*", markersize=14, label="VISOR policy")
        elif r.get("baseline"):
            ax.plot(r["mean_flops"] / 1e9, r["accuracy"], "s", label=r["name"])
    return _flops_axes(fig, ax, "accuracy (exact match, or each sample's metric)", "Accuracy vs compute")


def metric_key(name: str) -> str:
    """``name`` as an MLflow metric-name part (letters, digits, ``_-.`` only)."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


def benchmark_figure(rows: list[dict]):
    """Score (each benchmark's own metric) vs mean total FLOPs per benchmark: one line over the budgets, a star
    for the policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    budgets = [r for r in rows if r["budget"] is not None and not r.get("baseline")]
    policy = [r for r in rows if r["name"] == "policy"]
    for benchmark in sorted({b for r in rows for b in r.get("accuracy_by_benchmark", {})}):
        line = [(r["mean_flops_by_benchmark"][benchmark] / 1e9, r["accuracy_by_benchmark"][benchmark])
                for r in budgets if benchmark in r.get("accuracy_by_benchmark", {})]
        (drawn,) = ax.plot(*zip(*line, strict=True), "o-", label=benchmark)
        for r in policy:
            ax.plot(r["mean_flops_by_benchmark"][benchmark] / 1e9, r["accuracy_by_benchmark"][benchmark], "*",
                    color=drawn.get_color(), markersize=14)
    return _flops_axes(fig, ax, "score (each benchmark's metric)", "Per benchmark: budgets (line), policy (star)")


def _flops_axes(fig, ax, ylabel: str, title: str):
    """Finish a figure whose x axis is mean GFLOPs per sample: labels, title, grid, legend."""
    ax.set_xlabel("mean GFLOPs per sample (prefill)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def histogram_figure(row: dict):
    """Budgets the policy chose, one bar group per question type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histogram = row["budget_histogram"]
    types = list(histogram)
    budgets = sorted({int(b) for counts in histogram.values() for b in counts})
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / max(len(types), 1)
    for i, t in enumerate(types):
        ax.bar([b + i * width for b in budgets], [histogram[t].get(str(b), 0) for b in budgets], width, label=t)
    ax.set_xticks([b + 0.4 - width / 2 for b in budgets], [str(b) for b in budgets])
    ax.set_xlabel("budget chosen by the policy")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@dataclass
class EvalOutcome:
    report: dict
    run_id: str
    report_path: Path | None


def evaluate(
    model_uri: str, spec: ShardSet | str | list[str], tracking_uri: str, options: ScoreOptions | None = None,
    baselines: dict[str, str] | None = None, out: Path | None = None, parent_run_id: str | None = None,
) -> EvalOutcome:
    """Score ``model_uri`` (and ``baselines``) on the shards of ``spec`` (listed once); log the report and
    plots; tag the version."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from jobs.ray_env import init_ray
    from jobs.registry.tracking import git_commit, registered_version, start_job_run

    data = ShardSet.of(spec)
    init_ray()
    scores = score_split(model_uri, data, tracking_uri, options)
    rows = summarize(scores)
    point = operating_point(rows)
    for name, uri in (baselines or {}).items():
        top = operating_point(summarize(score_split(uri, data, tracking_uri, options)))
        rows.append(dict(top, name=name, baseline=True, model_uri=uri))
    report = {"model_uri": model_uri, "data_version": scores.data_version, "samples": scores.num_samples,
              "quarantine": scores.quarantine, "rows": rows, "operating_point": point["name"],
              "scored_on": scores.placement}

    tags = {"job": "evaluate", "model_uri": model_uri, "data_version": scores.data_version,
            "git_commit": git_commit()}
    with start_job_run(tracking_uri, EXPERIMENT, "evaluate", tags, parent_run_id) as run:
        for row in rows:
            key = row["name"].replace(" ", "_")
            mlflow.log_metrics({f"{key}/accuracy": row["accuracy"], f"{key}/mean_gflops": row["mean_flops"] / 1e9,
                                f"{key}/mean_latency_s": row["mean_latency_s"],
                                **{f"{key}/accuracy/{metric_key(b)}": v
                                   for b, v in row.get("accuracy_by_benchmark", {}).items()}})
        mlflow.log_figure(pareto_figure(rows), "plots/pareto.png")
        if any(r.get("accuracy_by_benchmark") for r in rows):
            mlflow.log_figure(benchmark_figure(rows), "plots/benchmarks.png")
        policy = [r for r in rows if r["name"] == "policy"]
        if policy:
            mlflow.log_figure(histogram_figure(policy[0]), "plots/budget_histogram.png")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(out) if out else Path(tmp) / "eval_report.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=2) + "\n")
            mlflow.log_artifact(str(path))
            answers = generated_answers(scores)
            if answers:
                (Path(tmp) / "generated_answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
                mlflow.log_artifact(str(Path(tmp) / "generated_answers.jsonl"))
        run_id = run.info.run_id

    version = registered_version(model_uri, tracking_uri)
    if version is not None:
        client = MlflowClient(tracking_uri)
        prefix = f"eval/{scores.data_version}"
        for key, value in {f"{prefix}/accuracy": point["accuracy"], f"{prefix}/mean_flops": point["mean_flops"],
                           f"{prefix}/run_id": run_id, "eval/latest_data_version": scores.data_version}.items():
            client.set_model_version_tag(*version, key, str(value))
    return EvalOutcome(report, run_id, Path(out) if out else None)


def run(config: EvaluateConfig) -> EvalOutcome:
    """``visor evaluate``: :func:`evaluate` with ``config``'s model, data, baselines and scoring."""
    from jobs.registry.tracking import tracking_uri

    return evaluate(config.model, config.data, tracking_uri(config.tracking_uri), config.score, config.baselines,
                    Path(config.out) if config.out else None)


def format_report(report: dict) -> str:
    """Markdown table of a report (what the CLI and the demo print)."""
    types = _types(report)
    lines = ["| configuration | accuracy | " + " | ".join(types) + " | mean GFLOPs | saving vs LLaVA-OV | "
             "mean latency (ms) |",
             "| --- | ---: | " + " | ".join("---:" for _ in types) + " | ---: | ---: | ---: |"]
    for row in report["rows"]:
        by_type = " | ".join(f"{row['accuracy_by_type'].get(t, float('nan')):.2f}" for t in types)
        lines.append(f"| {row['name']} | {row['accuracy']:.3f} | {by_type} | {row['mean_flops'] / 1e9:.4f} | "
                     f"{row['saving_vs_llava_ov']:.2f}x | {row['mean_latency_s'] * 1e3:.2f} |")
    benchmarks = sorted({b for row in report["rows"] for b in row.get("accuracy_by_benchmark", {})})
    if benchmarks:
        lines += ["", "| configuration | " + " | ".join(f"{b} (score / GFLOPs)" for b in benchmarks) + " |",
                  "| --- | " + " | ".join("---:" for _ in benchmarks) + " |"]
        for row in report["rows"]:
            scores, flops = row.get("accuracy_by_benchmark", {}), row.get("mean_flops_by_benchmark", {})
            lines.append(f"| {row['name']} | " + " | ".join(
                f"{scores[b]:.3f} / {flops[b] / 1e9:.4f}" if b in scores else "–" for b in benchmarks) + " |")
    for row in report["rows"]:
        if row.get("budget_histogram"):
            lines.append(f"budgets the {row['name']} chose per question type: " + "; ".join(
                f"{kind} mean {_mean_budget(counts):.2f} (" + ", ".join(f"b{b}: {n}" for b, n in counts.items()) + ")"
                for kind, counts in sorted(row["budget_histogram"].items())))
    return "\n".join(lines)


def _mean_budget(counts: dict[str, int]) -> float:
    total = sum(counts.values())
    return sum(int(b) * n for b, n in counts.items()) / total if total else float("nan")


def _types(report: dict) -> list[str]:
    return sorted({t for row in report["rows"] for t in row["accuracy_by_type"]})
