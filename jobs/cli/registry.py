"""``visor promote`` and ``visor retrain``: the registry jobs (:mod:`jobs.registry`)."""

from __future__ import annotations

import typer

commands = typer.Typer()


@commands.command()
def promote(
    name: str = typer.Option("visor", help="Registered model."),
    accuracy_tolerance: float = typer.Option(0.0, min=0, help="Accuracy the challenger may lose."),
    flops_tolerance: float = typer.Option(0.0, min=0, help="Relative extra mean FLOPs the challenger may cost."),
    dry_run: bool = typer.Option(False, help="Decide and print, change nothing."),
    tracking_uri: str | None = typer.Option(None, help="MLflow tracking URI (default: env or ./mlflow.db)."),
) -> None:
    """Move the 'champion' alias to the 'challenger' if it is at least as accurate at no more FLOPs."""
    from jobs.registry.promote import PromotionError, PromotionRule
    from jobs.registry.promote import promote as run_promote
    from jobs.registry.tracking import tracking_uri as resolve_uri

    try:
        decision = run_promote(resolve_uri(tracking_uri), name, PromotionRule(accuracy_tolerance, flops_tolerance),
                               dry_run)
    except PromotionError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    verb = "promote" if decision.promoted else "keep the champion"
    typer.echo(f"{'[dry run] ' if dry_run else ''}{verb}: challenger {decision.challenger}, champion "
               f"{decision.champion or '-'}: {decision.reason}")


@commands.command()
def retrain(
    config: str = typer.Option(..., help="Retrain config file, or the preset retrain-demo."),
    set_: list[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
) -> None:
    """Train → policy → evaluate → promote when the training data changed; skip otherwise."""
    from jobs.registry.retrain import AlreadyRunning, load_retrain_config, run_retrain
    from jobs.train.config import ConfigError

    try:
        outcome = run_retrain(load_retrain_config(config, set_))
    except (ConfigError, ValueError) as err:
        raise typer.BadParameter(str(err), param_hint="--config/--set") from err
    except AlreadyRunning as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(3) from err
    typer.echo(f"{outcome.status}: {outcome.reason} (data version {outcome.data_version}; champion "
               f"{outcome.champion or '-'})")
