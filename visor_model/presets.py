"""Model shapes: tiny random models for tests and the demo, and real LLaVA-OneVision sizes.

* :func:`llava_ov_config` — the LLaVA-OneVision-0.5B / -7B shapes (SigLIP-so400m
  at 384 px / patch 14 with 26 layers, Qwen2-0.5B / -7B, the anyres_max_9 grid),
  used for FLOPs tables, benchmarks and GPU configs. Building the config
  allocates nothing; weights come from a checkpoint.
* :func:`tiny_config`, :func:`word_tokenizer`, :func:`tiny_processor` — a model
  with a few thousand parameters per layer and a word-level tokenizer with a
  Qwen-style chat template, for tests and CPU demos trained from scratch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, SiglipVisionConfig
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)

from .config import VisorConfig
from .processing import IMAGE_TOKEN, VisorProcessor

TEXT_SHAPES: dict[str, dict[str, Any]] = {  # the Qwen2 language model of each LLaVA-OneVision size
    "llava-ov-0.5b": dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
    ),
    "llava-ov-7b": dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
    ),
}
PRESETS = tuple(TEXT_SHAPES)  # the preset names, smallest first (the command line's default)

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<unk>", IMAGE_TOKEN, "<|im_start|>", "<|im_end|>"]
BASE_WORDS = ["user", "assistant", "system", "\n"]


def _grid_pinpoints(tile: int, max_side: int) -> list[list[int]]:
    return [[tile * i, tile * j] for i in range(1, max_side + 1) for j in range(1, max_side + 1)]


def llava_ov_config(preset: str, **visor_fields: Any) -> VisorConfig:
    """The LLaVA-OneVision ``preset`` (one of :data:`PRESETS`) as a ``VisorConfig``."""
    if preset not in TEXT_SHAPES:
        raise ValueError(f"unknown preset {preset!r}; choose one of {list(PRESETS)}")
    text = Qwen2Config(
        **TEXT_SHAPES[preset],
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    )
    vision = SiglipVisionConfig(
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
        image_size=384, patch_size=14, vision_use_head=False,
    )
    return VisorConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=151646,
        image_grid_pinpoints=_grid_pinpoints(384, 6),
        tie_word_embeddings=TEXT_SHAPES[preset]["tie_word_embeddings"],
        **visor_fields,
    )


TINY_VISION = ("transformer", "patches")
"""Vision towers of :func:`tiny_config`: ``transformer`` (SigLIP, 2 layers attending across the tile's patches)
or ``patches`` (the patch embedding alone: no attention across patches, no position; see
:func:`drop_vision_positions`)."""


def tiny_config(vocab_size: int, image_token_id: int = 2, vision: str = "transformer", rope_theta: float = 1e6,
                **visor_fields: Any) -> VisorConfig:
    """A tiny random VISOR model: SigLIP 32 px tiles / patch 8 (16 tokens a tile), Qwen2 hidden 64, 6 layers.

    The rotary base defaults to Qwen2-0.5B's (``rope_theta`` 1e6), not ``Qwen2Config``'s default 1e4: with
    16-dim heads, 1e4 leaves fewer rotary frequencies slow enough for a text token to match a visual token's
    content a hundred positions away; 1e4 in turn has more that tell neighbouring positions apart, which relating
    visual tokens by where they are needs (the quality benchmark's recipe uses it; docs/BENCHMARKS.md).

    ``vision="patches"`` makes the visual tokens the tower's patch embeddings (``vision_feature_layer`` -2 of a
    one-layer tower, i.e. the input of its only layer — ``transformers``' SigLIP reports no hidden states with
    zero layers, so that layer runs and is not read): each token sees its own 8x8 patch and nothing else, so
    relating visual tokens is left to the language model. Call :func:`drop_vision_positions` on the model and
    keep the tower frozen, or the position embedding tells every token where it is.

    ``visor_fields`` may override the text depth via ``num_layers`` and any
    ``VisorConfig`` field (``plan``, ``cross_attention``, ``token_reduction``, ...).
    """
    if vision not in TINY_VISION:
        raise ValueError(f"vision must be one of {TINY_VISION}, got {vision!r}")
    num_layers = visor_fields.pop("num_layers", 6)
    hidden = visor_fields.pop("hidden_size", 64)
    text = Qwen2Config(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=4096, pad_token_id=0,
        eos_token_id=4, bos_token_id=3, rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
    )
    patches = vision == "patches"
    tower = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1 if patches else 2, num_attention_heads=2,
        image_size=32, patch_size=8, vision_use_head=False,
    )
    return VisorConfig(
        vision_config=tower, text_config=text, image_token_index=image_token_id,
        image_grid_pinpoints=_grid_pinpoints(32, 3), vision_feature_layer=-2 if patches else -1, **visor_fields,
    )


def drop_vision_positions(model: torch.nn.Module) -> None:
    """Zero the vision tower's position embedding (a ``vision="patches"`` tiny model): a visual token then
    carries what its patch shows and nothing of where it is — the language model's rotary positions are the
    only place order exists. Train with the ``vision_tower`` group frozen so it stays zero."""
    with torch.no_grad():
        model.model.vision_tower.embeddings.position_embedding.weight.zero_()


def word_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``words`` with the special tokens and chat template VISOR uses.

    Ids: ``<pad>``=0, ``<unk>``=1, ``<image>``=2, ``<|im_start|>``=3, ``<|im_end|>``=4
    (the EOS), then the chat words, then ``words`` (sorted, de-duplicated).
    Splits on whitespace and punctuation; newlines are tokens of their own.
    """
    vocab = list(dict.fromkeys(SPECIAL_TOKENS + BASE_WORDS + sorted(set(words) - set(BASE_WORDS))))
    model = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", "isolated"), pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    model.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=model,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_processor(tokenizer: PreTrainedTokenizerFast, config: VisorConfig,
                   resample: int | None = None) -> VisorProcessor:
    """The processor matching :func:`tiny_config` (tile size and anyres grid taken from ``config``); ``resample``
    (a ``PIL.Image.Resampling``) replaces the image processor's bicubic resizing (the synthetic data's processor
    uses nearest-neighbour, :mod:`pipelines.synth`)."""
    tile = config.vision_config.image_size
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": tile, "width": tile},
        crop_size={"height": tile, "width": tile},
        image_grid_pinpoints=config.image_grid_pinpoints,
        **({"resample": resample} if resample is not None else {}),
    )
    return VisorProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=(tile // config.vision_config.patch_size) ** 2,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        chat_template=CHAT_TEMPLATE,
    )
