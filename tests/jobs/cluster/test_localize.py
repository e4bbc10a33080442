"""A submitted config's paths keep their meaning: absolute for a local head, refused (named) for a remote one."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jobs.cluster.localize import is_local_head, localize
from jobs.config import load_config
from jobs.evaluation.config import EvaluateConfig
from jobs.retrain.config import RetrainConfig
from jobs.train.config import TrainConfig

LOCAL, REMOTE = "http://127.0.0.1:8265", "http://ray-head.example:8265"


def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"init": "visor", "path": "models:/visor@champion"},
        "data": {"train": ["shards/train-*.tar", "s3://bucket/more-*.tar"]},
        "mlflow": {"tracking_uri": "sqlite:///stores/mlflow.db"},
        "stages": [{"name": "detail", "data": {"train": ["shards/detail-*.tar"]}}, {"name": "rest"}],
    }))
    return path


def train(source, overrides=()) -> TrainConfig:
    return load_config(TrainConfig, source, overrides)


def test_addresses_on_this_machine_are_local_heads() -> None:
    assert is_local_head(LOCAL) and is_local_head("http://localhost:8265") and is_local_head("127.0.0.1:8265")
    assert not is_local_head(REMOTE) and not is_local_head("http://10.0.0.7:8265")


def test_a_local_head_gets_absolute_paths_and_the_store_it_would_use_here(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    files, env = localize(train(recipe(tmp_path), ["run.storage_path=out"]), LOCAL, cwd=tmp_path)
    config = TrainConfig.model_validate(files["main"])  # what the job loads validates as it is
    assert config.data.train == [f"{tmp_path}/shards/train-*.tar", "s3://bucket/more-*.tar"]
    assert config.stages[0].data.train == [f"{tmp_path}/shards/detail-*.tar"]
    assert files["main"]["stages"][1] == {"name": "rest"}  # a stage ships only what it sets
    assert config.model.path == "models:/visor@champion" and config.run.storage_path == f"{tmp_path}/out"
    assert config.mlflow.tracking_uri == f"sqlite:///{tmp_path}/stores/mlflow.db"
    assert env == {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}


def test_a_retrain_ships_its_training_config_resolved_inside_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    retrain = tmp_path / "retrain.yaml"
    retrain.write_text(yaml.safe_dump({"train": {"config": str(recipe(tmp_path)), "seed": 3},
                                       "policy": {"data": ["p/*.tar"]}, "evaluate": {"data": ["e/*.tar"]}}))
    files, env = localize(load_config(RetrainConfig, retrain, ["lock_dir=locks", "train.optim.lr=0.5"]), LOCAL,
                          cwd=tmp_path)
    assert set(files) == {"main"}
    main = RetrainConfig.model_validate(files["main"])
    assert main.policy.data == [f"{tmp_path}/p/*.tar"] and main.evaluate.data == [f"{tmp_path}/e/*.tar"]
    assert main.lock_dir == f"{tmp_path}/locks"
    assert main.train.seed == 3 and main.train.optim.lr == 0.5
    assert main.train.data.train[0] == f"{tmp_path}/shards/train-*.tar"
    assert main.train.stages[0].data.train == [f"{tmp_path}/shards/detail-*.tar"]
    assert env == {"MLFLOW_TRACKING_URI": "http://mlflow.example:5000"}


def test_a_remote_cluster_refuses_relative_paths_and_sqlite_stores_naming_each(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError) as refused:
        localize(train(recipe(tmp_path), ["model.path=/models/llava"]), REMOTE, cwd=tmp_path)
    message = str(refused.value)
    assert "data.train ('shards/train-*.tar')" in message and "stages[0].data.train ('shards/detail-*.tar')" in message
    assert "run.storage_path ('runs')" in message and "mlflow.tracking_uri ('sqlite:///stores/mlflow.db')" in message
    assert "MLFLOW_TRACKING_URI ('sqlite:///mlflow.db')" in message
    assert "s3://" not in message.split(". Use")[0] and "/models/llava" not in message  # URIs, node paths pass

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    files, env = localize(train("llava-ov-0.5b"), REMOTE, cwd=tmp_path)  # the GPU preset: nothing local
    assert files["main"]["model"]["path"] == "/models/llava-onevision-qwen2-0.5b-ov-hf"
    assert env == {"MLFLOW_TRACKING_URI": "http://mlflow.example:5000"}


def test_a_port_forwarded_cluster_is_remote_when_told(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match=r"data.train \('shards/train-\*.tar'\)"):
        localize(train(recipe(tmp_path)), LOCAL, cwd=tmp_path, remote=True)



EVALUATE = {"model": "models:/visor@challenger", "data": ["shards/eval-*.tar", "s3://b/e-*.tar"],
            "baselines": {"full": "runs/full-model", "reg": "models:/full/1"}, "out": "report.json",
            "tracking_uri": "sqlite:///mlflow.db", "score": {"batch_size": 8}}


def test_every_jobs_path_fields_mean_the_submitting_directorys_on_a_local_head(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    files, _ = localize(EvaluateConfig.model_validate(EVALUATE), LOCAL, cwd=tmp_path)
    config = EvaluateConfig.model_validate(files["main"])
    assert config.data == [f"{tmp_path}/shards/eval-*.tar", "s3://b/e-*.tar"]
    assert config.baselines == {"full": f"{tmp_path}/runs/full-model", "reg": "models:/full/1"}
    assert (config.model, config.out) == ("models:/visor@challenger", f"{tmp_path}/report.json")
    assert config.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db" and config.score.batch_size == 8


def test_a_remote_cluster_refuses_relative_path_fields_of_any_job_naming_each(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    with pytest.raises(ValueError) as refused:
        localize(EvaluateConfig.model_validate(EVALUATE), REMOTE, cwd=tmp_path)
    unreachable = str(refused.value).split(". Use")[0]
    assert "data ('shards/eval-*.tar')" in unreachable and "baselines.full ('runs/full-model')" in unreachable
    assert "out ('report.json')" in unreachable and "tracking_uri ('sqlite:///mlflow.db')" in unreachable
    assert "s3://" not in unreachable and "models:/" not in unreachable


def test_a_data_job_is_submitted_as_its_command_with_its_config_localized(tmp_path, monkeypatch) -> None:
    """`visor submit pack`: the job runs `visor data pack --config …` on the cluster, its paths this directory's."""
    from typer.testing import CliRunner

    import jobs.cluster.submit as submit
    from jobs.cli import app

    submitted = {}

    class Client:
        def __init__(self, address: str) -> None:
            submitted["address"] = address

        def submit_job(self, entrypoint: str, runtime_env: dict, metadata: dict) -> str:
            config = yaml.safe_load((Path(runtime_env["working_dir"]) / submit.CONFIG_NAME).read_text())
            submitted.update(entrypoint=entrypoint, config=config, metadata=metadata)
            return "raysubmit_1"

    monkeypatch.setattr(submit, "JobSubmissionClient", Client)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["submit", "pack", "--address", LOCAL, "--config", "pack-example", "--",
                                      "--out", "shards", "--set", "shard_size=5"])
    assert result.exit_code == 0, result.output
    assert submitted["entrypoint"] == "python -m jobs.cli data pack --config submitted-config.yaml"
    assert submitted["metadata"] == {"visor_job": "pack"} and submitted["address"] == LOCAL
    assert submitted["config"]["out"] == f"{tmp_path}/shards" and submitted["config"]["shard_size"] == 5
