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
from bench_data import provenance, publish  # noqa: E402

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

    from jobs.cluster.ray_env import init_ray
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
        f"{result['requests']} chat completions per setting (one 64–96 px image and a question each, budgets cycling "
        f"auto/0/1) from {result['clients']} concurrent clients against one replica of the tiny model "
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
    args = parser.parse_args()
    before = baseline(args.baseline_ref, args) if args.baseline_ref else None
    result = load_test(args.requests, args.clients, args.max_batch_size)
    if args.json_out:
        args.json_out.write_text(json.dumps(result))
        return
    command = " ".join(["python", "bench/bench_serve.py", *sys.argv[1:]])
    publish(markdown(result, before, args.baseline_ref, command), SECTION, args.write)


if __name__ == "__main__":
    main()
