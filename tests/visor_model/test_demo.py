from typer.testing import CliRunner

from jobs.cli import app


def test_model_demo_prints_a_row_per_budget():
    result = CliRunner().invoke(app, ["model-demo", "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[1].strip() for row in rows] == ["0", "1", "2"]
    savings = [float(row.split("|")[5].strip().rstrip("x")) for row in rows]
    assert savings == sorted(savings, reverse=True) and savings[-1] > 1.0
