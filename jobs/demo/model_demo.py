"""The model-level demo: one image question through a tiny random VISOR model at every budget.

The model is untrained, so its words are random; the point is the cost columns:
language-model FLOPs and KV-cache entries grow with the budget while the answer
path stays the same code.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from visor_model import VisorForConditionalGeneration, flops
from visor_model.presets import tiny_config, tiny_processor, word_tokenizer

DEMO_WORDS = ["what", "colour", "is", "the", "square", "?", "red", "green", "blue", "a", "small", "digit"]


def demo_image(seed: int) -> Image.Image:
    """A 90×60 image: a coloured background with a small square (3 tiles wide, 2 high)."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (90, 60), tuple(int(c) for c in rng.integers(0, 255, 3)))
    ImageDraw.Draw(image).rectangle([40, 20, 50, 30], fill=(255, 0, 0))
    return image


def run_model_demo(seed: int = 0, max_new_tokens: int = 8, **visor_fields: Any) -> str:
    """Return the demo's printed table (a string); ``visor_fields`` (``cross_attention``, …) set ``VisorConfig``
    fields, the others keep their defaults."""
    torch.manual_seed(seed)
    tokenizer = word_tokenizer(DEMO_WORDS)
    config = tiny_config(len(tokenizer), **visor_fields)
    model = VisorForConditionalGeneration(config).eval()
    processor = tiny_processor(tokenizer, config)
    inputs = dict(processor(text=[processor.prompt("what colour is the square ?")], images=[demo_image(seed)],
                            return_tensors="pt"))
    inputs.pop("batch_num_images", None)
    prompt_len = inputs["input_ids"].shape[1]
    tiles = int(inputs["pixel_values"].shape[1])  # one image: its tiles, base tile included
    base = None
    lines = [
        f"tiny VISOR model ({sum(p.numel() for p in model.parameters()):,} parameters, random weights), "
        f"{config.cross_attention} cross-attention",
        model.plan.describe(),
        "",
        "| budget | S layers | generated (untrained) | LLM MFLOP | saving vs LLaVA-OV | KV entries (visual) |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for budget in range(model.plan.num_budgets):
        result = model.generate(**inputs, budget=budget, max_new_tokens=max_new_tokens, return_dict_in_generate=True)
        nv, nt = int(result.num_visual_tokens[0]), int(result.num_text_tokens[0])
        cost = flops.visor_flops(config, budget, nv, nt, tiles)
        base = base or flops.baseline_flops(config, nv, nt, tiles)
        text = tokenizer.decode(result.sequences[0, prompt_len:], skip_special_tokens=True)
        lines.append(
            f"| {budget} | {list(model.plan.budgets[budget])} | {text!r} | {cost['language'] / 1e6:.2f} | "
            f"{base['language'] / cost['language']:.2f}x | {int(result.cache_entries[0])} "
            f"({int(result.cache_visual_entries[0])}) |"
        )
    lines.append(f"\n{nv} visual tokens, {nt} prompt text tokens; LLaVA-OV language model: "
                 f"{base['language'] / 1e6:.2f} MFLOP.")
    return "\n".join(lines)

