"""Data-pipeline benchmark: preprocessing throughput with 1 and 2 CPUs, the share of training
step time spent waiting for data in the ``demo-tiny`` training config, and ``visor data pack``
throughput with 1 and 2 CPUs.

    .venv/bin/python bench/bench_data.py [--samples 1500] [--steps 300] [--pack-rows 2000]
                                         [--only pipeline|pack] [--write docs/BENCHMARKS.md]

Packing: a LLaVA JSON file of ``--pack-rows`` rows (the synthetic eval images as PNG files in an
image folder, one conversation each, every 10th row text-only), packed by
``pipelines.pack.pack`` (one CPU per packing task) in a fresh local Ray with N CPUs (a subprocess
each, Ray start excluded, the Ray Data job's start-up included); rows/s over the whole job.

Throughput: a fresh local Ray with ``--num-cpus`` N (a subprocess each), the
real read → validate → tile/tokenize path (``pipelines.dataset.build_split``, one
CPU per preprocessing task) over synthetic shards, every row pulled to the
driver. Reported: samples/s over the whole pass (Ray start excluded, pipeline
start-up included) and in steady state (after the first 20% of rows).

Data wait: ``visor train --config demo-tiny`` on the same shards (2 workers ×
0.5 CPU on local Ray); the job logs ``data_wait_fraction`` (time blocked on the
next batch / step time, summed over each logging interval) to MLflow, read back here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def throughput(data: Path, cpus: int) -> dict:
    """Runs in a subprocess: one pass over ``data``'s training shards with ``cpus`` CPUs."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from pipelines.dataset import build_split
    from pipelines.options import ReadOptions
    from visor_model.processing import VisorProcessor

    ray.init(num_cpus=cpus, include_dashboard=False, configure_logging=False, log_to_driver=False)
    processor = VisorProcessor.from_pretrained(data / "processor")
    split = build_split(str(data / "train-*.tar"), processor, ReadOptions(preprocess_batch_size=32, preprocess_cpus=1))
    start = time.perf_counter()
    stamps, lengths = [], []
    for batch in split.dataset.iter_batches(batch_size=32, batch_format="numpy"):
        stamps.append((time.perf_counter(), len(batch["key"])))
        lengths.extend(len(ids) for ids in batch["input_ids"])
    end = time.perf_counter()
    total = sum(n for _, n in stamps)
    cut, seen, cut_time = total * 0.2, 0, start
    for stamp, n in stamps:
        seen += n
        if seen >= cut:
            cut_time = stamp
            break
    ray.shutdown()
    return {"cpus": cpus, "samples": total, "seconds": end - start, "samples_per_s": total / (end - start),
            "steady_samples_per_s": (total - seen) / max(end - cut_time, 1e-9), "tokens": [min(lengths), max(lengths)]}


def llava_source(root: Path, rows: int) -> Path:
    """A LLaVA JSON file of ``rows`` rows under ``root`` with its image folder (``root/images``); returns the file."""
    from pipelines.synth import render_sample

    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(rows):
        sample = render_sample(0, "eval", i)
        record = {"id": f"r{i}", "conversations": [{"from": "human", "value": f"<image>\n{sample.question}"},
                                                   {"from": "gpt", "value": sample.answer}]}
        if i % 10:
            sample.image.save(images / f"{i:06d}.png")
            record["image"] = f"{i:06d}.png"
        else:
            record["conversations"][0]["value"] = sample.question
        records.append(record)
    path = root / "llava.json"
    path.write_text(json.dumps(records))
    return path


def pack_throughput(source: Path, cpus: int) -> dict:
    """Runs in a subprocess: ``visor data pack``'s job over ``source`` with ``cpus`` CPUs."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from pipelines.pack import PackOptions, pack

    ray.init(num_cpus=cpus, include_dashboard=False, configure_logging=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = pack([str(source)], out, PackOptions(image_root=str(source.parent / "images"), shard_size=500))
        seconds = time.perf_counter() - start
    ray.shutdown()
    return {"cpus": cpus, "rows": summary["rows"], "packed": summary["packed"], "shards": len(summary["shards"]),
            "seconds": seconds, "rows_per_s": summary["rows"] / seconds, "load_average": os.getloadavg()[0]}


def data_wait(data: Path, steps: int, workdir: Path) -> dict:
    """Train the demo-tiny config on ``data`` and read back its data-wait metrics."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    command = [
        str(Path(sys.executable).parent / "visor"), "train", "--config", "demo-tiny",
        "--set", f"data.train=['{data}/train-*.tar']",
        "--set", f"optim.max_steps={steps}", "--set", f"run.storage_path={workdir / 'runs'}",
        "--set", f"mlflow.tracking_uri={uri}", "--set", "mlflow.register_model=false",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=workdir, capture_output=True)
    wall = time.perf_counter() - started
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("visor-train").experiment_id])
    waits = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "data_wait_fraction"),
                                     key=lambda m: m.step)]
    speeds = [m.value for m in client.get_metric_history(run.info.run_id, "samples_per_s")]
    return {"steps": steps, "wall_seconds": wall, "wait_per_interval": waits,
            "mean_wait": sum(waits) / len(waits), "median_samples_per_s": sorted(speeds)[len(speeds) // 2]}


def synth_images() -> str:
    """The synthetic images' sizes, for the reports (``pipelines.synth.IMAGE_SIZES``)."""
    from pipelines.synth import IMAGE_SIZES

    return " or ".join(f"{width}×{height}" for width, height in IMAGE_SIZES) + " px"


def markdown(results: dict) -> str:
    low, high = results["throughput"][0]["tokens"]
    lines = [
        *provenance("## Data pipeline (`bench/bench_data.py`)", results["command"]),
        f"Synthetic shards: {results['samples']} training samples ({synth_images()} images, tiles of 32 px, "
        f"16 tokens a tile, {low}–{high} tokens a sample), `visor data synth --seed 0`.",
        "",
        "| CPUs for Ray | samples | whole pass (s) | samples/s (whole pass) | samples/s (steady state) |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results["throughput"]:
        lines.append(f"| {row['cpus']} | {row['samples']} | {row['seconds']:.1f} | {row['samples_per_s']:.0f} | "
                     f"{row['steady_samples_per_s']:.0f} |")
    wait = results["data_wait"]
    per = ", ".join(f"{w:.0%}" for w in wait["wait_per_interval"])
    crossing, inside = _by_epoch_boundary(wait, results["samples"])
    lines += [
        "",
        f"Training `demo-tiny` ({wait['steps']} steps, 2 workers × 0.5 CPU, batch 16 per worker): "
        f"**{wait['mean_wait']:.0%}** of step time waiting for data on average over the logging intervals "
        f"({per}); median {wait['median_samples_per_s']:.0f} samples/s; {wait['wall_seconds']:.0f} s for the "
        "whole job including Ray start-up and model registration.",
        "",
        f"Logging intervals that contain an epoch boundary wait {_mean(crossing):.0%} on average, the others "
        f"{_mean(inside):.0%}: within an epoch preprocessing keeps up; at each boundary Ray Data starts the "
        "pipeline again (new read and map tasks) and the workers wait a few seconds for the first batch. "
        "With real datasets an epoch is hours long and this start-up cost disappears; with the tiny demo "
        "data it dominates the average.",
        "",
    ]
    return "\n".join(lines)


def pack_markdown(results: dict) -> str:
    lines = [
        *provenance("## Packing your own data (`bench/bench_data.py`)", results["command"]),
        f"A LLaVA JSON file of {results['rows']} rows ({synth_images()} PNG images in an image folder, every 10th row "
        "text-only) packed by `visor data pack`'s job (`pipelines.pack.pack`: Ray Data reads, one CPU per packing "
        "task, shards of 500 written by Ray tasks); a fresh local Ray per row of the table, its start excluded.",
        "",
        "| CPUs for Ray | rows | packed | shards | whole job (s) | rows/s | machine load (1-min average) at the end |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results["pack"]:
        lines.append(f"| {row['cpus']} | {row['rows']} | {row['packed']} | {row['shards']} | {row['seconds']:.1f} | "
                     f"{row['rows_per_s']:.0f} | {row['load_average']:.1f} |")
    lines += ["", "A load average above the machine's CPU count means other processes shared the cores: the two "
              "rows then do not measure how packing scales with CPUs."]
    return "\n".join([*lines, ""])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _by_epoch_boundary(wait: dict, samples: int) -> tuple[list[float], list[float]]:
    """Data-wait fractions of the logging intervals that contain an epoch boundary, and of the others."""
    per_step = 2 * 16  # demo-tiny: 2 workers x batch 16
    every = wait["steps"] // len(wait["wait_per_interval"])
    crossing, inside = [], []
    for i, value in enumerate(wait["wait_per_interval"]):
        first, last = i * every * per_step, (i + 1) * every * per_step  # samples consumed before/after
        (crossing if i == 0 or last // samples != first // samples else inside).append(value)
    return crossing, inside


def provenance(heading: str, command: str) -> list[str]:
    """The first lines of a benchmark section: heading, command, machine, date."""
    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
               f"{platform.platform(terse=True)}")
    return [heading, "", f"Command: `{command}`  ", f"Machine: {machine}  ", f"Date: {time.strftime('%Y-%m-%d')}", ""]


def add_shape_arguments(parser: argparse.ArgumentParser, side: int, repeats: int | None = None) -> None:
    """The arguments of the benchmarks that build random-weight models: ``--preset``, ``--layers``, ``--side``
    (a square image's side), ``--smoke`` (the tiny model) and, given a default, ``--repeats``."""
    from visor_model.presets import PRESETS

    parser.add_argument("--preset", default=PRESETS[0], choices=PRESETS)
    parser.add_argument("--layers", type=int, help="Fewer decoder layers (stated in the report).")
    parser.add_argument("--side", type=int, default=side, help="Square image side (px).")
    parser.add_argument("--smoke", action="store_true", help="The tiny test model, small images: seconds.")
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats,
                            help="Repetitions of each timed call (the best is kept).")


def publish(section: str, heading: str, path: Path | None) -> None:
    """Print ``section`` and, with ``path``, replace its part of that Markdown file."""
    print(section)
    if path:
        write_section(path, section, heading)


def write_section(path: Path, section: str, heading: str = "## Data pipeline") -> None:
    """Replace (or append) the section of ``path`` that starts with ``heading``."""
    header = "# Benchmarks\n\nEvery number here comes from a command in `bench/`, run on the machine stated.\n\n"
    text = path.read_text() if path.exists() else header
    section = section.rstrip("\n") + "\n\n"
    start = text.find(heading)
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(re.sub(r"\n+(?=## )", "\n\n", text).rstrip("\n") + "\n")  # one blank line between sections


def _worker(flag: str, path: Path, cpus: int) -> dict:
    out = subprocess.run([sys.executable, __file__, flag, str(path), str(cpus)], check=True, capture_output=True,
                         text=True, cwd=ROOT)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--pack-rows", type=int, default=2000)
    parser.add_argument("--only", choices=("pipeline", "pack"), help="Run one part (default: both).")
    parser.add_argument("--write", type=Path, help="Markdown file whose data-pipeline section is replaced.")
    parser.add_argument("--throughput-worker", nargs=2, metavar=("DATA", "CPUS"), help=argparse.SUPPRESS)
    parser.add_argument("--pack-worker", nargs=2, metavar=("SOURCE", "CPUS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.throughput_worker:
        print(json.dumps(throughput(Path(args.throughput_worker[0]), int(args.throughput_worker[1]))))
        return
    if args.pack_worker:
        print(json.dumps(pack_throughput(Path(args.pack_worker[0]), int(args.pack_worker[1]))))
        return
    command = " ".join(["python", "bench/bench_data.py", *sys.argv[1:]])

    from pipelines.synth import write_synth

    with tempfile.TemporaryDirectory() as tmp:
        if args.only != "pack":
            data = Path(tmp) / "data"
            write_synth(data, args.samples, 60, 250, seed=0)
            rows = [_worker("--throughput-worker", data, cpus) for cpus in (1, 2)]
            wait = data_wait(data, args.steps, Path(tmp))
            print(wait, flush=True)
            results = {"command": command, "samples": args.samples, "throughput": rows, "data_wait": wait}
            publish(markdown(results), "## Data pipeline", args.write)
        if args.only != "pipeline":
            source = llava_source(Path(tmp) / "llava", args.pack_rows)
            packed = [_worker("--pack-worker", source, cpus) for cpus in (1, 2)]
            results = {"command": command, "rows": args.pack_rows, "pack": packed}
            publish(pack_markdown(results), "## Packing your own data", args.write)


if __name__ == "__main__":
    main()
