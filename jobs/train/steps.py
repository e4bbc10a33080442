"""Training mechanics, independent of Ray: model set-up, budget draws, the optimizer step.

The Ray Train loop (:mod:`jobs.train.driver`) and the overfitting test use the
same functions, so what the test proves is what the job runs.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from jobs.train.config import ModelConfig, OptimConfig
from visor_model import VisorForConditionalGeneration
from visor_model.plan import LayerPlan
from visor_model.processing import VisorProcessor

# parameter-name prefixes of each freezable group (see jobs.train.config.FREEZABLE)
GROUP_PREFIXES: dict[str, tuple[str, ...]] = {
    "vision_tower": ("model.vision_tower.",),
    "projector": ("model.multi_modal_projector.", "model.image_newline"),
    "language_model": ("model.language_model.",),
    "lm_head": ("lm_head.",),
    "cross_attention": ("gated.",),
}


def local_copy(url: str, cache: Path | None = None) -> Path:
    """A local directory with the contents of ``url`` (a local path, or ``s3://`` copied once into ``cache``)."""
    if not url.startswith("s3://"):
        return Path(url).expanduser()
    from pipelines.shards import S3Options

    target = (cache or Path.home() / ".cache" / "visor") / url.removeprefix("s3://").rstrip("/")
    if not (target / "config.json").exists() and not (target / "processor_config.json").exists():
        S3Options().filesystem().get(url.rstrip("/") + "/", str(target) + "/", recursive=True)
    return target


def build_processor(config: ModelConfig, default_dir: Path | None) -> VisorProcessor:
    """The processor named by ``config.processor``, else ``config.path``, else ``default_dir``."""
    source = config.processor or config.path or (str(default_dir) if default_dir else None)
    if source is None:
        raise ValueError("model.processor: no processor given and none next to the training shards")
    return VisorProcessor.from_pretrained(local_copy(source))


def _plan(config: ModelConfig, num_layers: int) -> LayerPlan | None:
    if config.cross_layers is None:
        return None
    return LayerPlan(num_layers, config.cross_layers, config.budgets)


def build_model(config: ModelConfig, vocab_size: int, seed: int) -> VisorForConditionalGeneration:
    """The model to train (float32; autocast handles bf16): tiny random, converted LLaVA-OV, or a VISOR dir."""
    from visor_model.presets import tiny_config

    torch.manual_seed(seed)
    fields = {"cross_attention": config.cross_attention, "token_reduction": config.token_reduction}
    if config.init == "tiny":
        layers = config.tiny.num_layers
        plan = _plan(config, layers)
        model = VisorForConditionalGeneration(tiny_config(
            vocab_size, num_layers=layers, hidden_size=config.tiny.hidden_size,
            **fields, **({"plan": plan.to_dict()} if plan else {}),
        ))
    elif config.init == "llava":
        from transformers import LlavaOnevisionForConditionalGeneration

        reference = LlavaOnevisionForConditionalGeneration.from_pretrained(
            local_copy(config.path), dtype=torch.float32, local_files_only=True
        )
        plan = _plan(config, reference.config.text_config.num_hidden_layers)
        model = VisorForConditionalGeneration.from_llava_onevision(reference, plan=plan, **fields)
    else:
        model = VisorForConditionalGeneration.from_pretrained(
            local_copy(config.path), dtype=torch.float32, local_files_only=True
        )
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def freeze(model: nn.Module, groups: list[str]) -> int:
    """Freeze the named parameter groups and the policy head (trained by its own job); returns the
    number of trainable parameters left."""
    prefixes = tuple(p for g in groups for p in GROUP_PREFIXES[g]) + ("policy.",)
    trainable = 0
    for name, param in model.named_parameters():
        param.requires_grad_(not name.startswith(prefixes))
        trainable += param.numel() if param.requires_grad else 0
    if trainable == 0:
        raise ValueError(f"freeze {groups}: no trainable parameters left")
    return trainable


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
    """
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
