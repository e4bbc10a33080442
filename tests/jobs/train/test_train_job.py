"""The training job on a real local Ray (2 CPU workers, gloo) with a real MLflow SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from jobs.config import ConfigError, load_config
from jobs.registry.model_format import load_visor
from jobs.train.checkpoint import read_state
from jobs.train.config import TrainConfig, load_train_config
from jobs.train.driver import run_training
from pipelines.synth import write_synth

pytestmark = pytest.mark.integration  # Ray Train runs

SAMPLES = 48  # 2 workers x batch 4 -> 6 steps an epoch


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    write_synth(out, SAMPLES, 6, 16, seed=5)
    return out


def tiny_config(data_dir: Path, tmp_path: Path, *overrides: str):
    return load_train_config("demo-tiny", [
        f"data.train=['{data_dir}/train-*.tar']", "data.batch_size=4",
        f"run.storage_path={tmp_path / 'runs'}", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "model.tiny.num_layers=3", "model.tiny.hidden_size=32", "optim.warmup_steps=2", "run.log_every=2",
        *overrides,
    ])


def test_two_worker_run_resumes_after_a_fault_and_registers_a_challenger(ray_local, data_dir, tmp_path,
                                                                       monkeypatch) -> None:
    config = tiny_config(data_dir, tmp_path, "name=fault-run", "optim.max_steps=6", "run.checkpoint_every=2",
                         "sampling.strategy=sandwich")
    monkeypatch.setenv("VISOR_TEST_FAULT", "train:rank=1:step=3")  # read by the driver, handed to the workers
    outcome = run_training(config)

    assert outcome.steps == 6 and outcome.registered_version == "1"
    assert outcome.quarantine == {"seen": outcome.quarantine["seen"], "valid": outcome.quarantine["seen"],
                                  "quarantined": {}}
    run_dir = Path(outcome.checkpoint).parent
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.startswith("fault-run-")
    checkpoints = [p for p in run_dir.glob("checkpoint_*") if p.is_dir()]
    assert len(checkpoints) == 2  # keep_checkpoints
    state = read_state(Path(outcome.checkpoint))
    assert state["step"] == 6 and state["scheduler"]["last_epoch"] == 6 and len(state["rng"]) == 2

    client = MlflowClient(outcome.tracking_uri)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["data_version"] == outcome.data_version
    assert run.data.params["optim.max_steps"] == "6" and json.loads(run.data.tags["plan"])["budgets"]
    num_budgets = len(json.loads(run.data.tags["plan"])["budgets"])
    assert num_budgets >= 2
    for budget in range(num_budgets):  # sandwich: every budget every step, logged every 2 steps
        history = client.get_metric_history(outcome.run_id, f"loss/budget_{budget}")
        assert [m.step for m in history][-1] == 6 and all(m.value > 0 for m in history)
    assert {"lr", "samples_per_s", "data_wait_fraction", "data/rows_read"} <= set(run.data.metrics)
    assert [a.path for a in client.list_artifacts(outcome.run_id, "data")] == ["data/quarantine.jsonl"]

    version = client.get_model_version_by_alias("visor", "challenger")
    assert str(version.version) == "1" and version.tags["data_version"] == outcome.data_version

    mlflow.set_tracking_uri(outcome.tracking_uri)
    model, processor = load_visor("models:/visor@challenger")
    loaded = model.state_dict()
    assert set(loaded) == set(state["model"])
    assert all(torch.equal(loaded[k], state["model"][k]) for k in loaded)  # bit-identical weights


def test_workers_see_disjoint_data_covering_the_epoch(ray_local, data_dir, tmp_path) -> None:
    config = tiny_config(data_dir, tmp_path, "name=split-run", "optim.max_steps=6", "run.sample_log=true",
                         "mlflow.register_model=false", "run.checkpoint_every=6")
    outcome = run_training(config)
    assert outcome.registered_version is None and outcome.steps == 6
    seen = {}
    for rank in (0, 1):
        lines = (Path(outcome.checkpoint).parent / f"samples-rank{rank}.jsonl").read_text().splitlines()
        seen[rank] = [k for line in lines for k in json.loads(line)["keys"]]
        assert len(lines) == 6
    assert len(seen[0]) == len(seen[1]) == SAMPLES // 2
    assert not set(seen[0]) & set(seen[1])
    assert {k.rsplit("#", 1)[1] for k in seen[0] + seen[1]} == {f"train{i:08d}" for i in range(SAMPLES)}


@pytest.mark.parametrize("overrides, message", [
    (["optim.lr=-0.1"], "optim.lr: Input should be greater than 0"),
    (["sampling.strategy=greedy"], "sampling.strategy: Input should be 'uniform', 'sandwich' or 'largest'"),
    (["model.colour=red"], "model.colour: Extra inputs are not permitted"),
    (["scaling.strategy=fsdp"], "fsdp' needs scaling.use_gpu"),
])
def test_bad_config_values_name_the_field(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_train_config("demo-tiny", overrides)


def test_bad_config_fails_before_any_worker(ray_local, data_dir, tmp_path) -> None:
    config = tiny_config(data_dir, tmp_path, f"data.train=['{data_dir}/nothing-*.tar']")
    with pytest.raises(ValueError, match=r"data.train: shard spec .*nothing-\*.tar' matches no .tar shard"):
        run_training(config)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
    with pytest.raises(ConfigError, match="neither a file nor a preset"):
        load_train_config("no-such-config")
    with pytest.raises(ConfigError, match="data: Field required"):
        load_config(TrainConfig, {"name": "x"})
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_train_config("demo-tiny", ["optim.lr"])


def test_a_new_driver_resumes_an_unfinished_run(ray_local, data_dir, tmp_path, monkeypatch) -> None:
    config = tiny_config(data_dir, tmp_path, "name=driver-run", "optim.max_steps=4", "run.checkpoint_every=2",
                         "run.max_failures=0", "mlflow.register_model=false")
    monkeypatch.setenv("VISOR_TEST_FAULT", "train:rank=0:step=3")
    with pytest.raises(Exception, match="injected fault"):
        run_training(config)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (failed,) = client.search_runs([client.get_experiment_by_name("visor-train").experiment_id])
    assert failed.info.status == "FAILED" and "injected fault" in failed.data.tags["error"]

    outcome = run_training(config)  # same name: the unfinished run continues from its step-2 checkpoint
    assert outcome.run_id == failed.info.run_id and outcome.steps == 4
    steps = [m.step for m in client.get_metric_history(outcome.run_id, "lr")]
    assert steps == [2, 4]  # step 2 by the first driver, step 4 by the second
    assert client.get_run(outcome.run_id).info.status == "FINISHED"
