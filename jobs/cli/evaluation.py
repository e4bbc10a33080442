"""``visor train-policy`` and ``visor evaluate``: the evaluation jobs (:mod:`jobs.evaluation`)."""

from __future__ import annotations

from pathlib import Path

import typer

from jobs.cli.options import INPUT_ERRORS, TRACKING_URI, VERBOSE, load, option, usage_errors
from jobs.evaluation.config import PolicyOptions, ScoreOptions

commands = typer.Typer()


@commands.command("train-policy")
def train_policy(
    model: str = typer.Option(..., help="The universal model, e.g. models:/visor/1."),
    data: list[str] = typer.Option(..., help="Shard spec(s) to label and train the policy on (repeatable)."),
    loss_tolerance: float = option(PolicyOptions, "loss_tolerance"),
    accuracy_target: float = option(PolicyOptions, "accuracy_target"),
    epochs: int = option(PolicyOptions, "epochs"),
    tracking_uri: str | None = TRACKING_URI,
    registered_model: str = option(PolicyOptions, "registered_model"),
    gpus_per_actor: float = option(ScoreOptions, "gpus_per_actor"),
    device: str = option(ScoreOptions, "device"),
    dtype: str = option(ScoreOptions, "dtype"),
    verbose: bool = VERBOSE,
) -> None:
    """Label budget sufficiency with the universal model, train the policy head, pick τ, register a challenger."""
    from jobs.console import job_console
    from jobs.evaluation.policy import run_policy_job
    from jobs.registry.tracking import tracking_uri as resolve_uri

    options = load(PolicyOptions, {"loss_tolerance": loss_tolerance, "accuracy_target": accuracy_target,
                                   "epochs": epochs, "registered_model": registered_model,
                                   "score": {"gpus_per_actor": gpus_per_actor, "device": device, "dtype": dtype}})
    store = resolve_uri(tracking_uri)
    with usage_errors(errors=INPUT_ERRORS), job_console("train-policy", verbose):
        outcome = run_policy_job(model, data, store, options)
    typer.echo(f"τ = {outcome.tau}; held-out accuracy {outcome.heldout['accuracy']:.3f} at "
               f"{outcome.heldout['mean_flops'] / 1e9:.4f} GFLOPs (largest budget "
               f"{outcome.heldout['largest_budget_accuracy']:.3f} at "
               f"{outcome.heldout['largest_budget_flops'] / 1e9:.4f}); "
               f"budgets chosen {outcome.heldout['budget_counts']}")
    if outcome.registered_version:
        typer.echo(f"registered models:/{registered_model}/{outcome.registered_version} (alias challenger) in {store}")


@commands.command()
def evaluate(
    model: str = typer.Option(..., help="MLflow model URI, e.g. models:/visor@challenger or models:/visor/3."),
    data: list[str] = typer.Option(..., help="Shard spec(s) of the evaluation data (repeatable)."),
    baseline: list[str] = typer.Option([], help="NAME=URI of a model to compare against (repeatable)."),
    out: Path | None = typer.Option(None, help="Also write the JSON report here."),
    batch_size: int = option(ScoreOptions, "batch_size"),
    actors: int = option(ScoreOptions, "actors"),
    max_new_tokens: int = option(ScoreOptions, "max_new_tokens"),
    gpus_per_actor: float = option(ScoreOptions, "gpus_per_actor"),
    device: str = option(ScoreOptions, "device"),
    dtype: str = option(ScoreOptions, "dtype"),
    tracking_uri: str | None = TRACKING_URI,
    verbose: bool = VERBOSE,
) -> None:
    """Accuracy (overall, per question type and per benchmark — each benchmark's own metric on greedy answers for
    samples that name one), FLOPs and latency per budget and under the policy."""
    from jobs.console import job_console
    from jobs.evaluation.evaluate import evaluate as run_evaluate
    from jobs.evaluation.evaluate import format_report
    from jobs.registry.tracking import tracking_uri as resolve_uri

    baselines = {}
    for item in baseline:
        label, sep, uri = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r}: expected NAME=URI", param_hint="--baseline")
        baselines[label] = uri
    options = load(ScoreOptions, {"batch_size": batch_size, "actors": actors, "max_new_tokens": max_new_tokens,
                                  "gpus_per_actor": gpus_per_actor, "device": device, "dtype": dtype})
    store = resolve_uri(tracking_uri)
    with usage_errors(errors=INPUT_ERRORS), job_console("evaluate", verbose):
        outcome = run_evaluate(model, data, store, options, baselines, out)
    typer.echo(format_report(outcome.report))
    typer.echo(f"data version {outcome.report['data_version']}, {outcome.report['samples']} samples; "
               f"MLflow run {outcome.run_id} in {store}")
