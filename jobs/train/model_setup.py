"""Setting up what a training run trains: the processor, the model (tiny random, converted LLaVA-OneVision, or
a VISOR directory; local or ``s3://``) and which parameter groups are frozen."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from jobs.train.config import ModelConfig
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
