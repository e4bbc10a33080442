"""The ``visor`` command line: one Typer app, one sub-command per job.

Heavy imports (torch, transformers, Ray) happen inside the commands, so
``visor --help`` and ``visor flops`` answer at once.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from jobs.cli.cluster import jobs_app
from jobs.cli.data import data_app
from jobs.cli.infra import infra_app

app = typer.Typer(help="VISOR: budget-adaptive vision-language model — jobs and tools.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(jobs_app, name="jobs")
app.add_typer(infra_app, name="infra")


class Preset(str, Enum):
    llava_ov_05b = "llava-ov-0.5b"
    llava_ov_7b = "llava-ov-7b"


class CrossAttention(str, Enum):
    joint = "joint"
    gated = "gated"


@app.command()
def flops(
    preset: Preset = typer.Option(Preset.llava_ov_05b, help="Model shape."),
    visual_tokens: int = typer.Option(7371, min=0, help="Visual tokens per sample (after any reduction)."),
    text_tokens: int = typer.Option(64, min=1, help="Text tokens per sample."),
    tiles: int | None = typer.Option(None, min=0, help="Image tiles incl. the base tile (default: estimated)."),
    cross_attention: CrossAttention = typer.Option(CrossAttention.joint, help="Cross-attention variant."),
    token_reduction: int = typer.Option(1, help="Visual-token pooling factor per tile side (1 or 2)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Analytic FLOPs per budget against the LLaVA-OneVision baseline (no weights are allocated)."""
    from visor_model import flops as visor_flops
    from visor_model.presets import llava_ov_config

    try:
        config = llava_ov_config(
            preset.value, cross_attention=cross_attention.value, token_reduction=token_reduction
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    table = visor_flops.flops_table(config, visual_tokens, text_tokens, tiles)
    if as_json:
        typer.echo(json.dumps(table, indent=2))
        return
    typer.echo(format_flops_table(preset.value, table))


def format_flops_table(name: str, table: dict) -> str:
    """Markdown table of :func:`visor_model.flops.flops_table` output (GFLOP)."""
    cfg, base = table["config"], table["baseline"]
    lines = [
        f"{name}: {cfg['num_visual_tokens']} visual tokens ({cfg['num_tiles']} tiles), {cfg['num_text_tokens']} "
        f"text tokens, {cfg['cross_attention']} cross-attention, C layers {cfg['cross_layers']}",
        "",
        "| config | S layers | language GFLOP | total GFLOP | saving (language) | saving (total) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        f"| LLaVA-OneVision | all | {base['language'] / 1e9:,.1f} | {base['total'] / 1e9:,.1f} | 1.00x | 1.00x |",
    ]
    for row in table["budgets"]:
        lines.append(
            f"| budget {row['budget']} | {row['sa_layers']} | {row['language'] / 1e9:,.1f} | "
            f"{row['total'] / 1e9:,.1f} | {row['saving_language']:.2f}x | {row['saving_total']:.2f}x |"
        )
    lines.append(
        f"\nvision tower {base['vision'] / 1e9:,.1f} GFLOP + projector {base['projector'] / 1e9:,.1f} GFLOP "
        "are the same in every row."
    )
    return "\n".join(lines)


@app.command()
def serve(
    model: str = typer.Option("models:/visor@champion", help="MLflow model URI to serve."),
    host: str = typer.Option("127.0.0.1", help="Address of the HTTP proxy."),
    port: int = typer.Option(8000, help="Port of the HTTP proxy."),
    max_batch_size: int = typer.Option(8, min=1, help="Requests per generate batch."),
    max_ongoing_requests: int = typer.Option(32, min=1, help="In-flight requests per replica."),
    replicas: int = typer.Option(1, min=1, help="Model replicas."),
    reload_poll: float = typer.Option(0.0, min=0, help="Seconds between checks of the alias (0: only on "
                                      "POST /admin/reload)."),
    allow_image_urls: bool = typer.Option(False, help="Also accept http(s) image URLs (default: data URLs only)."),
    tracking_uri: str | None = typer.Option(None, help="MLflow tracking URI (default: env or ./mlflow.db)."),
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API on Ray Serve (set VISOR_API_TOKEN to require a token)."""
    import time

    from jobs.serving.openai_protocol import Limits
    from jobs.serving.serve import ServeConfig, start

    try:
        config = ServeConfig(model_uri=model, tracking_uri=tracking_uri, host=host, port=port,
                             num_replicas=replicas, max_batch_size=max_batch_size,
                             max_ongoing_requests=max_ongoing_requests, reload_poll_s=reload_poll,
                             limits=Limits(allow_image_urls=allow_image_urls))
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    start(config)
    typer.echo(f"serving {model} at http://{host}:{port}/v1 (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve as ray_serve

        ray_serve.shutdown()


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(
    ctx: typer.Context,
    job: str = typer.Argument(..., help="train, train-policy, evaluate, retrain or promote."),
    address: str | None = typer.Option(None, help="Ray dashboard URL (default: $RAY_ADDRESS or "
                                       "http://127.0.0.1:8265)."),
    config: str | None = typer.Option(None, help="Config file (shipped with the job) or preset name."),
    wait: bool = typer.Option(False, help="Follow the logs and exit with the job's status."),
) -> None:
    """Submit a job to a Ray cluster (Ray Jobs API); arguments after the options go to the job."""
    from jobs.cluster.submit import default_address, follow
    from jobs.cluster.submit import submit as submit_job

    try:
        client, submission = submit_job(job, address or default_address(), list(ctx.args), config)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="JOB") from err
    typer.echo(f"submitted {submission}")
    if wait:
        status = follow(client, submission, typer.echo)
        typer.echo(f"job {submission}: {status.value}")
        if status.value != "SUCCEEDED":
            raise typer.Exit(1)


@app.command()
def demo() -> None:
    """The whole local pipeline on synthetic data (what `make demo` runs), then a summary."""
    from jobs.demo.pipeline_demo import run_demo

    typer.echo(run_demo())


@app.command("model-demo")
def model_demo(
    cross_attention: CrossAttention = typer.Option(CrossAttention.joint, help="Cross-attention variant."),
    seed: int = typer.Option(0, help="Random seed for the tiny model and the image."),
    max_new_tokens: int = typer.Option(8, min=1, help="Tokens to generate per budget."),
) -> None:
    """Build a tiny random VISOR model, answer one image question at every budget, print the costs."""
    from jobs.demo.model_demo import run_model_demo

    typer.echo(run_model_demo(cross_attention.value, seed, max_new_tokens))


@app.command()
def convert(
    llava_path: Path = typer.Argument(..., exists=True, file_okay=False, help="Local LLaVA-OneVision checkpoint."),
    out: Path = typer.Option(..., help="Directory to write the VISOR model to."),
    cross_attention: CrossAttention = typer.Option(CrossAttention.joint, help="Cross-attention variant."),
    full_attention: bool = typer.Option(False, help="Use the full-attention plan (reproduces LLaVA-OneVision)."),
    token_reduction: int = typer.Option(1, help="Visual-token pooling factor per tile side (1 or 2)."),
) -> None:
    """Convert a local LLaVA-OneVision checkpoint (transformers format) into a VISOR model directory."""
    from jobs.train.convert import convert_checkpoint

    model, copied = convert_checkpoint(llava_path, out, cross_attention.value, full_attention, token_reduction)
    typer.echo(f"wrote {out} (plan:\n{model.plan.describe()}\n)" + ("; processor copied" if copied else ""))


@app.command()
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


@app.command()
def evaluate(
    model: str = typer.Option(..., help="MLflow model URI, e.g. models:/visor@challenger or models:/visor/3."),
    data: list[str] = typer.Option(..., help="Shard spec(s) of the evaluation data (repeatable)."),
    baseline: list[str] = typer.Option([], help="NAME=URI of a model to compare against (repeatable)."),
    out: Path | None = typer.Option(None, help="Also write the JSON report here."),
    batch_size: int = typer.Option(16, min=1, help="Samples per model call."),
    actors: int = typer.Option(1, min=1, help="Scoring actors (each holds a copy of the model)."),
    tracking_uri: str | None = typer.Option(None, help="MLflow tracking URI (default: env or ./mlflow.db)."),
) -> None:
    """Accuracy (overall and per question type), FLOPs and latency per budget and under the policy."""
    from jobs.evaluation.evaluate import evaluate as run_evaluate
    from jobs.evaluation.evaluate import format_report
    from jobs.evaluation.scoring import ScoreOptions
    from jobs.registry.tracking import tracking_uri as resolve_uri

    baselines = {}
    for item in baseline:
        label, sep, uri = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r}: expected NAME=URI", param_hint="--baseline")
        baselines[label] = uri
    try:
        outcome = run_evaluate(model, data, resolve_uri(tracking_uri),
                               ScoreOptions(batch_size=batch_size, actors=actors), baselines, out)
    except (ValueError, OSError) as err:
        raise typer.BadParameter(str(err)) from err
    typer.echo(format_report(outcome.report))
    typer.echo(f"data version {outcome.report['data_version']}, {outcome.report['samples']} samples; "
               f"MLflow run {outcome.run_id}")


@app.command("train-policy")
def train_policy(
    model: str = typer.Option(..., help="The universal model, e.g. models:/visor/1."),
    data: list[str] = typer.Option(..., help="Shard spec(s) to label and train the policy on (repeatable)."),
    loss_tolerance: float = typer.Option(0.05, min=0, help="A budget within this loss of the best is sufficient."),
    accuracy_target: float = typer.Option(0.99, min=0, max=1, help="τ keeps this share of the top accuracy."),
    epochs: int = typer.Option(300, min=1, help="Policy-head training epochs (full batch)."),
    tracking_uri: str | None = typer.Option(None, help="MLflow tracking URI (default: env or ./mlflow.db)."),
    registered_model: str = typer.Option("visor", help="Registered model receiving the new version."),
) -> None:
    """Label budget sufficiency with the universal model, train the policy head, pick τ, register a challenger."""
    from jobs.evaluation.policy import PolicyOptions, run_policy_job
    from jobs.registry.tracking import tracking_uri as resolve_uri

    options = PolicyOptions(loss_tolerance=loss_tolerance, accuracy_target=accuracy_target, epochs=epochs,
                            registered_model=registered_model)
    try:
        outcome = run_policy_job(model, data, resolve_uri(tracking_uri), options)
    except (ValueError, OSError) as err:
        raise typer.BadParameter(str(err)) from err
    typer.echo(f"τ = {outcome.tau}; held-out accuracy {outcome.heldout['accuracy']:.3f} at "
               f"{outcome.heldout['mean_flops'] / 1e9:.4f} GFLOPs (largest budget "
               f"{outcome.heldout['largest_budget_accuracy']:.3f} at "
               f"{outcome.heldout['largest_budget_flops'] / 1e9:.4f}); "
               f"budgets chosen {outcome.heldout['budget_counts']}")
    if outcome.registered_version:
        typer.echo(f"registered models:/{registered_model}/{outcome.registered_version} (alias challenger)")


@app.command()
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


@app.command()
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


if __name__ == "__main__":
    app()
