"""The speed benchmark's smoke run: a tiny model, seconds; the report is well formed and the KV cache is exact."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # runs bench/bench_speed.py as a subprocess

ROOT = Path(__file__).resolve().parents[2]


def test_speed_benchmark_smoke_report(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_speed.py"), "--smoke", "--write", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Benchmarks") and "## Speed: VISOR vs LLaVA-OneVision" in text
    assert "Command: `python bench/bench_speed.py --smoke" in text
    rows = [line for line in text.splitlines() if line.startswith("| LLaVA-OneVision") or line.startswith("| VISOR")]
    assert len(rows) == 4 and rows[0].startswith("| LLaVA-OneVision | ")
    assert all(row.split("|")[9].strip() == "yes" for row in rows)  # measured KV bytes = analytic count
    flops_ratios = [float(row.split("|")[4].strip().rstrip("x")) for row in rows]
    assert flops_ratios[0] == 1.0 and flops_ratios[1] > flops_ratios[2] > flops_ratios[3] > 1.0
