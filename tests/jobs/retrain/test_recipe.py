"""The paper's recipe end to end on local Ray and a real MLflow store: a LLaVA-OneVision checkpoint (a tiny
random one saved by ``transformers``) → stage 1, the largest budget with only the new gated sublayers trained →
stage 2, the universal network over every budget → policy → evaluate → promote; a failed stage resumes where it
stopped; the next retrain on new shards warm-starts from the champion, and its failing policy stage leaves the
champion alone (resuming a failed retrain is tested in test_retrain)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from transformers import LlavaOnevisionForConditionalGeneration

from jobs.retrain.config import RetrainConfig
from jobs.retrain.retrain import run_retrain
from pipelines.synth import write_split, write_synth
from visor_model import LayerPlan, VisorForConditionalGeneration
from visor_model.presets import tiny_config
from visor_model.processing import VisorProcessor

pytestmark = pytest.mark.integration  # Ray Train runs

STAGES = [
    {"name": "largest", "sampling": {"strategy": "largest"},
     "freeze": ["vision_tower", "projector", "language_model", "lm_head"]},
    {"name": "universal", "sampling": {"strategy": "uniform"}, "optim": {"lr": 2e-3}},
]


def llava_checkpoint(data: Path, out: Path) -> Path:
    """A tiny random LLaVA-OneVision checkpoint in ``transformers`` format, with the shards' processor."""
    processor = VisorProcessor.from_pretrained(data / "processor")
    torch.manual_seed(0)
    config = tiny_config(len(processor.tokenizer), num_layers=3, hidden_size=32).to_llava_onevision_config()
    LlavaOnevisionForConditionalGeneration(config).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def recipe_config(root: Path) -> RetrainConfig:
    data = root / "data"
    train = root / "recipe.yaml"
    train.write_text(yaml.safe_dump({
        "name": "recipe",
        "model": {"init": "llava", "path": str(root / "llava"), "plan": "default", "cross_attention": "gated"},
        "data": {"train": [f"{data}/train-*.tar"], "batch_size": 4, "preprocess_cpus": 0.5},
        "optim": {"max_steps": 3, "warmup_steps": 1},
        "run": {"checkpoint_every": 3, "log_every": 1, "storage_path": str(root / "runs")},
        "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
        "scaling": {"num_workers": 2, "cpus_per_worker": 0.5},
        "stages": STAGES,
    }))
    return RetrainConfig.model_validate({
        "train": str(train), "policy": {"data": [f"{data}/policy-*.tar"], "epochs": 30},
        "evaluate": {"data": [f"{data}/eval-*.tar"]}, "score": {"batch_size": 12}, "lock_dir": str(root / "locks"),
    })


def runs(client: MlflowClient, query: str) -> list:
    experiment = client.get_experiment_by_name("visor-retrain")
    return client.search_runs([experiment.experiment_id], query)


def test_recipe_from_a_llava_checkpoint_resumes_a_failed_stage_then_warm_starts(
        ray_local, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_synth(tmp_path / "data", 24, 24, 12, seed=8, policy=24)
    llava_checkpoint(tmp_path / "data", tmp_path / "llava")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    monkeypatch.setenv("VISOR_TEST_FAULT", "recipe:stage=universal")
    with pytest.raises(RuntimeError, match="injected failure in recipe stage universal"):
        run_retrain(recipe_config(tmp_path))
    monkeypatch.delenv("VISOR_TEST_FAULT")
    (recipe,) = runs(client, "tags.`visor.recipe` != ''")
    assert recipe.info.status == "FAILED" and json.loads(recipe.data.tags["visor.recipe"]) == ["largest", "universal"]
    assert [r.data.tags["visor.stage"] for r in runs(client, "tags.`visor.stage` != ''")] == ["largest"]

    first = run_retrain(recipe_config(tmp_path))  # the same command again: stage 1 is not trained twice
    assert first.status == "promoted"
    stages = runs(client, "tags.`visor.stage` != ''")
    assert sorted(r.data.tags["visor.stage"] for r in stages) == ["largest", "universal"]
    assert all(r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == recipe.info.run_id
               for r in stages)
    largest = next(r for r in stages if r.data.tags["visor.stage"] == "largest")
    universal = next(r for r in stages if r.data.tags["visor.stage"] == "universal")
    assert largest.data.metrics.keys() >= {"loss/budget_1"} and "loss/budget_0" not in largest.data.metrics
    assert universal.data.params["model.path"] == largest.data.tags["visor.stage_output"]
    assert client.get_run(recipe.info.run_id).info.status == "FINISHED"

    champion = client.get_model_version_by_alias("visor", "champion")
    assert str(champion.version) == first.champion
    stage_one = VisorForConditionalGeneration.from_pretrained(largest.data.tags["visor.stage_output"])
    reference = LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path / "llava")
    assert stage_one.plan == LayerPlan.default(3) and stage_one.config.cross_attention == "gated"
    frozen = reference.state_dict()
    assert all(torch.equal(frozen[k], v) for k, v in stage_one.state_dict().items() if k in frozen)  # only gated
    assert any(g.gate.item() != 0.0 for g in stage_one.gated.values())  # ... which did train

    write_split(tmp_path / "data", "train", 36, 12, seed=9)  # new shards: the next retrain warm-starts
    monkeypatch.setenv("VISOR_TEST_FAULT", "retrain:stage=policy")
    with pytest.raises(RuntimeError, match="injected failure in retrain stage policy"):
        run_retrain(recipe_config(tmp_path))
    assert str(client.get_model_version_by_alias("visor", "champion").version) == first.champion  # untouched
    (warm,) = runs(client, "tags.warm_start != ''")
    assert warm.data.tags["warm_start"] == f"models:/visor/{first.champion}"
    (trained,) = runs(client, f"tags.`mlflow.parentRunId` = '{warm.info.run_id}' and tags.job = 'train'")
    assert trained.info.status == "FINISHED" and trained.data.params["model.path"] == f"models:/visor/{first.champion}"
    assert "visor.recipe" not in trained.data.tags  # only the last stage, as one run
    assert len(runs(client, "tags.`visor.stage` = 'largest'")) == 1
