"""The quality benchmark's smoke run: the real jobs on a few samples and 3 steps; the report is well formed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # runs the quality benchmark's whole pipeline (Ray Train, MLflow) as a subprocess

ROOT = Path(__file__).resolve().parents[2]


def test_quality_benchmark_smoke_report(tmp_path: Path) -> None:
    out = tmp_path / "docs" / "BENCHMARKS.md"
    out.parent.mkdir()
    work = tmp_path / "work"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_quality.py"), "--smoke", "--workdir", str(work),
         "--write", str(out)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Benchmarks") and "## Quality: full attention vs token reduction vs VISOR" in text
    assert "Command: `python bench/bench_quality.py --smoke" in text
    rows = [line for line in text.splitlines() if line.startswith("| (")]
    assert "(a) ≥ 0.90 on every question type:" in text and "mean budget on *fine* ≥ 0.5 above *coarse*" in text
    assert "still so at twice the steps (3)" in text
    names = [row.split("|")[1].strip() for row in rows]
    assert names[:2] == ["(a) full attention (LLaVA-OneVision)", "(b) token reduction, 2×2 pooling"]
    assert names[-1] == "(d) VISOR + policy" and all(n.startswith("(c) VISOR, budget") for n in names[2:-1])
    assert len(names) == 2 + 3 + 1  # the tiny preset's default plan has three budgets
    saving = [float(row.split("|")[-3].strip().rstrip("x")) for row in rows]
    assert saving[0] == 1.0 and saving[1] > 1.0 and saving[2] > saving[3] > saving[4] > 1.0  # FLOPs order
    for image in ("quality-pareto.png", "quality-budgets.png", "quality-curve.png"):
        assert (out.parent / "img" / image).read_bytes()[:4] == b"\x89PNG"
        assert f"](img/{image})" in text
    (result,) = json.loads((work / "bench-quality.json").read_text())  # one seed in a smoke run
    assert [s["name"] for s in result["stages"]] == ["detail", "pretrain", "largest", "universal"]
    assert all(s["steps"] == 3 for s in result["stages"])
    assert [p["step"] for p in result["curve"]] == [2, 3]  # the fine-tuning stage's kept checkpoints, scored
    assert all([r["budget"] for r in p["rows"]] == [0, 1, 2] for p in result["curve"])
    assert "| 0 | 2 |" in text and "| 0 | 3 |" in text  # the curve table: seed, step
    report = result["report"]
    assert report["samples"] == 24
    (policy,) = [row for row in report["rows"] if row["name"] == "policy"]
    assert sum(sum(counts.values()) for counts in policy["budget_histogram"].values()) == 24
