"""A registry URI is fetched as what it names in its own store: the local cache never mixes two stores."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
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


def test_the_pyfunc_checks_its_input_like_the_endpoint(tmp_path: Path, processor) -> None:
    """Issue 31: the pyfunc refuses what the endpoint refuses (context length, max_new_tokens beyond the limit,
    a non-image), with the endpoint's messages in an MlflowException naming the row and column,
    before any row runs; it takes an integer budget and a data URL as well as a string budget and bare base64."""
    import base64
    import io
    import time

    import pandas as pd
    from mlflow.exceptions import MlflowException
    from PIL import Image

    from jobs.inputs import Limits

    registered_store(tmp_path, processor, 0)
    model = mlflow.pyfunc.load_model("models:/visor/1")
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 120, 20)).save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    question = "what colour is the box ?"
    old_style = model.predict(pd.DataFrame([{"question": question, "image": encoded, "budget": "1",
                                             "max_new_tokens": 3}]))
    new_style = model.predict(pd.DataFrame([{"question": question, "image": "data:image/png;base64," + encoded,
                                             "budget": 1, "max_new_tokens": 3}]))
    assert new_style.to_dict("records") == old_style.to_dict("records") and old_style["budget"][0] == 1
    text_only = model.predict(pd.DataFrame([{"question": question}]))  # image, budget, max_new_tokens optional
    assert isinstance(text_only["answer"][0], str)

    ok = {"question": question, "image": "", "budget": "auto", "max_new_tokens": 3}
    limit = Limits().max_new_tokens
    refused = [
        ({"question": " ".join(["what"] * 5000)}, "row 1, column 'question'", "exceeds the model's context of"),
        ({"question": "what " * 50_000}, "row 1, column 'question'", "characters, more than"),
        ({"max_new_tokens": 10**6}, "row 1, column 'max_new_tokens'", f"must be an integer in [1, {limit}]"),
        ({"budget": 7}, "row 1, column 'budget'", "must be \"auto\" or an integer in [0, 1]"),
        ({"image": base64.b64encode(b"hello").decode()}, "row 1, column 'image'", "cannot identify image file"),
    ]
    for change, where, message in refused:
        started = time.perf_counter()
        with pytest.raises(MlflowException) as raised:
            model.predict(pd.DataFrame([ok, {**ok, **change}]))
        assert where in raised.value.message and message in raised.value.message, raised.value.message
        assert raised.value.error_code == "INVALID_PARAMETER_VALUE"
        assert time.perf_counter() - started < 5  # refused before anything generates (it used to run 23 s)


def test_the_pyfunc_infers_where_its_model_config_says(tmp_path: Path, processor) -> None:
    """``auto`` (no model_config): the CPU in float32 on this machine (a GPU in bfloat16 where one is visible);
    ``model_config`` and ``load_visor`` choose the device and dtype; a device that is not here is refused by name."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from jobs.registry.model_format import load_visor

    registered_store(tmp_path, processor, 0)
    default = mlflow.pyfunc.load_model("models:/visor/1").unwrap_python_model().model
    auto = (torch.device("cuda", 0), torch.bfloat16) if torch.cuda.is_available() else (torch.device("cpu"),
                                                                                         torch.float32)
    assert (default.device, default.dtype) == auto
    half = mlflow.pyfunc.load_model("models:/visor/1", model_config={"device": "cpu", "dtype": "bfloat16"})
    assert half.unwrap_python_model().model.dtype == torch.bfloat16
    answer = half.predict(pd.DataFrame([{"question": "what colour is the box ?", "budget": 1, "max_new_tokens": 2}]))
    assert isinstance(answer["answer"][0], str)
    model, _ = load_visor("models:/visor/1")  # jobs that log the model again get it as it was stored
    assert (model.device, model.dtype) == (torch.device("cpu"), torch.float32)
    if not torch.cuda.is_available():
        with pytest.raises((ValueError, MlflowException), match=r"model_config device is 'cuda'"):
            load_visor("models:/visor/1", "cuda")
