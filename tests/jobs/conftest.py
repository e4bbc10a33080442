"""Fixtures for the job tests: synthetic shards and a small registered VISOR model in a real MLflow store."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Registry:
    uri: str
    data: Path
    model_uri: str  # models:/visor/1, alias challenger


def _train_briefly(data: Path, steps: int = 20):
    """A tiny VISOR model trained in-process (no Ray) on a fixed batch, so its answers are not all random — and
    not so sure of them that sampling at temperature 2 never runs to ``max_tokens`` (the serving tests need
    long requests: after 40 steps on the synthetic data none of 64 samples did, after 20 five did)."""
    from jobs.train.config import ModelConfig, OptimConfig
    from jobs.train.model_setup import build_model, freeze
    from jobs.train.steps import budgets_for_step, make_optimizer, optimizer_step
    from visor_model.processing import VisorProcessor

    from .batches import fixed_batch

    processor = VisorProcessor.from_pretrained(data / "processor")
    batch = fixed_batch(processor, 24)
    model = build_model(ModelConfig(tiny={"num_layers": 3, "hidden_size": 32}), len(processor.tokenizer), seed=0)
    freeze(model, [])
    optimizer, scheduler = make_optimizer(model, OptimConfig(lr=3e-3, warmup_steps=3, max_steps=steps))
    for step in range(steps):
        optimizer_step(model, [batch], budgets_for_step("uniform", model.plan.num_budgets, 0, step), optimizer,
                       scheduler, 1.0)
    return model.eval(), processor


@pytest.fixture(scope="module")
def registry(tmp_path_factory, ray_local) -> Registry:
    """Shards (train/eval/policy) and ``models:/visor/1`` (alias challenger) in a fresh SQLite store."""
    import mlflow

    from jobs.registry.model_format import log_visor_model, save_model_dir
    from jobs.registry.tracking import experiment_id, register
    from pipelines.shards import data_version, resolve_shards
    from pipelines.synth import write_synth

    root = tmp_path_factory.mktemp("registry")
    data = root / "data"
    write_synth(data, 24, 36, 12, seed=4, policy=48)
    model, processor = _train_briefly(data)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    experiment_id(uri, "visor-train")  # artifacts beside the store, not in the current directory
    with mlflow.start_run():
        info = log_visor_model(save_model_dir(model, processor, root / "model"))
    version = register(uri, info.model_uri, "visor", "challenger", {
        "data_version": data_version(resolve_shards(str(data / "train-*.tar"))),
        "plan": json.dumps(model.config.plan), "job": "train"})
    return Registry(uri, data, f"models:/visor/{version}")
