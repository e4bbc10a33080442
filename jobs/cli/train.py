"""``visor train``: the training job (:mod:`jobs.train`)."""

from __future__ import annotations

import typer

from jobs.cli.options import SET, VERBOSE, load, usage_errors

commands = typer.Typer()


@commands.command()
def train(
    config: str = typer.Option(..., help="A config file, or a preset: demo-tiny, demo-recipe, bench-quality, "
                               "llava-ov-0.5b, llava-ov-7b."),
    set_: list[str] = SET,
    verbose: bool = VERBOSE,
) -> None:
    """Train the universal VISOR network over all budgets on Ray Train; log to MLflow; register a challenger."""
    from jobs.console import job_console
    from jobs.train.config import TrainConfig
    from jobs.train.driver import run_training

    loaded = load(TrainConfig, config, set_, "--config/--set")
    with usage_errors("--config/--set"), job_console("train", verbose):
        outcome = run_training(loaded)
    typer.echo(f"trained {outcome.steps} steps on data version {outcome.data_version}; "
               f"quarantined {outcome.quarantine.get('quarantined') or 'nothing'}")
    typer.echo(f"MLflow run {outcome.run_id} in {outcome.tracking_uri}")
    typer.echo(f"model and checkpoint: {outcome.checkpoint}")
    if outcome.registered_version:
        typer.echo(f"registered models:/{loaded.mlflow.registered_model}/{outcome.registered_version} "
                   f"(alias challenger); open the UI with: mlflow ui --backend-store-uri {outcome.tracking_uri}")
