"""``visor data ...``: data tools (synthetic benchmark shards)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

data_app = typer.Typer(help="Data tools: synthetic VQA shards.", no_args_is_help=True)


@data_app.command()
def synth(
    out: Path = typer.Option(..., help="Directory for the shards, tokenizer/ and manifest.json."),
    train: int = typer.Option(3000, min=0, help="Number of training samples."),
    eval: int = typer.Option(300, "--eval", min=0, help="Number of evaluation samples."),
    shard_size: int = typer.Option(1000, min=1, help="Samples per shard."),
    seed: int = typer.Option(0, help="Random seed; the same seed writes byte-identical shards."),
) -> None:
    """Write deterministic synthetic fine-grained VQA shards (coarse / counting / fine questions)."""
    from pipelines.synth import write_synth

    manifest = write_synth(out, train, eval, shard_size, seed)
    typer.echo(json.dumps({split: info["samples"] for split, info in manifest["splits"].items()}))
    typer.echo(f"wrote {out}")
