"""``visor retrain``: the retrain job (:mod:`jobs.retrain`)."""

from __future__ import annotations

import typer

from jobs.cli.options import VERBOSE, JobCommand, job_command, usage_errors
from jobs.retrain.config import RetrainConfig

commands = typer.Typer()

RETRAIN = JobCommand(RetrainConfig, ("warm_start", "lock_dir"))


@job_command(commands, "retrain", RETRAIN)
def retrain(config: RetrainConfig, verbose: bool = VERBOSE) -> None:
    """Train → policy → evaluate → promote when the training data changed; skip otherwise."""
    from jobs.console import job_console
    from jobs.retrain.retrain import AlreadyRunning, run_retrain

    try:
        with usage_errors("--config/--set"), job_console("retrain", verbose):
            outcome = run_retrain(config)
    except AlreadyRunning as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(3) from err
    typer.echo(f"{outcome.status}: {outcome.reason} (data version {outcome.data_version}; champion "
               f"{outcome.champion or '-'})")
