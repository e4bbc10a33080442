"""Efficiency benchmark: VISOR against transformers' LLaVA-OneVision on the same random weights and inputs.

    .venv/bin/python bench/bench_speed.py [--preset llava-ov-0.5b] [--sizes 384 768 1000] [--layers N]
                                          [--decode-tokens 32] [--write docs/BENCHMARKS.md]
    .venv/bin/python bench/bench_speed.py --smoke       # a tiny model, seconds (what the test suite runs)

For each image size: the vision tower + projector time (once; the same for every
configuration), then, **with the visual features given**, the language-model prefill
(time to first token without the vision tower) of ``LlavaOnevisionForConditionalGeneration``
and of VISOR at every budget, decode tokens/s, KV-cache bytes (measured) against the
analytic count, and the peak resident-memory growth during the call. The speed-up of
each budget is compared with its analytic language-model FLOPs ratio (the *ratio of
ratios*: 1.0 means every saved FLOP is saved time). Float32, one thread pool, batch 1.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_data import provenance, publish  # noqa: E402

SECTION = "## Speed: VISOR vs LLaVA-OneVision (`bench/bench_speed.py`)"
QUESTION = "what colour is the small square ?"


class PeakMemory:
    """Peak growth of this process's resident memory while the block runs (sampled every 5 ms)."""

    def __enter__(self) -> PeakMemory:
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()

    @property
    def grown_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def build(preset: str, layers: int | None, smoke: bool):
    """The reference LLaVA-OneVision (random weights), VISOR converted from it, and a processor."""
    from transformers import LlavaOnevisionForConditionalGeneration

    from visor_model import VisorForConditionalGeneration
    from visor_model.plan import LayerPlan
    from visor_model.presets import llava_ov_config, tiny_config, tiny_processor, word_tokenizer

    tokenizer = word_tokenizer(QUESTION.split())
    if smoke:
        config = tiny_config(len(tokenizer))
    else:
        config = llava_ov_config(preset)
        config.image_token_index = 2  # the word tokenizer's <image>
        if layers:
            config.text_config.num_hidden_layers = layers
            config.plan = LayerPlan.default(layers).to_dict()
    torch.manual_seed(0)
    reference = LlavaOnevisionForConditionalGeneration(config.to_llava_onevision_config()).eval()
    visor = VisorForConditionalGeneration.from_llava_onevision(reference, plan=config.layer_plan,
                                                              cross_attention="joint")
    return reference, visor, tiny_processor(tokenizer, visor.config)


def inputs_for(processor, side: int) -> dict:
    rng = np.random.default_rng(side)
    from PIL import Image

    image = Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
    inputs = dict(processor(text=[processor.prompt(QUESTION)], images=[image], return_tensors="pt"))
    inputs.pop("batch_num_images", None)
    return inputs


def timed(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


@torch.no_grad()
def reference_runs(reference, inputs: dict, features: list, decode_tokens: int, repeats: int) -> dict:
    """LLaVA-OneVision's language model with the visual features given: prefill, decode, KV bytes."""
    model = reference.model
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    mask = (inputs["input_ids"] == reference.config.image_token_id)[..., None]
    embeds = embeds.masked_scatter(mask.expand_as(embeds), torch.cat(features).to(embeds.dtype))

    def prefill():
        out = model.language_model(inputs_embeds=embeds, use_cache=True)
        return out, reference.lm_head(out.last_hidden_state[:, -1:])

    with PeakMemory() as memory:
        seconds, (out, logits) = timed(prefill, repeats)
    cache = out.past_key_values
    kv_bytes = sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel()
                   * layer.values.element_size() for layer in cache.layers)
    started = time.perf_counter()
    for _ in range(decode_tokens):
        token = logits.argmax(-1)
        out = model.language_model(inputs_embeds=model.get_input_embeddings()(token), past_key_values=cache,
                                   use_cache=True)
        logits = reference.lm_head(out.last_hidden_state[:, -1:])
    decode = time.perf_counter() - started
    return {"prefill_s": seconds, "decode_tok_s": decode_tokens / decode, "kv_bytes": kv_bytes,
            "peak_mb": memory.grown_mb}


@torch.no_grad()
def visor_runs(visor, inputs: dict, features: tuple, budget: int, decode_tokens: int, repeats: int) -> dict:
    """VISOR at ``budget`` with the visual features given: prefill (forward), KV cache after prefill
    (a one-token generate), decode rate (the extra time of ``decode_tokens`` more tokens; each call the best
    of ``repeats``, so one slow prefill does not enter the rate)."""
    def generate(tokens: int):
        return visor.generate(**inputs, budget=budget, max_new_tokens=tokens, eos_token_id=[],
                              return_dict_in_generate=True, image_features=features)

    with PeakMemory() as memory:
        seconds, _ = timed(lambda: visor(**inputs, budget=budget, image_features=features), repeats)
    first_s, first = timed(lambda: generate(1), repeats)
    total_s, _ = timed(lambda: generate(decode_tokens + 1), repeats)
    return {"prefill_s": seconds, "decode_tok_s": decode_tokens / max(total_s - first_s, 1e-9),
            "kv_bytes": int(first.cache_entries[0]) * kv_bytes_per_entry(visor.config), "peak_mb": memory.grown_mb,
            "visual_tokens": int(first.num_visual_tokens[0]), "text_tokens": int(first.num_text_tokens[0])}


@torch.no_grad()
def text_floor(visor, inputs: dict, repeats: int) -> float:
    """Seconds of VISOR's language model on the prompt's text tokens alone (the image tokens removed): what
    every budget pays at batch 1 whatever the image — each weight read once for a few tokens."""
    ids = inputs["input_ids"][inputs["input_ids"] != visor.config.image_token_id][None]
    seconds, _ = timed(lambda: visor(input_ids=ids, attention_mask=torch.ones_like(ids)), repeats)
    return seconds


def kv_bytes_per_entry(config) -> int:
    """Bytes of one token's keys and values at one layer (float32)."""
    text = config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * text.num_key_value_heads * head_dim * 4


def analytic_kv_bytes(config, budget: int | None, nv: int, nt: int) -> int:
    """KV-cache bytes after prefill: LLaVA-OV stores every token at every layer; VISOR stores text at every
    layer and visual tokens only at C and S_b layers (float32)."""
    per_token = kv_bytes_per_entry(config)
    layers = config.text_config.num_hidden_layers
    if budget is None:
        return layers * (nv + nt) * per_token
    return (layers * nt + len(config.layer_plan.visual_layers(budget)) * nv) * per_token


def run(args) -> dict:
    from visor_model.flops import baseline_flops, visor_flops

    torch.set_num_threads(max(1, torch.get_num_threads()))
    reference, visor, processor = build(args.preset, args.layers, args.smoke)
    rows = []
    for side in args.sizes:
        inputs = inputs_for(processor, side)
        with torch.no_grad():
            vision_s, features = timed(partial(visor.image_features, inputs["pixel_values"], inputs["image_sizes"]), 1)
        base = reference_runs(reference, inputs, features[0], args.decode_tokens, args.repeats)
        tiles = int(inputs["pixel_values"].shape[1])
        budgets = [visor_runs(visor, inputs, features, b, args.decode_tokens, args.repeats)
                   for b in range(visor.plan.num_budgets)]
        nv, nt = budgets[0]["visual_tokens"], budgets[0]["text_tokens"]
        base_flops = baseline_flops(visor.config, nv, nt, tiles)
        base.update(name="LLaVA-OneVision", lm_flops=base_flops["language"],
                    kv_analytic=analytic_kv_bytes(visor.config, None, nv, nt))
        entry = {"side": side, "tiles": tiles, "visual_tokens": nv, "text_tokens": nt, "vision_s": vision_s,
                 "vision_flops": base_flops["vision"] + base_flops["projector"], "rows": [base],
                 "floor_s": text_floor(visor, inputs, args.repeats)}
        for b, row in enumerate(budgets):
            flops = visor_flops(visor.config, b, nv, nt, tiles)
            row.update(name=f"VISOR budget {b}", lm_flops=flops["language"],
                       kv_analytic=analytic_kv_bytes(visor.config, b, nv, nt))
            entry["rows"].append(row)
        for row in entry["rows"]:
            row["speedup"] = base["prefill_s"] / row["prefill_s"]
            row["flops_ratio"] = base["lm_flops"] / row["lm_flops"]
            row["ratio_of_ratios"] = row["speedup"] / row["flops_ratio"]
            row["end_to_end_s"] = vision_s + row["prefill_s"]
        rows.append(entry)
        print(markdown_block(entry), flush=True)
    text = visor.config.text_config
    return {"preset": "tiny (smoke)" if args.smoke else args.preset, "layers": text.num_hidden_layers,
            "plan": visor.plan.describe(), "sizes": rows, "threads": torch.get_num_threads(),
            "repeats": args.repeats, "reference_attention": reference.config.text_config._attn_implementation}


def markdown_block(entry: dict) -> str:
    lines = [
        f"**{entry['side']}×{entry['side']} image: {entry['tiles']} tiles, {entry['visual_tokens']:,} visual + "
        f"{entry['text_tokens']} text tokens.** Vision tower + projector: {entry['vision_s']:.2f} s "
        f"({entry['vision_flops'] / 1e12:.2f} TFLOP), the same for every row.",
        "",
        "| configuration | LM prefill (s) | LM speed-up | LM FLOPs ratio | ratio of ratios | end-to-end prefill (s) "
        "| decode (tokens/s) | KV cache (MB) | = analytic | peak RSS growth (MB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: | ---: |",
    ]
    for row in entry["rows"]:
        lines.append(
            f"| {row['name']} | {row['prefill_s']:.3f} | {row['speedup']:.2f}x | {row['flops_ratio']:.2f}x | "
            f"{row['ratio_of_ratios']:.2f} | {row['end_to_end_s']:.2f} | {row['decode_tok_s']:.1f} | "
            f"{row['kv_bytes'] / 2**20:.1f} | {'yes' if row['kv_bytes'] == row['kv_analytic'] else 'NO'} | "
            f"{row['peak_mb']:.0f} |")
    base = entry["rows"][0]
    lines += ["", f"The {entry['text_tokens']} text tokens alone (no image) through VISOR's language model: "
              f"{entry['floor_s']:.3f} s — the least any budget costs at batch 1, so the most budget 0 can gain here "
              f"is {base['prefill_s'] / entry['floor_s']:.0f}x."]
    return "\n".join(lines)


def markdown(result: dict, command: str) -> str:
    lines = [*provenance(SECTION, command),
             f"Shape: {result['preset']} with {result['layers']} decoder layers, random weights, float32, batch 1, "
             f"{result['threads']} threads, best of {result['repeats']} runs; joint cross-attention; the plan:", "",
             "```", result["plan"], "```", "",
             f"Attention: LLaVA-OneVision runs `transformers`' `{result['reference_attention']}` implementation "
             "(PyTorch SDPA, causal); VISOR runs PyTorch SDPA with no mask over the sequence — `is_causal` in T and "
             "S layers, one lower-right causal call per text segment in C layers (on a CPU that is a mask over the "
             "segment's text rows only; a GPU runs it as `causal_lower_right`) — see "
             "`visor_model/attention_layout.py`.",
             ""]
    for entry in result["sizes"]:
        lines += [markdown_block(entry), ""]
    lines.append("LM = the language model with the visual features given (the vision tower is timed once above). "
                 "Ratio of ratios = measured LM speed-up / analytic LM FLOPs ratio.")
    lines += ["", goals(result)]
    return "\n".join(lines) + "\n"


def goals(result: dict) -> str:
    """The targets, checked on the largest image measured."""
    entry = max(result["sizes"], key=lambda e: e["visual_tokens"])
    base, lowest, rest = entry["rows"][0], entry["rows"][1], entry["rows"][2:]
    floor = (lowest["end_to_end_s"] - entry["vision_s"]) / entry["vision_s"]
    exact = all(row["kv_bytes"] == row["kv_analytic"] for e in result["sizes"] for row in e["rows"])
    slower = [row["name"] for row in entry["rows"][1:] if row["decode_tok_s"] < base["decode_tok_s"]]
    worst = min(rest, key=lambda row: row["ratio_of_ratios"]) if rest else None
    memory = lowest["peak_mb"] / max(base["peak_mb"], 1e-9)

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines = [
        f"Targets at {entry['visual_tokens']:,} visual tokens:",
        f"* ratio of ratios at budget 0: {lowest['ratio_of_ratios']:.2f} (target ≥ 0.5: "
        f"{verdict(lowest['ratio_of_ratios'] >= 0.5)})"
        + (f"; at the other budgets at least {worst['ratio_of_ratios']:.2f} ({worst['name']}; target ≥ 0.8: "
           f"{verdict(worst['ratio_of_ratios'] >= 0.8)})" if worst else "") + ";",
        f"* language-model prefill at budget 0 {lowest['speedup']:.1f}x faster than LLaVA-OneVision's (target "
        f"≥ 150x: {verdict(lowest['speedup'] >= 150)}; the text-only floor above allows at most "
        f"{base['prefill_s'] / entry['floor_s']:.0f}x);",
        f"* peak memory growth of prefill at budget 0: {memory:.1%} of the baseline's (target ≤ 10%: "
        f"{verdict(memory <= 0.10)});",
        f"* end-to-end prefill {floor:.1%} above the vision-encoder floor (target ≤ 10%: {verdict(floor <= 0.10)}); "
        f"KV-cache bytes equal the analytic count in every row: {'yes' if exact else 'NO'};",
        "* " + (f"decode measured slower than the baseline's at {', '.join(slower)}."
                if slower else "decode is at least as fast as the baseline's at every budget."),
    ]
    return "\n".join(lines)


def main() -> None:
    from visor_model.presets import PRESETS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default=PRESETS[0], choices=PRESETS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[384, 768, 1000], help="Square image sides (px).")
    parser.add_argument("--layers", type=int, help="Fewer decoder layers (stated in the report).")
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="Repetitions of each timed call (the best is kept).")
    parser.add_argument("--smoke", action="store_true", help="Tiny model, one 64-px image: seconds.")
    parser.add_argument("--write", type=Path, help="Markdown file whose speed section is replaced.")
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.repeats = [64], 2
    result = run(args)
    publish(markdown(result, " ".join(["python", "bench/bench_speed.py", *sys.argv[1:]])), SECTION, args.write)


if __name__ == "__main__":
    main()
