"""How a VISOR model is stored in MLflow and loaded back.

A logged model is an ``mlflow.pyfunc`` model whose artifact ``model/`` is the
model directory (``save_pretrained``: safetensors weights, ``config.json`` with
the layer plan, and the processor files), logged from code (:mod:`jobs.registry.pyfunc_model`,
nothing pickled) with an explicit signature, and whose code (``visor_model``, and
``jobs`` for this module's :class:`VisorPyfunc`) travels with it, so a fresh process
needs only the URI:

* ``mlflow.pyfunc.load_model("models:/visor@champion").predict(df)`` — rows of
  ``question`` (str, required), ``image`` (an image as a ``data:`` URL or bare base64; ``""``, null
  or no column for none), ``budget`` (``"auto"``, the default, or an integer, or an integer as a
  string) and ``max_new_tokens`` (default 16) → ``answer``, ``budget``, ``flops`` (total),
  ``language_flops``, ``visual_tokens``. Every row is checked like a request to the endpoint
  (:mod:`jobs.inputs`: the same :class:`~jobs.inputs.Limits` defaults, the same messages) before
  any row runs: ``max_new_tokens`` at most 512, the text at most 200,000 characters, the image's
  bytes and pixels, the prompt plus ``max_new_tokens`` within the model's context; a refused row
  raises ``MlflowException`` (``INVALID_PARAMETER_VALUE``: 400 from ``mlflow models serve``) naming
  the row and the column;
* :func:`load_visor` — the ``VisorForConditionalGeneration`` and ``VisorProcessor``
  themselves (what serving and evaluation use), on the device and in the dtype asked for.

The pyfunc model infers on a GPU in bfloat16 when the process sees one, else on the CPU in float32, under
``torch.inference_mode()``; ``mlflow.pyfunc.load_model(uri, model_config={"device": …, "dtype": …})`` overrides it
(:mod:`jobs.inference_device`: ``auto``, ``cpu``, ``cuda[:N]``; ``float32``, ``bfloat16``, ``float16``).

Logging does not run ``pip`` (the requirements are listed explicitly), so it works offline.
Models logged before this module moved here (it was ``pipelines.packaging``) name their class
``pipelines.packaging.VisorPyfunc``; importing this module lets the running process load them.
"""

from __future__ import annotations

import base64
import io
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import pandas as pd  # at module level: MLflow resolves predict's type hints (else it warns at class definition)

if TYPE_CHECKING:
    from visor_model import VisorForConditionalGeneration
    from visor_model.processing import VisorProcessor

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
CODE_PATHS = [str(PACKAGE_ROOT / name) for name in ("visor_model", "jobs", "pipelines")]  # jobs.inputs: pipelines
MODEL_ARTIFACT = "model"
sys.modules.setdefault("pipelines.packaging", sys.modules[__name__])  # the class path of older logged models


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("torch", "transformers", "safetensors", "pillow", "tokenizers")]


def encode_image(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class VisorPyfunc(mlflow.pyfunc.PythonModel):
    """The pyfunc face of a VISOR model (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        """Load the model where ``model_config`` says (``device``, ``dtype``: :mod:`jobs.inference_device`'s
        settings; logged as ``auto`` — a GPU in bfloat16 when one is visible, else the CPU in float32). A model
        logged before it had a ``model_config`` loads as it was stored (the CPU, float32)."""
        from jobs.inference_device import place

        self.model, self.processor = load_model_dir(context.artifacts[MODEL_ARTIFACT])
        settings = context.model_config or {}
        if settings:
            place(self.model, settings.get("device", "auto"), settings.get("dtype", "auto"), "model_config ")

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import torch

        from jobs.inference_device import to_device
        from visor_model import flops

        rows = [self._checked(index, row) for index, row in enumerate(model_input.to_dict("records"))]
        answers = []
        for image, budget, max_new_tokens, inputs in rows:
            with torch.inference_mode():
                result = self.model.generate(**to_device(inputs, self.model.device), budget=budget,
                                             max_new_tokens=max_new_tokens, return_dict_in_generate=True)
            prompt_len = inputs["input_ids"].shape[1]
            used = int(result.budget[0])
            tiles = int(inputs["pixel_values"].shape[1]) if image is not None else 0
            cost = flops.visor_flops(self.model.config, used, int(result.num_visual_tokens[0]),
                                     int(result.num_text_tokens[0]), tiles)
            answers.append({
                "answer": self.processor.tokenizer.decode(result.sequences[0, prompt_len:],
                                                          skip_special_tokens=True).strip(),
                "budget": used, "flops": cost["total"], "language_flops": cost["language"],
                "visual_tokens": int(result.num_visual_tokens[0]),
            })
        return pd.DataFrame(answers)

    def _checked(self, index: int, row: dict[str, Any]) -> tuple[Any, str | int, int, dict]:
        """Row ``index`` checked as the endpoint checks a request (module docstring): its image (or None), budget,
        ``max_new_tokens`` and model inputs; raises ``MlflowException`` (``INVALID_PARAMETER_VALUE``)."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from jobs.inputs import (
            ApiError,
            Limits,
            check_budget,
            check_context,
            check_max_tokens,
            check_text,
            decode,
            image_bytes,
        )

        limits = Limits()
        column = "question"
        try:
            question = row.get("question")
            if not isinstance(question, str) or not question.strip():
                raise ApiError(400, f"question must be a non-empty string, got {question!r}", column)
            check_text([question], limits, column)
            column = "max_new_tokens"
            max_new_tokens = check_max_tokens(_plain(row.get(column, 16), 16), limits, column)
            column = "budget"
            budget = check_budget(_plain(row.get(column, "auto"), "auto"), self.model.plan.num_budgets, column,
                                  strings=True)
            column = "image"
            encoded = _plain(row.get(column), "")
            if not isinstance(encoded, str):
                raise ApiError(400, f"image must be a string (a data: URL or base64), got {type(encoded).__name__}",
                               column)
            image = decode(image_bytes(encoded.strip(), limits, bare_base64=True), limits) if encoded.strip() else None
            column = "question"
            inputs = dict(self.processor(text=[self.processor.prompt(question, image is not None)],
                                         images=[image] if image is not None else None, return_tensors="pt"))
            inputs.pop("batch_num_images", None)
            check_context(inputs["input_ids"].shape[1], max_new_tokens,
                          self.model.config.text_config.max_position_embeddings)
        except ApiError as err:
            raise MlflowException(f"row {index}, column {column!r}: {err}", INVALID_PARAMETER_VALUE) from None
        return image, budget, max_new_tokens, inputs


def _plain(value: Any, missing: Any) -> Any:
    """A DataFrame cell as a plain Python value: numpy scalars unwrapped, NaN/None/NA as ``missing``, a float that
    is an integer as that integer (pandas turns an integer column with a gap into floats)."""
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
        return missing
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def load_model_dir(path: str | Path) -> tuple[VisorForConditionalGeneration, VisorProcessor]:
    """Model (eval mode, float32) and processor from a directory written by :func:`save_model_dir`."""
    from visor_model import VisorForConditionalGeneration
    from visor_model.processing import VisorProcessor

    model = VisorForConditionalGeneration.from_pretrained(path, local_files_only=True).eval()
    return model, VisorProcessor.from_pretrained(path)


def save_model_dir(model: VisorForConditionalGeneration, processor: VisorProcessor, path: str | Path) -> Path:
    """Write the model (safetensors) and its processor into one directory."""
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    return path


def _input_example(processor: VisorProcessor) -> pd.DataFrame:
    from PIL import Image

    size = processor.image_processor.size
    buffer = io.BytesIO()
    Image.new("RGB", (int(size["width"]), int(size["height"])), (200, 30, 30)).save(buffer, format="PNG")
    return pd.DataFrame([{"question": "what colour is the background ?", "image": encode_image(buffer.getvalue()),
                          "budget": 0, "max_new_tokens": 4}])


def signature() -> mlflow.models.ModelSignature:
    """The pyfunc's columns (module docstring), stated rather than inferred from a prediction: ``question`` is
    required; ``image`` (data URL or base64), ``budget`` (``"auto"`` or an integer, as a number or a string: any
    type, checked by the model) and ``max_new_tokens`` are optional."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import AnyType

    def schema(columns: dict[str, Any], optional: tuple[str, ...] = ()) -> Schema:
        return Schema([ColSpec(kind, name, required=name not in optional) for name, kind in columns.items()])

    return ModelSignature(
        inputs=schema({"question": "string", "image": "string", "budget": AnyType(), "max_new_tokens": "long"},
                      optional=("image", "budget", "max_new_tokens")),
        outputs=schema({"answer": "string", "budget": "long", "flops": "double", "language_flops": "double",
                        "visual_tokens": "long"}),
    )


def log_visor_model(model_dir: str | Path, name: str = "visor") -> mlflow.models.model.ModelInfo:
    """Log the model directory as a pyfunc model in the active run (models-from-code: the model is
    :mod:`jobs.registry.pyfunc_model`, nothing is pickled); returns MLflow's ``ModelInfo``."""
    from visor_model.processing import VisorProcessor

    os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(Path(__file__).with_name("pyfunc_model.py")),
        artifacts={MODEL_ARTIFACT: str(model_dir)},
        code_paths=CODE_PATHS,
        pip_requirements=_requirements(),
        signature=signature(),
        model_config={"device": "auto", "dtype": "auto"},  # load_model(uri, model_config=…) may override them
        input_example=_input_example(VisorProcessor.from_pretrained(model_dir)),
    )


def fetch_model_dir(model_uri: str, tracking_uri: str, cache: Path | None = None) -> Path:
    """A local copy of the model directory (:func:`save_model_dir`) of a logged or registered model.

    It is downloaded once into ``cache`` (``~/.cache/visor/registry``) and reused. The cache entry is keyed by
    what the URI names in this store — the tracking URI and, for a registered version, the logged model it
    points at — never by the URI alone: ``models:/visor/1`` of one store is not ``models:/visor/1`` of another.
    Nothing is unpickled.
    """
    import hashlib
    import re

    import mlflow.artifacts
    import yaml
    from mlflow.tracking import MlflowClient

    from jobs.registry.tracking import registered_version

    identity = [tracking_uri, model_uri]
    found = registered_version(model_uri, tracking_uri)
    if found is not None:
        version = MlflowClient(tracking_uri).get_model_version(*found)
        identity += [version.source or "", version.run_id or ""]
    key = hashlib.sha256("\n".join(identity).encode()).hexdigest()[:16]
    readable = re.sub(r"[^\w.-]+", "_", model_uri)
    folder = (cache or Path.home() / ".cache" / "visor" / "registry") / f"{readable}-{key}"
    root = folder / "logged"
    if not (root / "MLmodel").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(folder / "download"),
                                                        tracking_uri=tracking_uri))
        root.rename(folder / "logged")
        root = folder / "logged"
    spec = yaml.safe_load((root / "MLmodel").read_text())
    try:
        relative = spec["flavors"]["python_function"]["artifacts"][MODEL_ARTIFACT]["path"]
    except (KeyError, TypeError):
        raise ValueError(f"{model_uri} is not a VISOR model (no {MODEL_ARTIFACT!r} artifact in its MLmodel)") from None
    return root / relative


def is_model_dir(model_uri: str) -> bool:
    """Whether ``model_uri`` is a local model directory (a training checkpoint's ``model/``: ``config.json``,
    weights and processor) rather than an MLflow model URI."""
    return (Path(model_uri) / "config.json").is_file()


def load_visor(
    model_uri: str, device: str = "cpu", dtype: str = "float32"
) -> tuple[VisorForConditionalGeneration, VisorProcessor]:
    """The model and processor of a logged/registered VISOR model (``models:/visor@champion``, ``runs:/…``) or of a
    local model directory (:func:`is_model_dir`), on ``device`` in ``dtype`` (:mod:`jobs.inference_device`; the
    default, the CPU in float32, is what a job that changes and logs the model again needs; inference passes its
    own settings, e.g. ``auto``)."""
    from jobs.inference_device import place, resolve

    resolve(device, dtype, "model_config ")  # before loading anything
    if is_model_dir(model_uri):
        import torch

        from visor_model import VisorForConditionalGeneration
        from visor_model.processing import VisorProcessor

        model = VisorForConditionalGeneration.from_pretrained(model_uri, dtype=torch.float32, local_files_only=True)
        return place(model, device, dtype, "model_config "), VisorProcessor.from_pretrained(model_uri)
    wrapper = mlflow.pyfunc.load_model(model_uri, model_config={"device": device, "dtype": dtype})
    wrapper = wrapper.unwrap_python_model()
    if not isinstance(wrapper, VisorPyfunc):
        raise ValueError(f"{model_uri} is not a VISOR model (its pyfunc is {type(wrapper).__name__})")
    return place(wrapper.model, device, dtype, "model_config "), wrapper.processor  # older models: from float32
