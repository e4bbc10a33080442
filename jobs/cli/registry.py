"""``visor promote``: the registry job (:mod:`jobs.registry`)."""

from __future__ import annotations

import typer

from jobs.cli.options import TRACKING_URI, load, option, renamed_flag
from jobs.registry.config import PromotionRule
from jobs.sections import TrackingSection

commands = typer.Typer()


@commands.command()
def promote(
    registered_model: str = option(TrackingSection, "registered_model"),
    name: str | None = renamed_flag("--name", "--registered-model"),
    accuracy_tolerance: float = option(PromotionRule, "accuracy_tolerance"),
    flops_tolerance: float = option(PromotionRule, "flops_tolerance"),
    dry_run: bool = typer.Option(False, help="Decide and print, change nothing."),
    tracking_uri: str | None = TRACKING_URI,
) -> None:
    """Move the 'champion' alias to the 'challenger' if it is at least as accurate at no more FLOPs."""
    from jobs.registry.promote import PromotionError
    from jobs.registry.promote import promote as run_promote
    from jobs.registry.tracking import tracking_uri as resolve_uri

    rule = load(PromotionRule, {"accuracy_tolerance": accuracy_tolerance, "flops_tolerance": flops_tolerance})
    try:
        decision = run_promote(resolve_uri(tracking_uri), name or registered_model, rule, dry_run)
    except PromotionError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    verb = "promote" if decision.promoted else "keep the champion"
    typer.echo(f"{'[dry run] ' if dry_run else ''}{verb}: challenger {decision.challenger}, champion "
               f"{decision.champion or '-'}: {decision.reason}")

