"""Collated batches of synthetic samples for job tests that run a model without Ray Data."""

from __future__ import annotations

import torch

from pipelines.dataset import Collator, object_column
from pipelines.synth import render_sample
from visor_model.processing import VisorProcessor


def fixed_batch(processor: VisorProcessor, n: int = 8, split: str = "train", seed: int = 0) -> dict[str, torch.Tensor]:
    """Samples ``0..n-1`` of ``split`` as one question-answer turn each, collated (right padding) like training."""
    rows = []
    for i in range(n):
        sample = render_sample(seed, split, i)
        example = processor.build_example(sample.image, sample.question, sample.answer)
        rows.append({k: v[0].numpy() for k, v in example.items()})
    batch = {name: object_column([r[name] for r in rows]) for name in ("input_ids", "labels", "pixel_values",
                                                                      "image_sizes")}
    return Collator(processor.tokenizer.pad_token_id)(batch)
