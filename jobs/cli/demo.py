"""``visor demo``: the whole local pipeline (what ``make demo`` runs)."""

from __future__ import annotations

import typer

from jobs.cli.options import VERBOSE

commands = typer.Typer()


@commands.command()
def demo(verbose: bool = VERBOSE) -> None:
    """The whole local pipeline on synthetic data (what `make demo` runs), then a summary."""
    from jobs.console import job_console
    from jobs.demo.pipeline_demo import run_demo

    with job_console("demo", verbose):
        summary = run_demo()
    typer.echo(summary)
