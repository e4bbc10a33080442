"""``visor data ...``: data tools (synthetic benchmark shards, packing real datasets into shards, inspecting a
shard set), configured like every job (:mod:`jobs.data.config`)."""

from __future__ import annotations

import json
from pathlib import Path

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


@job_command(data_app, "synth", SYNTH)
def synth(config: SynthConfig) -> None:
    """Write deterministic synthetic fine-grained VQA shards (coarse / counting / fine questions): train-*.tar,
    eval-*.tar, policy-*.tar and detail-*.tar splits, tokenizer/, processor/ and manifest.json."""
    from pipelines.synth import write_synth

    manifest = write_synth(Path(config.out), config.train, config.eval, config.shard_size, config.seed,
                           config.policy, config.detail)
    typer.echo(json.dumps({split: info["samples"] for split, info in manifest["splits"].items()}))
    typer.echo(f"wrote {config.out}")


@job_command(data_app, "pack", PACK)
def pack(config: PackConfig, as_json: bool = JSON, verbose: bool = VERBOSE) -> None:
    """Pack real VLM data into WebDataset shards (Ray Data job, deterministic); rows that cannot be packed are
    skipped, counted by reason and listed in OUT/pack_quarantine.jsonl."""
    from jobs.console import job_console
    from jobs.ray_env import init_ray
    from pipelines.pack import pack as run_pack

    with usage_errors():
        options = config.pack_options()
    with usage_errors("SOURCE", INPUT_ERRORS), job_console("pack", verbose) as console:
        init_ray()
        with console.stage("pack", unit="rows") as stage:
            summary = run_pack(config.source, config.out, options,
                               progress=lambda rows, skipped: stage.update(rows, f"{skipped} skipped"))
            stage.close(f"{summary['packed']} packed into {len(summary['shards'])} shards, "
                        f"{sum(summary['skipped'].values())} skipped")

    if as_json:
        typer.echo(json.dumps(summary))
        return
    typer.echo(f"rows {summary['rows']}: {summary['packed']} packed, {sum(summary['skipped'].values())} skipped")
    for reason, count in summary["skipped"].items():
        typer.echo(f"  skipped {reason}: {count}")
    typer.echo(f"wrote {len(summary['shards'])} shards to {summary['out']} (skipped rows: "
               f"{summary['out']}/pack_quarantine.jsonl)")
    typer.echo(f"data version {summary['data_version']}")


@job_command(data_app, "inspect", INSPECT)
def inspect(config: InspectConfig, as_json: bool = JSON, verbose: bool = VERBOSE) -> None:
    """Sample count, question types, token and tile distributions, bad samples by reason, data version."""
    from jobs.console import job_console
    from jobs.ray_env import init_ray
    from pipelines.inspect import inspect_shards, render_samples
    from pipelines.shards import ShardSet
    from visor_model.processing import VisorProcessor

    with usage_errors("SPEC", INPUT_ERRORS):
        shards = ShardSet.resolve(config.spec)
    source = config.processor or shards.processor_dir()
    if source is None:
        raise typer.BadParameter("no processor/ next to the shards; pass --processor DIR", param_hint="--processor")
    try:
        loaded = VisorProcessor.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise typer.BadParameter(f"cannot load a processor from {source}: {err}", param_hint="--processor") from err
    options = config.read.read_options()
    with usage_errors("SPEC", INPUT_ERRORS), job_console("inspect", verbose):
        init_ray()
        stats = inspect_shards(shards, loaded, options, report_path=config.report and Path(config.report))
        rendered = (render_samples(shards, loaded, Path(config.render), config.render_count, options)
                    if config.render else [])
    if as_json:
        typer.echo(json.dumps(stats))
        return
    typer.echo(f"data version {stats['data_version']} — {stats['shards']} shards")
    typer.echo(f"samples {stats['samples']}: {stats['valid']} valid, {sum(stats['quarantined'].values())} quarantined")
    for reason, count in stats["quarantined"].items():
        typer.echo(f"  quarantined {reason}: {count}")
    typer.echo(f"question types: {stats['question_types']}")
    typer.echo(f"tokens: {stats['tokens']}")
    typer.echo(f"tiles per sample: {stats['tiles']}")
    if stats["metrics"]:
        typer.echo(f"benchmarks: {stats['benchmarks']}; metrics: {stats['metrics']}")
    for path in rendered:
        typer.echo(f"rendered {path}")
