"""Work the model no longer does: the skipped visual update of a budget's last S layer, and the decode cache of a
batch of different image sizes — before and after, in one run.

    .venv/bin/python bench/bench_model_work.py [--preset llava-ov-0.5b] [--layers N] [--decode-tokens 16]
                                               [--before-ref REF] [--write docs/BENCHMARKS.md]
    .venv/bin/python bench/bench_model_work.py --smoke     # the tiny model, seconds

Random weights of the preset's shape (float32, batch as stated), the visual features given (the vision tower
is not what changed):

* **Skipped visual update** — prefill of one 1000×1000 image (7,371 visual tokens at 0.5B) at every budget,
  with the last S layer run as its text side only (``LayerPlan.run_modes``: what the model runs now) and as
  the full S layer (``LayerPlan.modes``: what it ran before), with the analytic language-model FLOPs of each;
  the logits' largest difference is reported too.
* **Cache of a mixed batch** — a 384×384 and a 1000×1000 image (1,485 and 7,371 visual tokens) in one batch
  at budget 1: cache bytes batched against the sum of each row alone, and the batch's decode tokens/s. The
  *before* column is this same measurement run by the code of ``--before-ref`` (a temporary ``git worktree``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_data import add_shape_arguments, provenance, publish  # noqa: E402
from bench_speed import build, inputs_for, timed  # noqa: E402

SECTION = "## Work the model no longer does (`bench/bench_model_work.py`)"
BEFORE_REF = "e843930"  # the last commit before the text-side-only S layer and the padding-free cache


@torch.no_grad()
def skipped_update(visor, processor, side: int, repeats: int) -> list[dict]:
    """Per budget: prefill seconds and language FLOPs as run now and with the full last S layer."""
    from visor_model.flops import _modes_flops
    from visor_model.plan import LayerPlan

    inputs = inputs_for(processor, side)
    features = visor.image_features(inputs["pixel_values"], inputs["image_sizes"])
    visual, text = features[0][0].shape[0], int((inputs["input_ids"] != visor.config.image_token_id).sum())
    plan, rows = visor.plan, []
    run_modes = LayerPlan.run_modes

    def full_s_layer(budget: int):
        LayerPlan.run_modes = LayerPlan.modes  # the full S layer, as the model ran it before
        try:
            return visor(**inputs, budget=budget, image_features=features)
        finally:
            LayerPlan.run_modes = run_modes

    for budget in range(plan.num_budgets):
        now_s = full_s = float("inf")
        for _ in range(repeats):  # interleaved, the best of each kept: load drifts hit both alike
            seconds, now = timed(lambda b=budget: visor(**inputs, budget=b, image_features=features), 1)
            now_s = min(now_s, seconds)
            seconds, full = timed(lambda b=budget: full_s_layer(b), 1)
            full_s = min(full_s, seconds)
        rows.append({
            "budget": budget, "now_s": now_s, "full_s": full_s,
            "now_flops": _modes_flops(visor.config, plan.run_modes(budget), visual, text),
            "full_flops": _modes_flops(visor.config, plan.modes(budget), visual, text),
            "max_logit_diff": float((now.logits - full.logits).abs()[full.text_mask].max()),
            "visual_tokens": visual,
        })
    return rows


@torch.no_grad()
def mixed_batch(visor, processor, sides: list[int], budget: int, decode_tokens: int, repeats: int) -> dict:
    """Cache bytes of one batch of images of different sizes against each row alone; the batch's decode rate."""
    from PIL import Image

    def prompts(images):
        processor.tokenizer.padding_side = "left"
        text = [processor.prompt("what colour is the small square ?")] * len(images)
        inputs = dict(processor(text=text, images=images, return_tensors="pt", padding=True))
        inputs.pop("batch_num_images", None)
        return inputs

    def generate(inputs, tokens):
        # the code of --before-ref predates image_features= and ignores it (its vision tower then runs in every
        # call): the decode rate is the time past the one-token call, and the bytes do not depend on it
        features = visor.image_features(inputs["pixel_values"], inputs["image_sizes"])
        return timed(lambda: visor.generate(**inputs, budget=budget, max_new_tokens=tokens, eos_token_id=[],
                                            return_dict_in_generate=True, image_features=features), repeats)

    images = [Image.fromarray(inputs_for_array(side)) for side in sides]
    batch = prompts(images)
    first_s, first = generate(batch, 1)
    total_s, _ = generate(batch, decode_tokens + 1)
    alone = [generate(prompts([image]), 1)[1].cache_bytes for image in images]
    return {"sides": sides, "budget": budget, "visual_tokens": first.num_visual_tokens.tolist(),
            "batched_bytes": first.cache_bytes, "alone_bytes": alone,
            "decode_tok_s": len(sides) * decode_tokens / max(total_s - first_s, 1e-9)}


def inputs_for_array(side: int):
    import numpy as np

    return np.random.default_rng(side).integers(0, 255, (side, side, 3), dtype=np.uint8)


def before(ref: str, args: argparse.Namespace) -> dict:
    """The mixed-batch measurement run by the code of ``ref`` (a temporary worktree), in a subprocess."""
    folder = Path(tempfile.mkdtemp(prefix="visor-bench-ref-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder / "tree"), ref], check=True,
                   capture_output=True)
    try:
        for name in ("bench_model_work.py", "bench_speed.py", "bench_data.py"):
            shutil.copy(ROOT / "bench" / name, folder / "tree" / "bench" / name)
        out = folder / "result.json"
        command = [sys.executable, str(folder / "tree" / "bench" / "bench_model_work.py"), "--mixed-only",
                   "--json-out", str(out), "--before-ref", "", "--decode-tokens", str(args.decode_tokens),
                   "--repeats", str(args.repeats), "--preset", args.preset]
        command += ["--smoke"] if args.smoke else ([] if args.layers is None else ["--layers", str(args.layers)])
        subprocess.run(command, check=True, cwd=folder / "tree", env={**os.environ, "PYTHONPATH": str(folder / "tree")})
        return json.loads(out.read_text())
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder / "tree")],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def markdown(result: dict, old: dict | None, args: argparse.Namespace, command: str) -> str:
    shape = "the tiny test model" if args.smoke else args.preset + (f", {args.layers} layers" if args.layers else "")
    side = result["side"]
    lines = [*provenance(SECTION, command),
             f"Load average (1 min) at the start and the end: {result['load'][0]:.1f} / {result['load'][1]:.1f} on "
             f"{os.cpu_count()} CPUs: above 1 the timings share the CPUs with other work; FLOPs and bytes are exact.",
             "",
             f"Random weights of {shape}'s shape, float32, visual features given. One {side}×{side} image "
             f"({result['skipped'][0]['visual_tokens']:,} visual tokens), batch 1: prefill at every budget with the "
             "last S layer as it runs now (text side only, `s`) and as the full S layer it was.", "",
             "| budget | language GFLOP (full S → now) | FLOPs saved | prefill s (full S → now) | time saved | "
             "max logit diff |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in result["skipped"]:
        lines.append(
            f"| {row['budget']} | {row['full_flops'] / 1e9:,.1f} → {row['now_flops'] / 1e9:,.1f} | "
            f"{1 - row['now_flops'] / row['full_flops']:.0%} | {row['full_s']:.2f} → {row['now_s']:.2f} | "
            f"{1 - row['now_s'] / row['full_s']:.0%} | {row['max_logit_diff']:.1e} |")
    mixed = result["mixed"]
    small, large = mixed["sides"]
    lines += ["", f"A batch of a {small}² and a {large}² image ({mixed['visual_tokens']} visual "
              f"tokens) at budget {mixed['budget']}, {args.decode_tokens} new tokens a row; *before* is commit "
              f"`{args.before_ref}` run by the same script first.", "",
              "| code | cache bytes batched | sum of rows alone | batched ÷ alone | decode tokens/s (batch) |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for label, run in (("before", old), ("now", mixed)):
        if run is not None:
            alone = sum(run["alone_bytes"])
            lines.append(f"| {label} | {run['batched_bytes'] / 2**20:,.1f} MiB | {alone / 2**20:,.1f} MiB | "
                         f"{run['batched_bytes'] / alone:.2f} | {run['decode_tok_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shape_arguments(parser, side=1000, repeats=2)  # --side: the prefill comparison's image
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--before-ref", default=BEFORE_REF, help="Also run the mixed batch at this commit ('': no).")
    parser.add_argument("--mixed-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--write", type=Path, help="Markdown file whose section is replaced.")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    old = before(args.before_ref, args) if args.before_ref else None
    _, visor, processor = build(args.preset, args.layers, args.smoke)
    sides = [48, 96] if args.smoke else [384, 1000]
    mixed = mixed_batch(visor, processor, sides, 1, args.decode_tokens, args.repeats)
    if args.json_out:
        args.json_out.write_text(json.dumps(mixed))
        return
    side = 64 if args.smoke else args.side
    result = {"skipped": skipped_update(visor, processor, side, args.repeats), "mixed": mixed, "side": side,
              "load": (load_at_start, os.getloadavg()[0])}
    command = " ".join(["python", "bench/bench_model_work.py", *sys.argv[1:]])
    publish(markdown(result, old, args, command), SECTION, args.write)


if __name__ == "__main__":
    main()
