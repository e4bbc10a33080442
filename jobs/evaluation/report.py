"""What ``visor evaluate`` reports, typed: :class:`EvalReport` (one per evaluation) holding a :class:`ReportRow` per
configuration — every budget, the policy when it is trained, and each baseline's operating point.

Invariants: a row's ``budget`` is None exactly for a ``policy`` row (a baseline's row keeps its own budget, or
None when it ran its policy); ``budget_histogram`` is set on policy rows only; ``accuracy_by_benchmark`` and
``mean_flops_by_benchmark`` have the same keys, set only when some sample names a benchmark; ``baseline`` rows
carry the ``model_uri`` they came from. ``EvalReport.model_dump(mode="json")`` is the JSON report file
(``eval_report.json`` in MLflow) and ``EvalReport.model_validate_json`` reads one back.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from jobs.evaluation.scoring import Scores

POLICY_ROW = "policy"


class ReportRow(BaseModel):
    """One configuration's figures on the evaluation data (accuracy: the mean score of
    :mod:`jobs.evaluation.scoring`; FLOPs: mean prefill FLOPs per sample)."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    name: str  # "budget B", "policy", or a baseline's name
    budget: int | None
    accuracy: float
    accuracy_by_type: dict[str, float]
    mean_flops: float
    mean_language_flops: float
    mean_latency_s: float
    saving_vs_llava_ov: float  # LLaVA-OneVision's mean FLOPs on the same samples / this row's
    accuracy_by_benchmark: dict[str, float] = {}
    mean_flops_by_benchmark: dict[str, float] = {}
    budget_histogram: dict[str, dict[str, int]] = {}  # question type → budget → samples (policy rows)
    baseline: bool = False
    model_uri: str | None = None  # a baseline's model

    @property
    def mean_budget_by_type(self) -> dict[str, float]:
        """The mean budget the policy chose per question type (policy rows)."""
        return {kind: sum(int(b) * n for b, n in counts.items()) / total if (total := sum(counts.values()))
                else float("nan") for kind, counts in self.budget_histogram.items()}


class EvalReport(BaseModel):
    """One evaluation of ``model_uri`` on ``samples`` samples of data version ``data_version``."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    model_uri: str
    data_version: str
    samples: int
    quarantine: dict[str, Any]
    rows: list[ReportRow]
    operating_point: str  # the name of the row a deployed model runs at
    scored_on: list[dict[str, Any]]  # each distinct (device, dtype, Ray GPU ids) the samples were scored on

    def row(self, name: str) -> ReportRow:
        """The row called ``name``; KeyError names the rows there are."""
        found = [r for r in self.rows if r.name == name]
        if not found:
            raise KeyError(f"no row {name!r} in the report (rows: {', '.join(r.name for r in self.rows)})")
        return found[0]

    @property
    def point(self) -> ReportRow:
        """The operating point's row."""
        return self.row(self.operating_point)

    @property
    def budgets(self) -> list[ReportRow]:
        """The evaluated model's rows per budget, smallest budget first."""
        return sorted((r for r in self.rows if r.budget is not None and not r.baseline), key=lambda r: r.budget)

    @property
    def policy(self) -> ReportRow | None:
        """The evaluated model's policy row (None when its policy is not trained)."""
        return next((r for r in self.rows if r.name == POLICY_ROW and not r.baseline), None)


def _by_group(values: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    return {str(g): float(values[groups == g].mean()) for g in sorted(set(groups.tolist()))}


def _row(name: str, budget: int | None, pick: Any, scores: Scores) -> ReportRow:
    """The row of the samples' values at ``pick`` (a budget column, or one budget per sample)."""
    c = scores.columns
    quality = c.get("score", c["correct"]).astype(np.float64)[pick]
    flops, types = c["flops"][pick], c["question_type"].astype(str)
    sources = c["data_source"].astype(str) if "data_source" in c else None
    by_benchmark = sources is not None and any(sources)
    return ReportRow(
        name=name, budget=budget, accuracy=float(quality.mean()), accuracy_by_type=_by_group(quality, types),
        mean_flops=float(flops.mean()), mean_language_flops=float(c["language_flops"][pick].mean()),
        mean_latency_s=float(c["latency"][pick].mean()),
        saving_vs_llava_ov=float(c["baseline_flops"].mean() / flops.mean()),
        accuracy_by_benchmark=_by_group(quality, sources) if by_benchmark else {},
        mean_flops_by_benchmark=_by_group(flops, sources) if by_benchmark else {},
    )


def summarize(scores: Scores) -> list[ReportRow]:
    """One row per budget, plus a ``policy`` row (with the budget histogram per question type) when the
    model's policy is trained."""
    c = scores.columns
    budgets = c["correct"].shape[1]
    rows = [_row(f"budget {b}", b, (slice(None), b), scores) for b in range(budgets)]
    chosen = c["chosen"].astype(int)
    if (chosen >= 0).all():
        types = c["question_type"].astype(str)
        row = _row(POLICY_ROW, None, (np.arange(len(chosen)), chosen), scores)
        row.budget_histogram = {
            str(t): {str(b): int(((types == t) & (chosen == b)).sum()) for b in range(budgets)}
            for t in sorted(set(types.tolist()))
        }
        rows.append(row)
    return rows


def operating_point(rows: list[ReportRow]) -> ReportRow:
    """The row a deployed model runs at: its policy if trained, else its largest budget."""
    policy = [r for r in rows if r.name == POLICY_ROW]
    return policy[0] if policy else max((r for r in rows if r.budget is not None), key=lambda r: r.budget)


def format_report(report: EvalReport) -> str:
    """Markdown table of a report (what the CLI and the demo print)."""
    types = sorted({t for row in report.rows for t in row.accuracy_by_type})
    lines = ["| configuration | accuracy | " + " | ".join(types) + " | mean GFLOPs | saving vs LLaVA-OV | "
             "mean latency (ms) |",
             "| --- | ---: | " + " | ".join("---:" for _ in types) + " | ---: | ---: | ---: |"]
    for row in report.rows:
        by_type = " | ".join(f"{row.accuracy_by_type.get(t, float('nan')):.2f}" for t in types)
        lines.append(f"| {row.name} | {row.accuracy:.3f} | {by_type} | {row.mean_flops / 1e9:.4f} | "
                     f"{row.saving_vs_llava_ov:.2f}x | {row.mean_latency_s * 1e3:.2f} |")
    benchmarks = sorted({b for row in report.rows for b in row.accuracy_by_benchmark})
    if benchmarks:
        lines += ["", "| configuration | " + " | ".join(f"{b} (score / GFLOPs)" for b in benchmarks) + " |",
                  "| --- | " + " | ".join("---:" for _ in benchmarks) + " |"]
        for row in report.rows:
            scores, flops = row.accuracy_by_benchmark, row.mean_flops_by_benchmark
            lines.append(f"| {row.name} | " + " | ".join(
                f"{scores[b]:.3f} / {flops[b] / 1e9:.4f}" if b in scores else "–" for b in benchmarks) + " |")
    for row in report.rows:
        if row.budget_histogram:
            means = row.mean_budget_by_type
            lines.append(f"budgets the {row.name} chose per question type: " + "; ".join(
                f"{kind} mean {means[kind]:.2f} (" + ", ".join(f"b{b}: {n}" for b, n in counts.items()) + ")"
                for kind, counts in sorted(row.budget_histogram.items())))
    return "\n".join(lines)
