"""Where and in what precision a model infers: the ``device`` and ``dtype`` settings every inference path shares
(``visor serve``'s replicas, the scoring actors of ``train-policy``/``evaluate``/``retrain``, the ``mlflow.pyfunc``
model).

``device``: ``auto`` (CUDA when this process sees a GPU — on Ray, one the actor asked for — else the CPU),
``cpu``, ``cuda`` or ``cuda:N``. ``dtype``: ``auto`` (bfloat16 on CUDA, float32 on the CPU), ``float32``,
``bfloat16`` or ``float16``. A setting that cannot work here raises a ``ValueError`` naming it: ``cuda`` without
CUDA, ``float16`` on the CPU (half-precision matmuls there are slow or missing).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from jobs.sections import DEVICE_PATTERN

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve(device: str = "auto", dtype: str = "auto", setting: str = "") -> tuple[torch.device, torch.dtype]:
    """The torch device and dtype the settings ask for on this machine; ``setting`` prefixes the names in errors
    (e.g. ``"serve."``)."""
    if not re.match(DEVICE_PATTERN, device):
        raise ValueError(f"{setting}device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if dtype not in DTYPES:
        raise ValueError(f"{setting}dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    cuda = torch.cuda.is_available()
    if device == "auto":
        chosen = torch.device("cuda" if cuda else "cpu")
    else:
        chosen = torch.device(device)
        if chosen.type == "cuda" and not cuda:
            raise ValueError(f"{setting}device is {device!r} but this process sees no CUDA device (torch "
                             f"{torch.__version__}, CUDA build: {torch.version.cuda is not None}); ask Ray for a GPU "
                             f"(the GPUs-per-replica/actor setting) or set {setting}device=auto or cpu")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ValueError(f"{setting}device is {device!r} but only {torch.cuda.device_count()} CUDA device(s) "
                             "are visible here")
    precision = DTYPES[dtype] or (torch.bfloat16 if chosen.type == "cuda" else torch.float32)
    if precision is torch.float16 and chosen.type == "cpu":
        raise ValueError(f"{setting}dtype float16 needs CUDA (the model runs on the CPU here): use float32 or "
                         "bfloat16")
    return chosen, precision


def place(model: Any, device: str = "auto", dtype: str = "auto", setting: str = "") -> Any:
    """``model`` moved to the resolved device and dtype, in eval mode (the same object)."""
    chosen, precision = resolve(device, dtype, setting)
    return model.to(device=chosen, dtype=precision).eval()


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """``batch`` with every tensor on ``device`` (other values as they are). Floating inputs keep their dtype:
    the model casts pixels to its vision tower's dtype itself."""
    return {name: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
            for name, value in batch.items()}


def describe(model: Any) -> dict[str, Any]:
    """Where ``model`` runs, for stats and reports: its device, dtype and the GPUs Ray gave this process (ids,
    empty outside Ray or without GPUs)."""
    gpu_ids: list = []
    try:
        import ray

        if ray.is_initialized():
            gpu_ids = [str(i) for i in ray.get_gpu_ids()]
    except Exception:  # noqa: BLE001 (outside a Ray worker there is nothing to report)
        gpu_ids = []
    parameter = next(model.parameters())
    return {"device": str(parameter.device), "dtype": str(parameter.dtype).removeprefix("torch."),
            "ray_gpu_ids": gpu_ids}
