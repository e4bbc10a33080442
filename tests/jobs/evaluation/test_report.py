"""The evaluation report, typed: rows from the scores, the operating point, the JSON form and the table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jobs.evaluation.report import EvalReport, ReportRow, format_report, operating_point, summarize
from jobs.evaluation.scoring import Scores


def scores(chosen: list[int], sources: list[str] | None = None) -> Scores:
    """Four samples, two budgets: budget 1 answers everything, budget 0 only the coarse questions."""
    columns = {
        "key": np.array(["a", "b", "c", "d"]), "url": np.array(["u"] * 4),
        "question_type": np.array(["coarse", "coarse", "fine", "fine"]),
        "correct": np.array([[1, 1], [1, 1], [0, 1], [0, 1]], dtype=np.float32),
        "flops": np.array([[1e6, 3e6]] * 4), "language_flops": np.array([[5e5, 1e6]] * 4),
        "latency": np.array([[0.01, 0.03]] * 4), "baseline_flops": np.full(4, 6e6),
        "chosen": np.array(chosen),
    }
    if sources is not None:
        columns["data_source"] = np.array(sources)
    return Scores(columns, "v1", {"seen": 4})


def test_rows_per_budget_and_the_policy_with_its_histogram() -> None:
    rows = summarize(scores([0, 0, 1, 1]))
    assert [(r.name, r.budget) for r in rows] == [("budget 0", 0), ("budget 1", 1), ("policy", None)]
    small, large, policy = rows
    assert small.accuracy == 0.5 and small.accuracy_by_type == {"coarse": 1.0, "fine": 0.0}
    assert large.saving_vs_llava_ov == pytest.approx(2.0) and small.saving_vs_llava_ov == pytest.approx(6.0)
    assert policy.accuracy == 1.0 and policy.mean_flops == pytest.approx(2e6)
    assert policy.budget_histogram == {"coarse": {"0": 2, "1": 0}, "fine": {"0": 0, "1": 2}}
    assert policy.mean_budget_by_type == {"coarse": 0.0, "fine": 1.0}
    assert not small.budget_histogram and not small.accuracy_by_benchmark  # policy rows only; no benchmarks named
    assert operating_point(rows) is policy


def test_without_a_trained_policy_the_largest_budget_is_the_operating_point() -> None:
    rows = summarize(scores([-1, -1, -1, -1], sources=["docvqa", "docvqa", "", ""]))
    assert [r.name for r in rows] == ["budget 0", "budget 1"] and operating_point(rows) is rows[1]
    assert rows[0].accuracy_by_benchmark == {"": 0.0, "docvqa": 1.0}
    assert set(rows[0].mean_flops_by_benchmark) == {"", "docvqa"}


def test_the_report_round_trips_through_json_and_prints_a_table() -> None:
    rows = summarize(scores([0, 0, 1, 1]))
    baseline = rows[1].model_copy(update={"name": "full attention", "baseline": True, "model_uri": "models:/llava/1"})
    report = EvalReport(model_uri="models:/visor/2", data_version="v1", samples=4, quarantine={},
                        rows=[*rows, baseline], operating_point="policy",
                        scored_on=[{"device": "cpu", "dtype": "float32", "ray_gpu_ids": []}])
    dumped = json.loads(report.model_dump_json())
    assert [r["name"] for r in dumped["rows"]] == ["budget 0", "budget 1", "policy", "full attention"]
    assert EvalReport.model_validate(dumped) == report and EvalReport.model_validate_json(report.model_dump_json())
    assert report.point.name == "policy" and report.policy is report.point
    assert [r.name for r in report.budgets] == ["budget 0", "budget 1"]  # not the baseline's row
    with pytest.raises(KeyError, match="no row 'budget 9'"):
        report.row("budget 9")
    table = format_report(report)
    assert "| policy | 1.000 | 1.00 | 1.00 | 0.0020 | 3.00x | 20.00 |" in table
    assert "budgets the policy chose per question type: coarse mean 0.00 (b0: 2, b1: 0); fine mean 1.00" in table
    with pytest.raises(ValueError, match="extra"):
        ReportRow.model_validate({**dumped["rows"][0], "typo": 1})
