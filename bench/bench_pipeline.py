"""End-to-end benchmark: ``visor demo`` in a fresh directory — wall time per stage and what the model learns.

    .venv/bin/python bench/bench_pipeline.py [--write docs/BENCHMARKS.md]

Runs the demo (synthetic shards → train → policy → evaluate → promote) in a
temporary directory, reads the stage runs back from its MLflow store (their
start and end times) and the champion's evaluation report, and prints (or
writes into the given Markdown file) one section with both.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import provenance, publish  # noqa: E402  (bench/ is a folder of scripts, not a package)

from pipelines.synth import CHANCE  # noqa: E402

SECTION = "## Whole pipeline (`bench/bench_pipeline.py`)"


def run(workdir: Path) -> dict:
    from mlflow.tracking import MlflowClient

    started = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "visor"), "demo"], cwd=workdir, check=True,
                   capture_output=True)
    wall = time.perf_counter() - started
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(uri)
    (parent,) = client.search_runs([client.get_experiment_by_name("visor-retrain").experiment_id],
                                   "tags.job = 'retrain'")
    stages = {key.removeprefix("stage_seconds/"): value for key, value in parent.data.metrics.items()
              if key.startswith("stage_seconds/")}
    champion = client.get_model_version_by_alias("visor", "champion")
    data_version = champion.tags["eval/latest_data_version"]
    import mlflow

    mlflow.set_tracking_uri(uri)
    report = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=champion.tags[f"eval/{data_version}/run_id"], artifact_path="eval_report.json")).read_text())
    return {"wall": wall, "stages": stages, "report": report, "tau": champion.tags.get("policy.tau")}


def _against_chance(report: dict) -> str:
    rows = {r["name"]: r for r in report["rows"]}
    point = rows[report["operating_point"]]
    parts = [f"{t} {acc:.2f} (chance {CHANCE.get(t, float('nan')):.2f})"
             for t, acc in point["accuracy_by_type"].items()]
    chosen = point.get("budget_histogram")
    if chosen:
        totals = {}
        for counts in chosen.values():
            for budget, n in counts.items():
                totals[budget] = totals.get(budget, 0) + n
        parts.append(f"budgets chosen {totals}")
    return "; ".join(parts)


def markdown(result: dict, command: str) -> str:
    from jobs.evaluation.report import EvalReport, format_report

    order = ("train", "policy", "evaluate", "promote")
    stages = ", ".join(f"{name} {result['stages'][name]:.0f} s" for name in order if name in result["stages"])
    return "\n".join([
        *provenance(SECTION, command),
        f"`visor demo` from an empty directory: **{result['wall']:.0f} s** in all (stages: {stages}; the rest "
        "is writing the shards, starting Ray, serving one request and the summary).",
        "",
        f"The champion's evaluation ({result['report']['samples']} evaluation samples, τ = {result['tau']}):",
        "",
        format_report(EvalReport.model_validate(result["report"])),
        "",
        f"Under the policy, per question type: {_against_chance(result['report'])}. "
        "The demo exercises the pipeline on a model trained for two minutes; it is not the paper's "
        "accuracy result.",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", type=Path, help="Markdown file whose whole-pipeline section is replaced.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp))
    publish(markdown(result, " ".join(["python", "bench/bench_pipeline.py", *sys.argv[1:]])), SECTION, args.write)


if __name__ == "__main__":
    main()
