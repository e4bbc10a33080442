"""MLflow conventions of the jobs on a real SQLite store: where an experiment's artifacts live."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from jobs.registry.tracking import create_run, experiment_id, start_job_run


def test_sqlite_store_keeps_artifacts_beside_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    store.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a job started in another directory than the store's
    uri = f"sqlite:///{store / 'mlflow.db'}"
    first = experiment_id(uri, "visor-test")
    assert experiment_id(uri, "visor-test") == first  # found, not created again
    parent = create_run(uri, "visor-test", "parent", {})
    with start_job_run(uri, "visor-test", "job", {}) as run:
        mlflow.log_text("hello", "note.txt")
    with start_job_run(uri, "ignored", "child", {}, parent_run_id=parent) as child:
        assert child.info.experiment_id == first
    assert (store / "mlruns" / "visor-test" / run.info.run_id / "artifacts" / "note.txt").read_text() == "hello"
    assert not (elsewhere / "mlruns").exists()
