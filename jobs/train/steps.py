"""Training mechanics, independent of Ray: the optimizer and its schedule, budget draws, the optimizer step.

The Ray Train loop (:mod:`jobs.train.worker`) and the overfitting test use the
same functions, so what the test proves is what the job runs.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from jobs.train.config import OptimConfig


def make_optimizer(
    model: nn.Module, config: OptimConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (no weight decay on biases, norms and 1-D parameters) and the warm-up + cosine schedule."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=config.betas,
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config))


def lr_factor(config: OptimConfig) -> Callable[[int], float]:
    """Multiplier of ``lr`` at optimizer step ``s`` (0-based): linear warm-up over ``warmup_steps``,
    then cosine from 1 to ``min_lr_ratio`` at ``max_steps``."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        span = max(config.max_steps - config.warmup_steps, 1)
        progress = min((step - config.warmup_steps) / span, 1.0)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def budgets_for_step(strategy: str, num_budgets: int, seed: int, step: int) -> list[int]:
    """Budgets trained at optimizer ``step``; a pure function of its arguments (same on every worker).

    ``uniform``: one budget drawn uniformly. ``sandwich``: the largest, the
    smallest and one drawn from those in between (fewer when there are fewer budgets).
    ``largest``: the largest budget only (the first stage of the paper's recipe).
    """
    if strategy == "largest":
        return [num_budgets - 1]
    rng = random.Random(seed * 1_000_003 + step)
    if strategy == "uniform":
        return [rng.randrange(num_budgets)]
    if strategy == "sandwich":
        largest, middle = num_budgets - 1, list(range(1, num_budgets - 1))
        return list(dict.fromkeys([largest, 0] + ([rng.choice(middle)] if middle else [])))
    raise ValueError(f"unknown budget strategy {strategy!r}")


@dataclass
class StepResult:
    """Mean loss per budget of one optimizer step, the pre-clipping gradient norm and samples seen."""

    losses: dict[int, float]
    grad_norm: float
    samples: int


def _no_sync(model: nn.Module, last: bool):
    return contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()


def optimizer_step(
    model: nn.Module,
    micro_batches: list[dict[str, torch.Tensor]],
    budgets: list[int],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    grad_clip: float | None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> StepResult:
    """One optimizer step: every budget on every micro-batch, gradients averaged over all of them.

    Under DDP only the last backward synchronises gradients (``no_sync`` before it).
    """
    model.train()
    count = len(micro_batches) * len(budgets)
    sums = dict.fromkeys(budgets, 0.0)
    done = 0
    for batch in micro_batches:
        for budget in budgets:
            done += 1
            with _no_sync(model, done == count), autocast():
                loss = model(**batch, budget=budget).loss
            (loss / count).backward()
            sums[budget] += float(loss.detach())
    params = [p for p in model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else float("inf"))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(
        {b: s / len(micro_batches) for b, s in sums.items()},
        float(norm),
        sum(len(b["input_ids"]) for b in micro_batches),
    )
