"""Learning curves of a miniature recipe, in one process: measure them before committing a recipe to the benchmark.

    .venv/bin/python bench/learning_curves.py --stages detail:400,train:300 --save /tmp/fa       # full attention
    .venv/bin/python bench/learning_curves.py --init /tmp/fa --plan default \\
        --stages detail:150:largest,train:250:uniform --lr 1e-3                                   # VISOR from it
    .venv/bin/python bench/learning_curves.py --init /tmp/fa --reduction 2 --stages train:300 --lr 1e-3  # 2x2 pooling

The model, optimizer and step are the training job's (``jobs.train.model_setup.build_model``, ``make_optimizer``,
``optimizer_step``, ``budgets_for_step``), the samples are :mod:`pipelines.synth`'s, tokenized by the processor the
data job writes — but without Ray, shards or MLflow, so a curve costs seconds a hundred steps (``--pool N``: cycle
through N samples per split, as shards of N samples do). Every ``--stages``
item is ``split:steps[:strategy]`` (``detail`` asks the fine questions, ``train`` every question; fresh samples every
step; the optimizer and its warm-up + cosine schedule restart per stage). Every ``--every`` steps it prints one JSON
line: the step's loss per budget and, per budget, the accuracy of the first answer token on held-out samples of
each question (``coarse``, ``top``, ``bottom``; single-token answers, so this is the exact-match accuracy).
Not bit-reproducible across machines; docs/BENCHMARKS.md records the curves that shaped the ``bench-quality`` recipe.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from jobs.train.config import ModelConfig, OptimConfig, TinyShape
from jobs.train.model_setup import build_model, freeze
from jobs.train.steps import budgets_for_step, make_optimizer, optimizer_step
from pipelines.dataset import Collator, object_column
from pipelines.synth import OVERVIEW_RESAMPLE, TRAINING_TURNS, png_bytes, render_sample, vocabulary
from pipelines.validate import parse_sample
from visor_model.presets import tiny_config, tiny_processor, word_tokenizer
from visor_model.processing import VisorProcessor

BATCH = 32
HELD_OUT = 120  # samples per question
MAX_PIXELS = 1 << 20


def encode(processor: VisorProcessor, sample, kinds: tuple[str, ...]) -> dict[str, np.ndarray]:
    """One training example of ``sample`` asking the questions ``kinds``, as the data job makes it from a shard's
    members (``parse_sample``, then ``build_chat``)."""
    record = json.dumps(sample.record(kinds)).encode()
    parsed = parse_sample(png_bytes(sample.image), record, MAX_PIXELS)
    example = processor.build_chat(parsed.image, parsed.turns, 256)
    return {name: example[name][0].numpy() for name in ("input_ids", "labels", "pixel_values", "image_sizes")}


def collate(collator: Collator, examples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """A training batch of ``examples``, through the columns the data job hands the collator."""
    batch = collator({name: object_column([e[name] for e in examples]) for name in examples[0]})
    return {k: batch[k] for k in ("input_ids", "labels", "pixel_values", "image_sizes", "attention_mask") if k in batch}


def first_token_accuracy(model, batches: list[dict[str, torch.Tensor]], budget: int) -> float:
    """Share of rows whose first labelled token is the argmax of the logits at the token before it (the logits
    cover the text stream; ``text_index`` maps its columns to ``input_ids`` positions)."""
    correct = total = 0
    with torch.no_grad():
        for batch in batches:
            out = model(**{k: v for k, v in batch.items() if k != "labels"}, budget=budget)
            labels = batch["labels"]
            for row in range(len(labels)):
                first = int((labels[row] != -100).nonzero()[0])
                column = int((out.text_index[row] == first - 1).nonzero()[0])
                correct += int(out.logits[row, column].argmax() == labels[row, first])
                total += 1
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", required=True, help="split:steps[:strategy],... (strategy default: --strategy)")
    parser.add_argument("--strategy", default="largest", choices=["largest", "uniform", "sandwich"])
    parser.add_argument("--init", help="a saved model directory to start from (default: a new tiny model)")
    parser.add_argument("--plan", choices=["default", "full_attention"], help="re-plan (a full-attention --init)")
    parser.add_argument("--reduction", type=int, choices=[1, 2], help="token reduction")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--rope-theta", type=float, default=1e4)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--pool", type=int, help="draw training samples from this many per split, as shards hold "
                        "(default: fresh samples every step)")
    parser.add_argument("--save", help="write the final model here (a --init for the next curve)")
    args = parser.parse_args()

    tokenizer = word_tokenizer(vocabulary())
    processor = tiny_processor(tokenizer, tiny_config(len(tokenizer)), resample=OVERVIEW_RESAMPLE)
    collator = Collator(tokenizer.pad_token_id)
    variant = {"cross_attention": "gated"} if args.plan == "default" else {}
    if args.init:
        config = ModelConfig(init="visor", path=args.init, plan=args.plan, token_reduction=args.reduction, **variant)
    else:
        shape = TinyShape(num_layers=args.layers, hidden_size=args.hidden, attention_init_std=0.2, vision="patches",
                          rope_theta=args.rope_theta)
        config = ModelConfig(init="tiny", tiny=shape, plan=args.plan or "full_attention",
                             token_reduction=args.reduction, **variant)
    model = build_model(config, len(tokenizer), args.seed)
    freeze(model, ["vision_tower"])
    held_out = [render_sample(args.seed + 100, "eval", i) for i in range(HELD_OUT)]
    evaluation = {kind: [collate(collator, [encode(processor, s, (kind,)) for s in held_out[i : i + 40]])
                         for i in range(0, HELD_OUT, 40)] for kind in TRAINING_TURNS}
    step, started = 0, time.perf_counter()
    for stage in args.stages.split(","):
        split, steps, *strategy = stage.split(":")
        optim = OptimConfig(lr=args.lr, weight_decay=0.01, warmup_steps=min(50, int(steps) // 10),
                            max_steps=int(steps), grad_clip=1.0)
        optimizer, scheduler = make_optimizer(model, optim)
        for index in range(int(steps)):
            drawn = [index * BATCH + i for i in range(BATCH)]
            samples = [render_sample(args.seed, split, n % args.pool if args.pool else n) for n in drawn]
            batch = collate(collator, [encode(processor, s, s.turns_for(split)) for s in samples])
            budgets = budgets_for_step(strategy[0] if strategy else args.strategy, model.plan.num_budgets,
                                       args.seed, step)
            result = optimizer_step(model, [batch], budgets, optimizer, scheduler, optim.grad_clip)
            step += 1
            if (index + 1) % args.every == 0 or index + 1 == int(steps):
                model.eval()
                accuracy = {b: {kind: round(first_token_accuracy(model, batches, b), 3)
                                for kind, batches in evaluation.items()} for b in range(model.plan.num_budgets)}
                print(json.dumps({"stage": split, "step": index + 1, "loss": result.losses, "accuracy": accuracy,
                                  "minutes": round((time.perf_counter() - started) / 60, 1)}), flush=True)
    if args.save:
        model.save_pretrained(args.save)
        processor.save_pretrained(args.save)


if __name__ == "__main__":
    main()
