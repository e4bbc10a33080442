"""``visor evaluate``: accuracy, FLOPs and latency of a model per budget and under its policy.

The report is a :class:`jobs.evaluation.report.EvalReport` (a row per budget, the policy, each baseline; its
``operating_point``: the policy row if the policy is trained, else the largest budget), written as JSON
(``model_dump``) and logged to MLflow with two plots.

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

from jobs.evaluation.config import EvaluateConfig, ScoreOptions
from jobs.evaluation.report import POLICY_ROW, EvalReport, ReportRow, operating_point, summarize
from jobs.evaluation.scoring import Scores, score_split
from pipelines.shards import ShardSet

EXPERIMENT = "visor-eval"


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


def pareto_figure(rows: list[ReportRow]):
    """Accuracy vs mean total FLOPs: one point per budget (joined), the policy, and each baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    budgets = [r for r in rows if r.budget is not None and not r.baseline]
    ax.plot([r.mean_flops / 1e9 for r in budgets], [r.accuracy for r in budgets], "o-", label="VISOR budgets")
    for r in budgets:
        ax.annotate(str(r.budget), (r.mean_flops / 1e9, r.accuracy), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    for r in rows:
        if r.name == POLICY_ROW:
            ax.plot(r.mean_flops / 1e9, r.accuracy, "r*", markersize=14, label="VISOR policy")
        elif r.baseline:
            ax.plot(r.mean_flops / 1e9, r.accuracy, "s", label=r.name)
    return _flops_axes(fig, ax, "accuracy (exact match, or each sample's metric)", "Accuracy vs compute")


def metric_key(name: str) -> str:
    """``name`` as an MLflow metric-name part (letters, digits, ``_-.`` only)."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


def benchmark_figure(rows: list[ReportRow]):
    """Score (each benchmark's own metric) vs mean total FLOPs per benchmark: one line over the budgets, a star
    for the policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    budgets = [r for r in rows if r.budget is not None and not r.baseline]
    policy = [r for r in rows if r.name == POLICY_ROW]
    for benchmark in sorted({b for r in rows for b in r.accuracy_by_benchmark}):
        line = [(r.mean_flops_by_benchmark[benchmark] / 1e9, r.accuracy_by_benchmark[benchmark])
                for r in budgets if benchmark in r.accuracy_by_benchmark]
        (drawn,) = ax.plot(*zip(*line, strict=True), "o-", label=benchmark)
        for r in policy:
            ax.plot(r.mean_flops_by_benchmark[benchmark] / 1e9, r.accuracy_by_benchmark[benchmark], "*",
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


def histogram_figure(row: ReportRow):
    """Budgets the policy chose, one bar group per question type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histogram = row.budget_histogram
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
    report: EvalReport
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
        rows.append(top.model_copy(update={"name": name, "baseline": True, "model_uri": uri}))
    report = EvalReport(model_uri=model_uri, data_version=scores.data_version, samples=scores.num_samples,
                        quarantine=scores.quarantine, rows=rows, operating_point=point.name,
                        scored_on=scores.placement)

    tags = {"job": "evaluate", "model_uri": model_uri, "data_version": scores.data_version,
            "git_commit": git_commit()}
    with start_job_run(tracking_uri, EXPERIMENT, "evaluate", tags, parent_run_id) as run:
        for row in rows:
            key = row.name.replace(" ", "_")
            mlflow.log_metrics({f"{key}/accuracy": row.accuracy, f"{key}/mean_gflops": row.mean_flops / 1e9,
                                f"{key}/mean_latency_s": row.mean_latency_s,
                                **{f"{key}/accuracy/{metric_key(b)}": v for b, v in row.accuracy_by_benchmark.items()}})
        mlflow.log_figure(pareto_figure(rows), "plots/pareto.png")
        if any(r.accuracy_by_benchmark for r in rows):
            mlflow.log_figure(benchmark_figure(rows), "plots/benchmarks.png")
        if report.policy is not None:
            mlflow.log_figure(histogram_figure(report.policy), "plots/budget_histogram.png")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(out) if out else Path(tmp) / "eval_report.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(report.model_dump_json(indent=2) + "\n")
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
        for key, value in {f"{prefix}/accuracy": point.accuracy, f"{prefix}/mean_flops": point.mean_flops,
                           f"{prefix}/run_id": run_id, "eval/latest_data_version": scores.data_version}.items():
            client.set_model_version_tag(*version, key, str(value))
    return EvalOutcome(report, run_id, Path(out) if out else None)


def run(config: EvaluateConfig) -> EvalOutcome:
    """``visor evaluate``: :func:`evaluate` with ``config``'s model, data, baselines and scoring."""
    from jobs.registry.tracking import tracking_uri

    return evaluate(config.model, config.data, tracking_uri(config.tracking_uri), config.score, config.baselines,
                    Path(config.out) if config.out else None)
