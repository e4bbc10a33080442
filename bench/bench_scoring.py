"""Scoring throughput (the batch inference behind ``train-policy`` and ``evaluate``) before/after the vision tower
runs once per batch, in one run.

    .venv/bin/python bench/bench_scoring.py [--preset llava-ov-0.5b] [--layers N] [--side 768] [--samples 2]
                                            [--before-ref REF] [--write docs/BENCHMARKS.md]
    .venv/bin/python bench/bench_scoring.py --smoke     # the tiny model, seconds

Random weights of the preset's shape with a three-budget plan (``LayerPlan.default(L, 3)``), float32 on this CPU,
one collated batch of ``--samples`` random square images with a question and a one-word answer (labels), scored by
:func:`jobs.evaluation.scoring.score_batch` at every budget plus the policy's features. *Before* is the
``score_batch`` of ``--before-ref`` (its source read with ``git show``, run against today's model, which still
accepts its calls); *now* is this checkout's. Vision-tower runs are counted with a forward hook; both must give the
same losses (checked).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_data import add_shape_arguments, provenance, publish  # noqa: E402

SECTION = "## Scoring: the vision tower once per batch (`bench/bench_scoring.py`)"
BEFORE_REF = "8c10dc7"  # the last commit whose scoring ran the vision tower once per budget and once for the policy


def build(preset: str, layers: int | None, smoke: bool):
    """A three-budget VISOR model with random weights of ``preset``'s shape (or the tiny one) and a processor."""
    from visor_model import VisorForConditionalGeneration
    from visor_model.plan import LayerPlan
    from visor_model.presets import llava_ov_config, tiny_config, tiny_processor, word_tokenizer

    tokenizer = word_tokenizer("what colour is the square ? red".split())
    config = tiny_config(len(tokenizer)) if smoke else llava_ov_config(preset)
    if not smoke:
        config.image_token_index = 2  # the word tokenizer's <image>
        if layers:
            config.text_config.num_hidden_layers = layers
    config.plan = LayerPlan.default(config.text_config.num_hidden_layers, 3).to_dict()
    torch.manual_seed(0)
    model = VisorForConditionalGeneration(config).eval()
    return model, tiny_processor(tokenizer, model.config)


def scoring_batch(processor, side: int, samples: int) -> tuple[dict, np.ndarray]:
    """A collated batch of ``samples`` random ``side``² images with labels, and each sample's tile count."""
    from PIL import Image

    from pipelines.dataset import Collator, object_column

    rows = []
    for i in range(samples):
        image = Image.fromarray(np.random.default_rng(i).integers(0, 255, (side, side, 3), dtype=np.uint8))
        example = processor.build_example(image, "what colour is the square ?", "red")
        rows.append({k: v[0].numpy() for k, v in example.items()})
    batch = {name: object_column([r[name] for r in rows]) for name in ("input_ids", "labels", "pixel_values",
                                                                      "image_sizes")}
    return Collator(processor.tokenizer.pad_token_id)(batch), np.array([len(r["pixel_values"]) for r in rows])


def old_score_batch(ref: str):
    """``score_batch`` as the code of ``ref`` wrote it (a module built from ``git show``)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:jobs/evaluation/scoring.py"], check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"scoring_at_{ref}")
    sys.modules[module.__name__] = module  # its dataclasses look their module up
    exec(compile(source, f"{ref}:jobs/evaluation/scoring.py", "exec"), module.__dict__)  # noqa: S102 (our own code)
    return module.score_batch


def measure(score, model, batch: dict, tiles: np.ndarray, repeats: int) -> dict:
    """Best-of-``repeats`` seconds of ``score`` on ``batch``, its vision-tower runs and its losses."""
    calls = []
    handle = model.model.vision_tower.register_forward_hook(lambda *_: calls.append(1))
    best, scores = float("inf"), None
    try:
        for _ in range(repeats):
            calls.clear()
            started = time.perf_counter()
            scores = score(model, batch, tiles)
            best = min(best, time.perf_counter() - started)
    finally:
        handle.remove()
    size = len(tiles)
    return {"seconds": best, "samples_per_s": size / best, "tower_runs_per_batch": len(calls), "loss": scores["loss"]}


def markdown(runs: dict, args: argparse.Namespace, command: str, visual: int) -> str:
    shape = "the tiny test model" if args.smoke else args.preset + (f", {args.layers} layers" if args.layers else "")
    before, now = runs["before"], runs["now"]
    lines = [*provenance(SECTION, command),
             f"Random weights of {shape}'s shape, three budgets, float32 on the CPU, {torch.get_num_threads()} "
             f"threads; one batch of {args.samples} random {args.side}² images ({visual:,} visual tokens each) "
             f"with labels, every budget scored plus the policy's features, best of {args.repeats}. *Before* is "
             f"`score_batch` of commit `{args.before_ref}`; the losses are equal (largest difference "
             f"{float(np.abs(before['loss'] - now['loss']).max()):.1e}).", "",
             "| code | vision-tower runs per batch | seconds per batch | samples/s | speed-up |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for label, run in (("before", before), ("now", now)):
        lines.append(f"| {label} | {run['tower_runs_per_batch']} | {run['seconds']:.2f} | "
                     f"{run['samples_per_s']:.3f} | {run['samples_per_s'] / before['samples_per_s']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from jobs.evaluation.scoring import score_batch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shape_arguments(parser, side=768, repeats=1)
    parser.add_argument("--samples", type=int, default=2, help="Samples in the batch.")
    parser.add_argument("--before-ref", default=BEFORE_REF, help="The commit whose score_batch is 'before'.")
    parser.add_argument("--write", type=Path, help="Markdown file whose section is replaced.")
    args = parser.parse_args()
    if args.smoke:
        args.side, args.samples, args.repeats = 64, 8, max(args.repeats, 3)
    model, processor = build(args.preset, args.layers, args.smoke)
    batch, tiles = scoring_batch(processor, args.side, args.samples)
    with torch.inference_mode():
        visual = model.image_features(batch["pixel_values"][:1], batch["image_sizes"][:1])[0][0].shape[0]
        runs = {"before": measure(old_score_batch(args.before_ref), model, batch, tiles, args.repeats),
                "now": measure(score_batch, model, batch, tiles, args.repeats)}
    if not np.allclose(runs["before"]["loss"], runs["now"]["loss"], rtol=1e-4, atol=1e-5):
        raise SystemExit(f"the losses differ: {runs['before']['loss']} vs {runs['now']['loss']}")
    command = " ".join(["python", "bench/bench_scoring.py", *sys.argv[1:]])
    publish(markdown(runs, args, command, visual), SECTION, args.write)


if __name__ == "__main__":
    main()
