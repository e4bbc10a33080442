"""``visor train``: the training job (:mod:`jobs.train`)."""

from __future__ import annotations

import typer

commands = typer.Typer()


@commands.command()
def train(
    config: str = typer.Option(..., help="A config file, or a preset: demo-tiny, llava-ov-0.5b, llava-ov-7b."),
    set_: list[str] = typer.Option([], "--set", help="Override a config value: --set optim.lr=3e-4 (repeatable)."),
) -> None:
    """Train the universal VISOR network over all budgets on Ray Train; log to MLflow; register a challenger."""
    from jobs.train.config import ConfigError, load_train_config
    from jobs.train.driver import run_training

    try:
        loaded = load_train_config(config, set_)
    except ConfigError as err:
        raise typer.BadParameter(str(err), param_hint="--config/--set") from err
    try:
        outcome = run_training(loaded)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--config/--set") from err
    typer.echo(f"trained {outcome.steps} steps on data version {outcome.data_version}; "
               f"quarantined {outcome.quarantine.get('quarantined') or 'nothing'}")
    typer.echo(f"MLflow run {outcome.run_id} in {outcome.tracking_uri}")
    if outcome.registered_version:
        typer.echo(f"registered models:/{loaded.mlflow.registered_model}/{outcome.registered_version} "
                   f"(alias challenger); open the UI with: mlflow ui --backend-store-uri {outcome.tracking_uri}")
