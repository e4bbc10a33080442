"""``visor train-policy`` and ``visor evaluate``: the evaluation jobs (:mod:`jobs.evaluation`)."""

from __future__ import annotations

import typer

from jobs.cli.options import INPUT_ERRORS, VERBOSE, JobCommand, job_command, usage_errors
from jobs.evaluation.config import EvaluateConfig, PolicyConfig

commands = typer.Typer()
SCORING = ("score.gpus_per_actor", "score.device", "score.dtype")

POLICY = JobCommand(PolicyConfig, ("model", "data", "loss_tolerance", "accuracy_target", "epochs", "tracking_uri",
                                   "registered_model", *SCORING))
EVALUATE = JobCommand(EvaluateConfig, ("model", "data", "baselines", "out", "score.batch_size", "score.actors",
                                       "score.max_new_tokens", *SCORING, "tracking_uri"),
                      renamed={"--baseline": "baselines"})


@job_command(commands, "train-policy", POLICY)
def train_policy(config: PolicyConfig, verbose: bool = VERBOSE) -> None:
    """Label budget sufficiency with the universal model, train the policy head, pick τ, register a challenger."""
    from jobs.console import job_console
    from jobs.evaluation.policy import run

    with usage_errors(errors=INPUT_ERRORS), job_console("train-policy", verbose):
        outcome = run(config)
    heldout = outcome.heldout
    typer.echo(f"τ = {outcome.tau}; held-out accuracy {heldout.accuracy:.3f} at "
               f"{heldout.mean_flops / 1e9:.4f} GFLOPs (largest budget {heldout.largest_budget_accuracy:.3f} "
               f"at {heldout.largest_budget_flops / 1e9:.4f}); budgets chosen {heldout.budget_counts}")
    if outcome.registered_version:
        typer.echo(f"registered models:/{config.registered_model}/{outcome.registered_version} (alias challenger)")


@job_command(commands, "evaluate", EVALUATE)
def evaluate(config: EvaluateConfig, verbose: bool = VERBOSE) -> None:
    """Accuracy (overall, per question type and per benchmark — each benchmark's own metric on greedy answers for
    samples that name one), FLOPs and latency per budget and under the policy."""
    from jobs.console import job_console
    from jobs.evaluation.evaluate import run
    from jobs.evaluation.report import format_report

    with usage_errors(errors=INPUT_ERRORS), job_console("evaluate", verbose):
        outcome = run(config)
    typer.echo(format_report(outcome.report))
    typer.echo(f"data version {outcome.report.data_version}, {outcome.report.samples} samples; "
               f"MLflow run {outcome.run_id}")
