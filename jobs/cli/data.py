"""``visor data ...``: data tools (synthetic benchmark shards, packing real datasets into shards, inspecting a
shard set)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from jobs.cli.options import INPUT_ERRORS, VERBOSE, load, option, usage_errors
from jobs.sections import PackSection, ReadSection

data_app = typer.Typer(help="Data tools: synthetic VQA shards, packing your own data, shard statistics.",
                       no_args_is_help=True)


@data_app.command()
def synth(
    out: Path = typer.Option(..., help="Directory for the shards, tokenizer/, processor/ and manifest.json."),
    train: int = typer.Option(3000, min=0, help="Number of training samples."),
    eval: int = typer.Option(300, "--eval", min=0, help="Number of evaluation samples."),
    policy: int = typer.Option(0, min=0, help="Number of held-out samples for the policy job (policy-*.tar)."),
    detail: int = typer.Option(0, min=0, help="Number of training samples asking only the fine question "
                               "(detail-*.tar, a recipe's first stage)."),
    shard_size: int = typer.Option(1000, min=1, help="Samples per shard."),
    seed: int = typer.Option(0, help="Random seed; the same seed writes byte-identical shards."),
) -> None:
    """Write deterministic synthetic fine-grained VQA shards (coarse / counting / fine questions): train-*.tar,
    eval-*.tar, policy-*.tar and detail-*.tar splits, tokenizer/, processor/ and manifest.json."""
    from pipelines.synth import write_synth

    manifest = write_synth(out, train, eval, shard_size, seed, policy, detail)
    typer.echo(json.dumps({split: info["samples"] for split, info in manifest["splits"].items()}))
    typer.echo(f"wrote {out}")


@data_app.command()
def pack(
    source: list[str] = typer.Argument(..., help="LLaVA JSON / JSON lines / parquet files, directories or globs, "
                                       "local or s3://…"),
    out: str = typer.Option(..., help="Directory (or s3://bucket/prefix) for the shards."),
    image_root: str | None = option(PackSection, "image_root"),
    answers_field: str | None = option(PackSection, "answers_field"),
    metric: str | None = option(PackSection, "metric"),
    data_source: str | None = option(PackSection, "data_source"),
    image_format: str = option(PackSection, "image_format"),
    shard_size: int = option(PackSection, "shard_size"),
    max_shard_bytes: int = option(PackSection, "max_shard_bytes"),
    prefix: str = option(PackSection, "prefix"),
    max_image_pixels: int = option(PackSection, "max_image_pixels"),
    cpus: float = option(PackSection, "cpus"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (for scripts and CI)."),
    verbose: bool = VERBOSE,
) -> None:
    """Pack real VLM data into WebDataset shards (Ray Data job, deterministic); rows that cannot be packed are
    skipped, counted by reason and listed in OUT/pack_quarantine.jsonl."""
    from jobs.console import job_console
    from jobs.ray_env import init_ray
    from pipelines.pack import pack as run_pack

    settings = {"image_root": image_root, "answers_field": answers_field, "metric": metric,
                "data_source": data_source, "image_format": image_format, "shard_size": shard_size,
                "max_shard_bytes": max_shard_bytes, "prefix": prefix, "max_image_pixels": max_image_pixels,
                "cpus": cpus}
    section = load(PackSection, {k: v for k, v in settings.items() if v is not None})
    with usage_errors():
        options = section.pack_options()
    with usage_errors("SOURCE", INPUT_ERRORS), job_console("pack", verbose) as console:
        init_ray()
        with console.stage("pack", unit="rows") as stage:
            summary = run_pack(source, out, options,
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


@data_app.command()
def inspect(
    spec: list[str] = typer.Argument(..., help="Shard spec(s): file, directory, glob, brace pattern or s3://…"),
    processor: Path | None = typer.Option(None, help="Saved VisorProcessor (default: SPEC/processor)."),
    max_length: int = option(ReadSection, "max_length"),
    max_image_pixels: int = option(ReadSection, "max_image_pixels"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (for scripts and CI)."),
    render: Path | None = typer.Option(None, help="Draw a few samples with their tiles to PNGs in this directory."),
    render_count: int = typer.Option(4, min=1, help="How many samples --render draws."),
    report: Path | None = typer.Option(None, help="Write the quarantine report (JSON lines) here."),
    verbose: bool = VERBOSE,
) -> None:
    """Sample count, question types, token and tile distributions, bad samples by reason, data version."""
    from jobs.console import job_console
    from jobs.ray_env import init_ray
    from pipelines.inspect import inspect_shards, render_samples
    from pipelines.shards import ShardSet
    from visor_model.processing import VisorProcessor

    with usage_errors("SPEC", INPUT_ERRORS):
        shards = ShardSet.resolve(spec)
    source = processor or shards.processor_dir()
    if source is None:
        raise typer.BadParameter("no processor/ next to the shards; pass --processor DIR", param_hint="--processor")
    try:
        loaded = VisorProcessor.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise typer.BadParameter(f"cannot load a processor from {source}: {err}", param_hint="--processor") from err
    options = load(ReadSection, {"max_length": max_length, "max_image_pixels": max_image_pixels}).read_options()
    with usage_errors("SPEC", INPUT_ERRORS), job_console("inspect", verbose):
        init_ray()
        stats = inspect_shards(shards, loaded, options, report_path=report)
        rendered = render_samples(shards, loaded, render, render_count, options) if render else []
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
