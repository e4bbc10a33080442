"""Converting a local LLaVA-OneVision checkpoint into a VISOR model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visor_model import LayerPlan, VisorForConditionalGeneration

PROCESSOR_FILE_PREFIXES = (
    "tokenizer", "processor", "preprocessor", "chat_template", "special_tokens", "vocab", "merges", "added_tokens",
)


def convert_checkpoint(
    llava_path: Path, out: Path, full_attention: bool, **visor_fields: Any
) -> tuple[VisorForConditionalGeneration, bool]:
    """Convert (``visor_fields``: ``VisorConfig`` fields such as ``cross_attention``, ``token_reduction``; the others
    keep their defaults), save to ``out`` with the checkpoint's processor files; returns the model and whether any
    were copied."""
    plan = None
    if full_attention:
        from transformers import AutoConfig

        plan = LayerPlan.full_attention(AutoConfig.from_pretrained(llava_path).text_config.num_hidden_layers)
    model = VisorForConditionalGeneration.from_llava_onevision(llava_path, plan=plan, **visor_fields)
    model.save_pretrained(out)
    return model, copy_processor(llava_path, out)


def copy_processor(source: Path, target: Path) -> bool:
    """Copy a checkpoint's processor/tokenizer files next to a converted model; True if any were found."""
    names = [p for p in Path(source).iterdir() if p.name.startswith(PROCESSOR_FILE_PREFIXES)]
    for path in names:
        (Path(target) / path.name).write_bytes(path.read_bytes())
    return bool(names)
