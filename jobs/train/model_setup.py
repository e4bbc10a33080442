"""Setting up what a training run trains: the processor, the model (tiny random, converted LLaVA-OneVision, or
a VISOR directory; local or ``s3://``) and which parameter groups are frozen."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from jobs.train.config import FREEZABLE, ModelConfig
from visor_model import VisorForConditionalGeneration
from visor_model.plan import LayerPlan
from visor_model.processing import VisorProcessor


def local_copy(url: str, tracking_uri: str | None = None, cache: Path | None = None) -> Path:
    """A local directory with the contents of ``url``: a local path as it is, ``s3://`` copied once into
    ``cache``, a registry or run URI (``models:/…``, ``runs:/…``) downloaded once from ``tracking_uri``."""
    if url.startswith(("models:/", "runs:/")):
        from jobs.registry.model_format import fetch_model_dir
        from jobs.registry.tracking import tracking_uri as default_uri

        return fetch_model_dir(url, default_uri(tracking_uri), cache)
    if not url.startswith("s3://"):
        return Path(url).expanduser()
    from pipelines.shards import S3Options

    target = (cache or Path.home() / ".cache" / "visor") / url.removeprefix("s3://").rstrip("/")
    if not (target / "config.json").exists() and not (target / "processor_config.json").exists():
        S3Options().filesystem().get(url.rstrip("/") + "/", str(target) + "/", recursive=True)
    return target


def build_processor(config: ModelConfig, default_dir: Path | None, tracking_uri: str | None = None) -> VisorProcessor:
    """The processor named by ``config.processor``, else ``config.path``, else ``default_dir``."""
    source = config.processor or config.path or (str(default_dir) if default_dir else None)
    if source is None:
        raise ValueError("model.processor: no processor given and none next to the training shards")
    return VisorProcessor.from_pretrained(local_copy(source, tracking_uri))


def requested_plan(config: ModelConfig, num_layers: int) -> LayerPlan | None:
    """The plan ``config`` asks for on a model of ``num_layers`` decoder layers (None: keep / default)."""
    if config.cross_layers is not None:
        return LayerPlan(num_layers, config.cross_layers, config.budgets)
    if config.plan == "full_attention":
        return LayerPlan.full_attention(num_layers)
    if config.plan == "default":
        return LayerPlan.default(num_layers)
    return None


def build_model(config: ModelConfig, vocab_size: int, seed: int,
                tracking_uri: str | None = None) -> VisorForConditionalGeneration:
    """The model to train (float32; autocast handles bf16): tiny random, converted LLaVA-OV, or a VISOR model —
    re-planned through :meth:`~VisorForConditionalGeneration.to_llava_onevision` when ``config`` asks a
    full-attention model for another plan (see :class:`~jobs.train.config.ModelConfig`)."""
    from visor_model.presets import drop_vision_positions, tiny_config

    torch.manual_seed(seed)
    if config.init == "tiny":
        plan = requested_plan(config, config.tiny.num_layers)
        model = VisorForConditionalGeneration(tiny_config(
            vocab_size, num_layers=config.tiny.num_layers, hidden_size=config.tiny.hidden_size,
            vision=config.tiny.vision, rope_theta=config.tiny.rope_theta,
            **variant_fields(config), **({"plan": plan.to_dict()} if plan else {}),
        ))
        if config.tiny.vision == "patches":
            drop_vision_positions(model)
        if config.tiny.attention_init_std is not None:
            widen_attention_init(model, config.tiny.attention_init_std)
    elif config.init == "llava":
        from transformers import LlavaOnevisionForConditionalGeneration

        reference = LlavaOnevisionForConditionalGeneration.from_pretrained(
            local_copy(config.path, tracking_uri), dtype=torch.float32, local_files_only=True
        )
        model = _convert(reference, config)
    else:
        model = VisorForConditionalGeneration.from_pretrained(
            local_copy(config.path, tracking_uri), dtype=torch.float32, local_files_only=True
        )
        model = _replan(model, config)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def _convert(reference, config: ModelConfig) -> VisorForConditionalGeneration:
    """``from_llava_onevision`` with the plan, variant and token reduction ``config`` asks for."""
    plan = requested_plan(config, reference.config.text_config.num_hidden_layers)
    return VisorForConditionalGeneration.from_llava_onevision(reference, plan=plan, **variant_fields(config))


def variant_fields(config: ModelConfig) -> dict[str, object]:
    """The ``VisorConfig`` fields ``config`` sets (``cross_attention``, ``token_reduction``); an unset one is left
    out, so a new model takes ``VisorConfig``'s default."""
    return {name: value for name in ("cross_attention", "token_reduction")
            if (value := getattr(config, name)) is not None}


def _replan(model: VisorForConditionalGeneration, config: ModelConfig) -> VisorForConditionalGeneration:
    """``model`` with the plan / variant / token reduction ``config`` asks for; only a full-attention model
    can change its plan or variant (it is LLaVA-OneVision, so it goes through the conversion path)."""
    plan = requested_plan(config, model.plan.num_layers)
    replan = (plan is not None and plan != model.plan) or (
        config.cross_attention is not None and config.cross_attention != model.config.cross_attention)
    if replan:
        if not model.is_full_attention:
            raise ValueError(
                f"model.path {config.path}: a VISOR model with plan {model.config.plan} cannot change its plan or "
                "cross-attention variant (its layers were trained for that plan); only a full-attention model "
                "can be converted to another plan"
            )
        token_reduction = config.token_reduction or model.config.token_reduction
        return _convert(model.to_llava_onevision(), config.model_copy(update={"token_reduction": token_reduction}))
    if config.token_reduction is not None:
        model.config.token_reduction = config.token_reduction  # pooling has no weights: any model can change it
    return model


def widen_attention_init(model: VisorForConditionalGeneration, std: float) -> None:
    """Re-initialise every decoder layer's query and key projection weights from ``N(0, std²)``."""
    with torch.no_grad():
        for layer in model.language_model.layers:
            for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                projection.weight.normal_(0.0, std)


def freeze(model: nn.Module, groups: list[str]) -> int:
    """Freeze the named parameter groups and the policy head (trained by its own job); returns the
    number of trainable parameters left."""
    prefixes = tuple(p for g in groups for p in FREEZABLE[g]) + ("policy.",)
    trainable = 0
    for name, param in model.named_parameters():
        param.requires_grad_(not name.startswith(prefixes))
        trainable += param.numel() if param.requires_grad else 0
    if trainable == 0:
        raise ValueError(f"freeze {groups}: no trainable parameters left")
    return trainable
