"""A registry URI is fetched as what it names in its own store: the local cache never mixes two stores."""

from __future__ import annotations

from pathlib import Path

import mlflow
import torch

from jobs.registry.model_format import fetch_model_dir, log_visor_model, save_model_dir
from jobs.registry.tracking import experiment_id, register
from visor_model import VisorForConditionalGeneration
from visor_model.presets import tiny_config


def registered_store(root: Path, processor, seed: int) -> tuple[str, VisorForConditionalGeneration]:
    """A fresh SQLite store whose ``models:/visor/1`` is a random tiny model drawn with ``seed``."""
    torch.manual_seed(seed)
    model = VisorForConditionalGeneration(tiny_config(len(processor.tokenizer), num_layers=3, hidden_size=32))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=experiment_id(uri, "visor-train")):
        info = log_visor_model(save_model_dir(model, processor, root / "model"))
    assert register(uri, info.model_uri, "visor", "champion", {}) == "1"
    return uri, model


def test_the_same_uri_in_two_stores_is_fetched_as_two_models(tmp_path: Path, processor) -> None:
    cache = tmp_path / "cache"
    fetched = {}
    for seed in (0, 1):
        (tmp_path / str(seed)).mkdir()
        uri, model = registered_store(tmp_path / str(seed), processor, seed)
        for name in ("models:/visor/1", "models:/visor@champion"):
            directory = fetch_model_dir(name, uri, cache)
            loaded = VisorForConditionalGeneration.from_pretrained(directory).state_dict()
            assert all(torch.equal(v, loaded[k]) for k, v in model.state_dict().items())
            fetched[seed, name] = directory
    assert fetched[0, "models:/visor/1"] != fetched[1, "models:/visor/1"]
    first_store = f"sqlite:///{tmp_path / '0' / 'mlflow.db'}"
    assert fetch_model_dir("models:/visor/1", first_store, cache) == fetched[0, "models:/visor/1"]  # reused
