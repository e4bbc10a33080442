"""``visor data ...``: data tools (synthetic benchmark shards, packing real datasets into shards, inspecting a
shard set), configured like every job (:mod:`jobs.data.config`)."""

from __future__ import annotations

import json

import typer

from jobs.cli.options import INPUT_ERRORS, VERBOSE, JobCommand, job_command, usage_errors
from jobs.data.config import InspectConfig, PackConfig, SynthConfig

data_app = typer.Typer(help="Data tools: synthetic VQA shards, packing your own data, shard statistics.",
                       no_args_is_help=True)
JSON = typer.Option(False, "--json", help="Print one JSON object (for scripts and CI).")

SYNTH = JobCommand(SynthConfig, ("out", "train", "eval", "policy", "detail", "shard_size", "seed"))
PACK = JobCommand(PackConfig, ("out", "image_root", "answers_field", "metric", "data_source", "image_format",
                               "shard_size", "max_shard_bytes", "prefix", "max_image_pixels", "cpus"),
                  arguments=("source",))
INSPECT = JobCommand(InspectConfig, ("processor", "read.max_length", "read.max_image_pixels", "render",
                                     "render_count", "report"), arguments=("spec",))


@job_command(data_app, "synth", SYNTH, under=("data",))
def synth(config: SynthConfig) -> None:
    """Write deterministic synthetic fine-grained VQA shards (coarse / fine questions): train-*.tar,
    eval-*.tar, policy-*.tar and detail-*.tar splits, tokenizer/, processor/ and manifest.json."""
    from jobs.data.run import synth as run_synth

    result = run_synth(config)
    typer.echo(json.dumps(result.samples))
    typer.echo(f"wrote {result.out}")


@job_command(data_app, "pack", PACK, under=("data",))
def pack(config: PackConfig, as_json: bool = JSON, verbose: bool = VERBOSE) -> None:
    """Pack real VLM data into WebDataset shards (Ray Data job, deterministic); rows that cannot be packed are
    skipped, counted by reason and listed in OUT/pack_quarantine.jsonl."""
    from jobs.console import job_console
    from jobs.data.run import pack as run_pack

    with usage_errors("SOURCE", INPUT_ERRORS), job_console("pack", verbose) as console:
        with console.stage("pack", unit="rows") as stage:
            result = run_pack(config, progress=lambda rows, skipped: stage.update(rows, f"{skipped} skipped"))
            stage.close(f"{result.packed} packed into {len(result.shards)} shards, "
                        f"{sum(result.skipped.values())} skipped")
    if as_json:
        typer.echo(result.model_dump_json())
        return
    typer.echo(f"rows {result.rows}: {result.packed} packed, {sum(result.skipped.values())} skipped")
    for reason, count in result.skipped.items():
        typer.echo(f"  skipped {reason}: {count}")
    typer.echo(f"wrote {len(result.shards)} shards to {result.out} (skipped rows: {result.out}/pack_quarantine.jsonl)")
    typer.echo(f"data version {result.data_version}")


@job_command(data_app, "inspect", INSPECT, under=("data",))
def inspect(config: InspectConfig, as_json: bool = JSON, verbose: bool = VERBOSE) -> None:
    """Sample count, question types, token and tile distributions, bad samples by reason, data version."""
    from jobs.console import job_console
    from jobs.data.run import inspect as run_inspect

    with usage_errors("SPEC", INPUT_ERRORS), job_console("inspect", verbose):
        stats = run_inspect(config)
    if as_json:
        typer.echo(stats.model_dump_json())
        return
    typer.echo(f"data version {stats.data_version} — {stats.shards} shards")
    typer.echo(f"samples {stats.samples}: {stats.valid} valid, {sum(stats.quarantined.values())} quarantined")
    for reason, count in stats.quarantined.items():
        typer.echo(f"  quarantined {reason}: {count}")
    typer.echo(f"question types: {stats.question_types}")
    typer.echo(f"tokens: {stats.tokens}")
    typer.echo(f"tiles per sample: {stats.tiles}")
    if stats.metrics:
        typer.echo(f"benchmarks: {stats.benchmarks}; metrics: {stats.metrics}")
    for path in stats.rendered:
        typer.echo(f"rendered {path}")
