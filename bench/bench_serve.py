"""Serving benchmark: a bounded load test of ``visor serve`` on 127.0.0.1.

    .venv/bin/python bench/bench_serve.py [--requests 200] [--clients 16] [--write docs/BENCHMARKS.md]

Builds a small trained model the same way the tests do (synthetic shards, a
tiny VISOR model trained in-process, registered as ``champion`` in a temporary
MLflow store), starts the Serve app on a free port, and sends ``--requests``
chat completions (an image and a question each, budgets cycling ``auto``, 0, 1,
greedy, 3 new tokens) from ``--clients`` concurrent clients. Reports errors,
p50/p95 latency, throughput and the batch sizes the replica formed.
"""

from __future__ import annotations

import argparse
import os
import socket
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

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synth(root / "data", 0, 0, 1, seed=0)
        model, processor = _train_briefly(root / "data")
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
        bodies = [{"messages": user_messages(question, images[i % 16]), "max_tokens": 3, "temperature": 0,
                   "visor_budget": ["auto", 0, 1][i % 3]} for i in range(requests)]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as http:
            http.post("/v1/chat/completions", json=bodies[0])  # warm-up

            def one(body: dict) -> tuple[int, float]:
                started = time.perf_counter()
                status = http.post("/v1/chat/completions", json=body).status_code
                return status, time.perf_counter() - started

            before = http.get("/admin/stats").json()
            started = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                results = list(pool.map(one, bodies))
            wall = time.perf_counter() - started
            after = http.get("/admin/stats").json()
        serve.shutdown()
    latencies = np.array([t for _, t in results])
    sizes = {k: v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
    return {"requests": requests, "clients": clients, "errors": sum(s != 200 for s, _ in results),
            "p50": float(np.percentile(latencies, 50)), "p95": float(np.percentile(latencies, 95)),
            "throughput": requests / wall, "wall": wall, "max_batch_size": max_batch_size,
            "batch_sizes": {k: v for k, v in sorted(sizes.items(), key=lambda kv: int(kv[0])) if v}}


def markdown(result: dict, command: str) -> str:
    batches = sum(result["batch_sizes"].values())
    mean = sum(int(k) * v for k, v in result["batch_sizes"].items()) / max(batches, 1)
    return "\n".join([
        *provenance(SECTION, command),
        f"{result['requests']} chat completions (one 64–96 px image and a question each, budgets cycling "
        f"auto/0/1, greedy, 3 new tokens) from {result['clients']} concurrent clients against one replica of the "
        f"tiny model (`max_batch_size` {result['max_batch_size']}), all on 127.0.0.1:",
        "",
        "| errors | p50 latency (ms) | p95 latency (ms) | throughput (requests/s) | mean batch size |",
        "| ---: | ---: | ---: | ---: | ---: |",
        f"| {result['errors']} | {result['p50'] * 1e3:.0f} | {result['p95'] * 1e3:.0f} | "
        f"{result['throughput']:.1f} | {mean:.1f} |",
        "",
        f"Batch sizes the replica formed (size: batches): {result['batch_sizes']}. Each batch is one `generate` "
        "call with a per-sample budget tensor.",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--write", type=Path, help="Markdown file whose serving section is replaced.")
    args = parser.parse_args()
    result = load_test(args.requests, args.clients, args.max_batch_size)
    publish(markdown(result, " ".join(["python", "bench/bench_serve.py", *sys.argv[1:]])), SECTION, args.write)


if __name__ == "__main__":
    main()
