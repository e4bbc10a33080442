"""``visor promote``: the registry job (:mod:`jobs.registry`)."""

from __future__ import annotations

import typer

from jobs.cli.options import JobCommand, job_command
from jobs.registry.config import PromoteConfig

commands = typer.Typer()

PROMOTE = JobCommand(PromoteConfig, ("registered_model", "rule.accuracy_tolerance", "rule.flops_tolerance", "dry_run",
                                     "tracking_uri"), renamed={"--name": "registered_model"})


@job_command(commands, "promote", PROMOTE)
def promote(config: PromoteConfig) -> None:
    """Move the 'champion' alias to the 'challenger' if it is at least as accurate at no more FLOPs."""
    from jobs.registry.promote import PromotionError, run

    try:
        decision = run(config)
    except PromotionError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    verb = "promote" if decision.promoted else "keep the champion"
    typer.echo(f"{'[dry run] ' if config.dry_run else ''}{verb}: challenger {decision.challenger}, champion "
               f"{decision.champion or '-'}: {decision.reason}")
