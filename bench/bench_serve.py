"""Serving benchmark: a bounded load test of ``visor serve`` on 127.0.0.1, against the static batcher.

    .venv/bin/python bench/bench_serve.py [--requests 200] [--clients 16] [--baseline-ref REF]
                                          [--write docs/BENCHMARKS.md]

Builds the tests' tiny VISOR model after one training step (nearly random weights, so sampled
answers are long; registered as ``champion`` in a temporary MLflow store), starts the Serve app
on a free port, and sends ``--requests`` chat completions (an image and a question each, budgets
cycling ``auto``, 0, 1) from ``--clients`` concurrent clients, in two settings: greedy with 3 new
tokens, and sampled (temperature 1, no seed, so a static batcher can group them) with up to 32 new
tokens streamed. Reports errors, p50/p95 time to first token (the first content chunk of a stream;
the whole answer otherwise), p50/p95 total latency and output tokens/s.

``--baseline-ref REF`` (default: the commit before continuous batching) also runs this same
benchmark against the code of ``REF`` — a temporary ``git worktree`` running a copy of this
script — first, and reports both side by side.

``--multi-turn`` measures the work a replica does once instead (issue 26), on a replica's engine in this
process (no HTTP: the model is large) with random weights of ``--preset``'s shape (three budgets):

* a conversation about one ``--side``² image, three questions in turn: each turn re-sends the image; time to
  first token of each (one new token) with the image-feature cache on, and the first turn with it off;
* ``auto`` against each fixed budget (the image's features cached, so only the language model's work differs):
  time to first token of one request.

    .venv/bin/python bench/bench_serve.py --multi-turn [--preset llava-ov-0.5b] [--side 768] [--write …]
    .venv/bin/python bench/bench_serve.py --multi-turn --smoke      # the tiny model, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_data import add_shape_arguments, provenance, publish, synth_images  # noqa: E402

SECTION = "## Serving (`bench/bench_serve.py`)"
STATIC_REF = "59955b4"  # the last commit with the static `@serve.batch` batcher
SETTINGS = {"3 tokens, greedy": {"max_tokens": 3, "temperature": 0},
            "32 tokens, sampled, streamed": {"max_tokens": 32, "temperature": 1.0, "stream": True,
                                             "stream_options": {"include_usage": True}}}


def one_request(http, body: dict) -> dict:
    """Status, time to first token, total latency and output tokens of one request."""
    started = time.perf_counter()
    if not body.get("stream"):
        response = http.post("/v1/chat/completions", json=body)
        elapsed = time.perf_counter() - started
        tokens = response.json()["usage"]["completion_tokens"] if response.status_code == 200 else 0
        return {"status": response.status_code, "ttft": elapsed, "total": elapsed, "tokens": tokens}
    first, tokens = None, 0
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
        status = response.status_code
    total = time.perf_counter() - started
    return {"status": status, "ttft": total if first is None else first, "total": total, "tokens": tokens}


def load_test(requests: int, clients: int, max_batch_size: int) -> dict:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import httpx
    import mlflow
    from ray import serve

    from jobs.ray_env import init_ray
    from jobs.registry.model_format import log_visor_model, save_model_dir
    from jobs.registry.tracking import register
    from jobs.serving.config import ServeConfig
    from jobs.serving.openai_protocol import user_messages
    from jobs.serving.serve import build_app
    from pipelines.synth import render_sample, write_synth
    from tests.jobs.conftest import _train_briefly  # the tests' small trained model, reused as is

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synth(root / "data", 0, 0, 1, seed=0)
        model, processor = _train_briefly(root / "data", steps=1)  # nearly random: long sampled answers
        uri = f"sqlite:///{root / 'mlflow.db'}"
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run():
            info = log_visor_model(save_model_dir(model, processor, root / "model"))
        register(uri, info.model_uri, "visor", "champion", {})
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        init_ray(num_cpus=os.cpu_count())
        config = ServeConfig(tracking_uri=uri, port=port, cpus_per_replica=1.0, max_batch_size=max_batch_size,
                             max_ongoing_requests=4 * max_batch_size)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(config), name="visor", route_prefix="/", blocking=False)
        images = [render_sample(0, "eval", i).image for i in range(16)]
        question = "what colour is the background ?"
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as http:
            for name, setting in SETTINGS.items():
                bodies = [{"messages": user_messages(question, images[i % 16]),
                           "visor_budget": ["auto", 0, 1][i % 3], **setting} for i in range(requests)]
                one_request(http, bodies[0])  # warm-up
                started = time.perf_counter()
                with ThreadPoolExecutor(clients) as pool:
                    done = list(pool.map(lambda body: one_request(http, body), bodies))
                wall = time.perf_counter() - started
                ttft, total = (np.array([d[key] for d in done]) for key in ("ttft", "total"))
                results[name] = {
                    "errors": sum(d["status"] != 200 for d in done), "wall": wall,
                    "ttft_p50": float(np.percentile(ttft, 50)), "ttft_p95": float(np.percentile(ttft, 95)),
                    "p50": float(np.percentile(total, 50)), "p95": float(np.percentile(total, 95)),
                    "tokens_per_s": sum(d["tokens"] for d in done) / wall,
                    "mean_tokens": sum(d["tokens"] for d in done) / requests,
                }
        serve.shutdown()
    return {"requests": requests, "clients": clients, "max_batch_size": max_batch_size, "settings": results}


TURNS = ("what colour is the square ?", "is the square red ?", "what is the square ?")
MULTI_TURN_SECTION = "## Serving: work done once (`bench/bench_serve.py --multi-turn`)"


def multi_turn(preset: str, layers: int | None, side: int, smoke: bool) -> dict:
    """Seconds to the first token of each turn of a three-question chat about one image (cache on; the first turn
    also with it off), and of one ``auto`` request against each fixed budget (cache off)."""
    import torch
    from bench_scoring import build
    from PIL import Image

    from jobs.serving.engine import Engine
    from jobs.serving.image_cache import ImageFeatureCache
    from jobs.serving.openai_protocol import image_data_url
    from jobs.serving.serve import Loaded
    from tests.jobs.serving.test_work_once import ask

    model, processor = build(preset, layers, smoke)
    loaded = Loaded(model, processor, "visor", "bench")
    image = Image.fromarray(np.random.default_rng(side).integers(0, 255, (side, side, 3), dtype=np.uint8))
    url = image_data_url(image)

    def timed_turn(engine, messages: list[dict], budget) -> tuple[float, str, int]:
        """Seconds to the first token, the answer and the budget the request ran."""
        body = {"messages": messages, "max_tokens": 1, "temperature": 0, "visor_budget": budget}
        started = time.perf_counter()
        job = ask(engine, loaded, body)
        return time.perf_counter() - started, job.choices[0].text, job.visor.budget

    def user(question: str, with_image: bool = True) -> dict:
        image_part = [{"type": "image_url", "image_url": {"url": url}}] if with_image else []
        return {"role": "user", "content": [*image_part, {"type": "text", "text": question}]}

    off = Engine(8, 8, image_cache=ImageFeatureCache(0))
    timed_turn(off, [user(TURNS[0])], 1)  # warm-up
    cold = timed_turn(off, [user(TURNS[0])], 1)[0]
    cached, conversation, turns = Engine(8, 8, image_cache=ImageFeatureCache(1 << 30)), [], []
    for question in TURNS:  # the client re-sends the whole chat each turn, the image in its first message
        conversation.append(user(question, not conversation))
        seconds, answer, _ = timed_turn(cached, conversation, 1)
        turns.append(seconds)
        conversation.append({"role": "assistant", "content": answer or "red"})
    # the image's features are cached by now: these differ only by the language model's work
    chat_cache = cached.snapshot()["image_cache"]
    budgets = {str(b): timed_turn(cached, [user(TURNS[0])], b)[0] for b in range(model.plan.num_budgets)}
    budgets["auto"], _, auto_budget = timed_turn(cached, [user(TURNS[0])], "auto")
    with torch.inference_mode():
        visual = model.image_features(*torch_inputs(processor, image))[0][0].shape[0]
    return {"turns": turns, "cold_first": cold, "budgets": budgets, "visual_tokens": visual,
            "cache": chat_cache, "auto_budget": auto_budget, "side": side,
            "shape": "the tiny test model" if smoke else preset + (f", {layers} layers" if layers else "")}


def torch_inputs(processor, image) -> tuple:
    """``pixel_values [1, tiles, 3, H, W]`` and ``image_sizes [1, 2]`` of one image."""
    out = processor(text=[processor.prompt("what ?")], images=[image], return_tensors="pt")
    return out["pixel_values"], out["image_sizes"]


def multi_turn_markdown(result: dict, command: str) -> str:
    turns, budgets = result["turns"], result["budgets"]
    lines = [
        *provenance(MULTI_TURN_SECTION, command),
        f"Random weights of {result['shape']}'s shape (three budgets), float32 on this CPU, one replica's engine in "
        f"process (no HTTP). One {result['side']}² image ({result['visual_tokens']:,} visual tokens); time to the "
        "first token (one new token, greedy) at budget 1.", "",
        "| turn | image-feature cache | seconds to first token | ÷ first turn |", "| --- | --- | ---: | ---: |",
        f"| 1 (cache off) | — | {result['cold_first']:.2f} | {result['cold_first'] / turns[0]:.2f} |",
    ]
    for i, seconds in enumerate(turns):
        lines.append(f"| {i + 1} | {'miss' if i == 0 else 'hit'} | {seconds:.2f} | {seconds / turns[0]:.2f} |")
    cache = result["cache"]
    lines += ["", f"Cache after the three turns: {cache['hits']} hits, {cache['misses']} miss, "
              f"{cache['bytes'] / 2**20:.1f} MiB held. Goal: a follow-up turn ≤ 10% of the first turn's time to "
              f"first token — turn 2 {turns[1] / turns[0]:.0%}, turn 3 {turns[2] / turns[0]:.0%} "
              f"({'met' if max(turns[1:]) <= 0.1 * turns[0] else 'NOT met'}).", "",
              "`auto` against fixed budgets (one request, the first question; the image's features cached, so only "
              "the language model's work differs):", "",
              "| budget | seconds to first token |", "| --- | ---: |"]
    lines += [f"| {name} | {seconds:.2f} |" for name, seconds in budgets.items()]
    chosen = budgets[str(result["auto_budget"])]
    lines += ["", f"`auto` chose budget {result['auto_budget']} (random policy weights) and cost "
              f"{budgets['auto']:.2f} s against {chosen:.2f} s for that budget given: one prefill, the policy "
              f"deciding inside it (goal: no more than the fixed budget plus the policy's few layers — "
              f"{'met' if budgets['auto'] <= 1.1 * chosen else 'NOT met'}, within 10% for timing noise)."]
    return "\n".join(lines) + "\n"


def baseline(ref: str, args: argparse.Namespace) -> dict:
    """This benchmark run against the code of ``ref`` (a temporary worktree), in a subprocess."""
    folder = Path(tempfile.mkdtemp(prefix="visor-bench-ref-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder / "tree"), ref], check=True,
                   capture_output=True)
    try:
        shutil.copy(__file__, folder / "tree" / "bench" / "bench_serve.py")
        out = folder / "result.json"
        subprocess.run([sys.executable, str(folder / "tree" / "bench" / "bench_serve.py"), "--requests",
                        str(args.requests), "--clients", str(args.clients), "--max-batch-size",
                        str(args.max_batch_size), "--json-out", str(out), "--baseline-ref", ""], check=True,
                       cwd=folder / "tree", env={**os.environ, "PYTHONPATH": str(folder / "tree")})  # Ray's workers too
        return json.loads(out.read_text())
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder / "tree")],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def markdown(result: dict, before: dict | None, ref: str, command: str) -> str:
    lines = [
        *provenance(SECTION, command),
        f"{result['requests']} chat completions per setting (one {synth_images()} image and a question each, budgets "
        f"cycling auto/0/1) from {result['clients']} concurrent clients against one replica of the tiny model "
        f"(nearly random weights, so sampled answers are long — see tokens per answer; `max_batch_size` "
        f"{result['max_batch_size']}), all on "
        "127.0.0.1. *Continuous* is this code (the decode "
        "loop of `jobs/serving/engine.py`); *static* is the `@serve.batch` batcher of commit "
        f"`{ref}`, run by the same script first. Time to first token (TTFT) is the first content chunk of a stream, "
        "the whole answer otherwise.",
        "",
        "| setting | batching | errors | TTFT p50 (ms) | TTFT p95 (ms) | latency p50 (ms) | latency p95 (ms) | "
        "output tokens/s | tokens per answer |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in SETTINGS:
        for label, run in (("static", before), ("continuous", result)):
            if run is None:
                continue
            r = run["settings"][name]
            lines.append(f"| {name} | {label} | {r['errors']} | {r['ttft_p50'] * 1e3:.0f} | {r['ttft_p95'] * 1e3:.0f} "
                         f"| {r['p50'] * 1e3:.0f} | {r['p95'] * 1e3:.0f} | {r['tokens_per_s']:.1f} | "
                         f"{r['mean_tokens']:.1f} |")
    if before is not None:
        streamed = "32 tokens, sampled, streamed"
        new, old = result["settings"][streamed], before["settings"][streamed]
        ratio = old["ttft_p50"] / new["ttft_p50"]
        lines += ["", f"Goals at 32 streamed tokens: p50 time to first token {ratio:.1f}x lower than the static "
                  f"batcher's (target ≥ 3x: {'met' if ratio >= 3 else 'NOT met'}); output tokens/s "
                  f"{new['tokens_per_s']:.1f} vs {old['tokens_per_s']:.1f} (target: no lower — "
                  f"{'met' if new['tokens_per_s'] >= old['tokens_per_s'] else 'NOT met'}); errors "
                  f"{sum(r['errors'] for r in result['settings'].values())} (target 0)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--baseline-ref", default=STATIC_REF, help="Also run against this commit ('' for none).")
    parser.add_argument("--json-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--write", type=Path, help="Markdown file whose serving section is replaced.")
    parser.add_argument("--multi-turn", action="store_true", help="The work-done-once scenarios (module docstring).")
    add_shape_arguments(parser, side=768)  # --multi-turn's model and image
    args = parser.parse_args()
    if args.multi_turn:
        result = multi_turn(args.preset, args.layers, 64 if args.smoke else args.side, args.smoke)
        command = " ".join(["python", "bench/bench_serve.py", *sys.argv[1:]])
        publish(multi_turn_markdown(result, command), MULTI_TURN_SECTION, args.write)
        return
    before = baseline(args.baseline_ref, args) if args.baseline_ref else None
    result = load_test(args.requests, args.clients, args.max_batch_size)
    if args.json_out:
        args.json_out.write_text(json.dumps(result))
        return
    command = " ".join(["python", "bench/bench_serve.py", *sys.argv[1:]])
    publish(markdown(result, before, args.baseline_ref, command), SECTION, args.write)


if __name__ == "__main__":
    main()
