"""Scheduled retraining end to end: skip on unchanged data, retrain on new data, failure isolation, the lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from jobs.retrain.config import RetrainConfig
from jobs.retrain.retrain import AlreadyRunning, retrain_lock, run_retrain
from pipelines.synth import write_split, write_synth

pytestmark = pytest.mark.integration  # Ray Train runs

def retrain_config(root: Path) -> RetrainConfig:
    data = root / "data"
    return RetrainConfig.model_validate({
        "train": {
            "config": "demo-tiny", "data": {"train": [f"{data}/train-*.tar"], "batch_size": 4},
            "optim": {"max_steps": 4, "warmup_steps": 1},
            "run": {"checkpoint_every": 4, "log_every": 2, "storage_path": str(root / "runs")},
            "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
            "model": {"tiny": {"num_layers": 3, "hidden_size": 32}},
            "scaling": {"num_workers": 1},  # orchestration under test: one worker is enough
        },
        "policy": {"data": [f"{data}/policy-*.tar"], "epochs": 50},
        "evaluate": {"data": [f"{data}/eval-*.tar"]},
        "score": {"batch_size": 12},
        "lock_dir": str(root / "locks"),
    })


def training_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("visor-retrain")
    return client.search_runs([experiment.experiment_id], "tags.job = 'train'")


def test_retrain_only_when_the_data_changes_and_never_breaks_the_champion(ray_local, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    write_synth(tmp_path / "data", 24, 24, 12, seed=6, policy=24)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    first = run_retrain(retrain_config(tmp_path))
    assert first.status == "promoted" and first.champion is not None
    parent = client.get_run(first.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["decision"] == "promoted"
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{first.parent_run_id}'")
    assert sorted(r.data.tags["job"] for r in children) == ["evaluate", "train", "train-policy"]

    again = run_retrain(retrain_config(tmp_path))
    assert again.status == "skipped" and again.champion == first.champion and len(training_runs(client)) == 1

    write_split(tmp_path / "data", "train", 36, 12, seed=7)  # new training data: a new data version
    # a failure after training (the policy stage, a new version already registered) is in test_recipe.py
    monkeypatch.setenv("VISOR_TEST_FAULT", "retrain:stage=train")
    with pytest.raises(RuntimeError, match="injected failure in retrain stage train"):
        run_retrain(retrain_config(tmp_path))
    monkeypatch.delenv("VISOR_TEST_FAULT")
    failed = client.search_runs([parent.info.experiment_id], "tags.job = 'retrain' and attributes.status = 'FAILED'")
    assert len(failed) == 1 and failed[0].data.tags["failed_stage"] == "train"
    assert str(client.get_model_version_by_alias("visor", "champion").version) == first.champion

    third = run_retrain(retrain_config(tmp_path))
    assert third.status in ("promoted", "rejected") and third.data_version != first.data_version
    assert len(training_runs(client)) == 2  # the failed retrain stopped before training


def test_a_second_retrain_exits_while_one_runs(tmp_path: Path) -> None:
    config = tmp_path / "retrain.yaml"
    shards = [f"{tmp_path}/*.tar"]
    config.write_text(json.dumps({  # JSON is YAML
        "train": {"config": "demo-tiny", "data": {"train": shards}},
        "policy": {"data": shards}, "evaluate": {"data": shards}, "lock_dir": str(tmp_path / "locks")}))
    write_synth(tmp_path, 3, 0, 3, seed=0)
    lock = tmp_path / "locks" / "retrain-visor.lock"
    with retrain_lock(lock):
        with pytest.raises(AlreadyRunning, match=f"pid {os.getpid()}"):
            with retrain_lock(lock):
                pass
        result = subprocess.run([str(Path(sys.executable).parent / "visor"), "retrain", "--config", str(config)],
                                capture_output=True, text=True, cwd=tmp_path, timeout=300,
                                env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
        assert result.returncode == 3 and "a retrain is already running" in result.stderr
    assert not lock.exists()
    lock.parent.mkdir(exist_ok=True)
    lock.write_text(json.dumps({"pid": 999999999, "host": socket.gethostname()}))  # left by a dead process
    with retrain_lock(lock):
        assert str(os.getpid()) in lock.read_text()
