"""A submitted config's paths keep their meaning: absolute for a local head, refused (named) for a remote one."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jobs.cluster.localize import TRAIN_CONFIG_NAME, is_local_head, localize
from jobs.cluster.submit import split_overrides
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


def test_addresses_on_this_machine_are_local_heads() -> None:
    assert is_local_head(LOCAL) and is_local_head("http://localhost:8265") and is_local_head("127.0.0.1:8265")
    assert not is_local_head(REMOTE) and not is_local_head("http://10.0.0.7:8265")


def test_a_local_head_gets_absolute_paths_and_the_store_it_would_use_here(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    files, env, _ = localize("train", str(recipe(tmp_path)), ["run.storage_path=out"], [], LOCAL, cwd=tmp_path)
    config = TrainConfig.model_validate(files["main"])  # what the job loads validates as it is
    assert config.data.train == [f"{tmp_path}/shards/train-*.tar", "s3://bucket/more-*.tar"]
    assert config.stages[0]["data"]["train"] == [f"{tmp_path}/shards/detail-*.tar"]
    assert config.model.path == "models:/visor@champion" and config.run.storage_path == f"{tmp_path}/out"
    assert config.mlflow.tracking_uri == f"sqlite:///{tmp_path}/stores/mlflow.db"
    assert env == {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}


def test_a_retrain_ships_its_training_config_resolved_beside_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    retrain = tmp_path / "retrain.yaml"
    retrain.write_text(yaml.safe_dump({"train_config": str(recipe(tmp_path)), "train_overrides": ["seed=3"],
                                       "policy": {"data": ["p/*.tar"]}, "eval_data": ["e/*.tar"]}))
    files, env, _ = localize("retrain", str(retrain), ["lock_dir=locks"], [], LOCAL, cwd=tmp_path)
    main = RetrainConfig.model_validate(files["main"])
    assert main.train_config == TRAIN_CONFIG_NAME and main.train_overrides == []
    assert main.policy.data == [f"{tmp_path}/p/*.tar"] and main.eval_data == [f"{tmp_path}/e/*.tar"]
    assert main.lock_dir == f"{tmp_path}/locks"
    train = TrainConfig.model_validate(files[TRAIN_CONFIG_NAME])
    assert train.seed == 3 and train.data.train[0] == f"{tmp_path}/shards/train-*.tar"
    assert env == {"MLFLOW_TRACKING_URI": "http://mlflow.example:5000"}


def test_a_remote_cluster_refuses_relative_paths_and_sqlite_stores_naming_each(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError) as refused:
        localize("train", str(recipe(tmp_path)), ["model.path=/models/llava"], [], REMOTE, cwd=tmp_path)
    message = str(refused.value)
    assert "data.train ('shards/train-*.tar')" in message and "stages[0].data.train ('shards/detail-*.tar')" in message
    assert "run.storage_path ('runs')" in message and "mlflow.tracking_uri ('sqlite:///stores/mlflow.db')" in message
    assert "MLFLOW_TRACKING_URI ('sqlite:///mlflow.db')" in message
    assert "s3://" not in message.split(". Use")[0] and "/models/llava" not in message  # URIs, node paths pass

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    files, env, _ = localize("train", "llava-ov-0.5b", [], [], REMOTE, cwd=tmp_path)  # the GPU preset: nothing local
    assert files["main"]["model"]["path"] == "/models/llava-onevision-qwen2-0.5b-ov-hf"
    assert env == {"MLFLOW_TRACKING_URI": "http://mlflow.example:5000"}


def test_overrides_are_taken_out_of_a_jobs_arguments() -> None:
    assert split_overrides(["--set", "a=1", "--set=b.c=2", "--resume", "x"]) == (["a=1", "b.c=2"], ["--resume", "x"])


def test_a_port_forwarded_cluster_is_remote_when_told(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match=r"data.train \('shards/train-\*.tar'\)"):
        localize("train", str(recipe(tmp_path)), [], [], LOCAL, cwd=tmp_path, remote=True)



EVALUATE_ARGS = ["--model", "models:/visor@challenger", "--data", "shards/eval-*.tar", "--data=s3://b/e-*.tar",
                 "--baseline", "full=runs/full-model", "--baseline=reg=models:/full/1", "--out", "report.json",
                 "--batch-size", "8", "--tracking-uri=sqlite:///mlflow.db"]


def test_a_jobs_path_arguments_mean_the_submitting_directorys_on_a_local_head(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    files, _, args = localize("evaluate", None, [], EVALUATE_ARGS, LOCAL, cwd=tmp_path)
    assert files == {} and args == [
        "--model", "models:/visor@challenger", "--data", f"{tmp_path}/shards/eval-*.tar", "--data=s3://b/e-*.tar",
        "--baseline", f"full={tmp_path}/runs/full-model", "--baseline=reg=models:/full/1",
        "--out", f"{tmp_path}/report.json", "--batch-size", "8", f"--tracking-uri=sqlite:///{tmp_path}/mlflow.db"]


def test_a_remote_cluster_refuses_relative_path_arguments_naming_each(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    with pytest.raises(ValueError) as refused:
        localize("evaluate", None, [], EVALUATE_ARGS, REMOTE, cwd=tmp_path)
    unreachable = str(refused.value).split(". Use")[0]
    assert "--data ('shards/eval-*.tar')" in unreachable and "--baseline ('runs/full-model')" in unreachable
    assert "--out ('report.json')" in unreachable and "--tracking-uri ('sqlite:///mlflow.db')" in unreachable
    assert "s3://" not in unreachable and "models:/" not in unreachable and "'8'" not in unreachable
