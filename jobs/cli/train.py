"""``visor train``: the training job (:mod:`jobs.train`)."""

from __future__ import annotations

import typer

from jobs.cli.options import VERBOSE, JobCommand, job_command, usage_errors
from jobs.train.config import TrainConfig

commands = typer.Typer()

TRAIN = JobCommand(TrainConfig, ("name", "seed"))


@job_command(commands, "train", TRAIN)
def train(config: TrainConfig, verbose: bool = VERBOSE) -> None:
    """Train the universal VISOR network over all budgets on Ray Train; log to MLflow; register a challenger."""
    from jobs.console import job_console
    from jobs.train.driver import run_training

    with usage_errors("--config/--set"), job_console("train", verbose):
        outcome = run_training(config)
    typer.echo(f"trained {outcome.steps} steps on data version {outcome.data_version}; "
               f"quarantined {outcome.quarantine.get('quarantined') or 'nothing'}")
    typer.echo(f"MLflow run {outcome.run_id} in {outcome.tracking_uri}")
    typer.echo(f"model and checkpoint: {outcome.checkpoint}")
    if outcome.registered_version:
        typer.echo(f"registered models:/{config.mlflow.registered_model}/{outcome.registered_version} "
                   f"(alias challenger); open the UI with: mlflow ui --backend-store-uri {outcome.tracking_uri}")
