"""Training state in and out of Ray Train checkpoints, for DDP and FSDP.

A checkpoint directory holds ``state.pt``: ``{"model", "optimizer", "scheduler",
"step", "rng"}`` where ``model`` is the full (unsharded) state dict, ``step``
the number of optimizer steps done and ``rng`` one entry per worker rank
(python, numpy and torch generator states), so a resumed run continues with
the same random streams. The final checkpoint also holds ``model/`` (see
:func:`jobs.registry.model_format.save_model_dir`).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

STATE_FILE = "state.pt"


def unwrap(model: nn.Module) -> nn.Module:
    """The user module inside a DDP/FSDP wrapper."""
    return getattr(model, "module", model)


def _is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(model, FullyShardedDataParallel)


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _gather(obj: Any) -> list[Any]:
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def capture_state(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, step: int) -> dict | None:
    """The full training state on rank 0 (None on other ranks). Collective: call it on every rank."""
    rngs = _gather(rng_state())
    if _is_fsdp(model):
        from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType

        with FullyShardedDataParallel.state_dict_type(
            model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
        ):
            model_state = model.state_dict()
            optim_state = FullyShardedDataParallel.optim_state_dict(model, optimizer)
    else:
        model_state, optim_state = unwrap(model).state_dict(), optimizer.state_dict()
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    return {"model": model_state, "optimizer": optim_state, "scheduler": scheduler.state_dict(), "step": step,
            "rng": rngs}


def read_state(directory: Path) -> dict[str, Any]:
    """The training state a checkpoint directory holds (``state.pt``, see the module docstring), on the CPU."""
    return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=False)


def restore_state(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> int:
    """Load ``directory/state.pt`` into the (wrapped) model, optimizer, scheduler and this rank's RNGs;
    returns the step to continue from."""
    state = read_state(directory)
    if _is_fsdp(model):
        from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType

        with FullyShardedDataParallel.state_dict_type(
            model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=True, rank0_only=False)
        ):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(
                FullyShardedDataParallel.optim_state_dict_to_load(model, optimizer, state["optimizer"])
            )
    else:
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rank = dist.get_rank() if dist.is_initialized() else 0
    rngs = state["rng"]
    set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
    return int(state["step"])
