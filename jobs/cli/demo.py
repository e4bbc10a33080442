"""``visor demo``: the whole local pipeline (what ``make demo`` runs)."""

from __future__ import annotations

import typer

commands = typer.Typer()


@commands.command()
def demo() -> None:
    """The whole local pipeline on synthetic data (what `make demo` runs), then a summary."""
    from jobs.demo.pipeline_demo import run_demo

    typer.echo(run_demo())
