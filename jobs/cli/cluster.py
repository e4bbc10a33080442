"""``visor submit``, ``visor jobs …`` and ``visor infra render``: running on a cluster (:mod:`jobs.cluster`)."""

from __future__ import annotations

from pathlib import Path

import typer

from jobs.cli.options import load

commands = typer.Typer()
jobs_app = typer.Typer(help="Jobs on a Ray cluster: list, status, logs, stop.", no_args_is_help=True)
ADDRESS = typer.Option(None, help="Ray dashboard URL (default: $RAY_ADDRESS or http://127.0.0.1:8265).")


def _client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    from jobs.cluster.submit import default_address

    return JobSubmissionClient(address or default_address())


@jobs_app.command("list")
def list_jobs(address: str | None = ADDRESS) -> None:
    """Every job the cluster knows: id, status, entrypoint."""
    for job in _client(address).list_jobs():
        typer.echo(f"{job.submission_id or job.job_id}\t{job.status.value}\t{job.entrypoint}")


@jobs_app.command()
def status(submission_id: str, address: str | None = ADDRESS) -> None:
    """A job's status (exit code 1 unless it succeeded or is still running)."""
    value = _client(address).get_job_status(submission_id).value
    typer.echo(value)
    if value in ("FAILED", "STOPPED"):
        raise typer.Exit(1)


@jobs_app.command()
def logs(submission_id: str, address: str | None = ADDRESS) -> None:
    """A job's output so far."""
    typer.echo(_client(address).get_job_logs(submission_id))


@jobs_app.command()
def stop(submission_id: str, address: str | None = ADDRESS) -> None:
    """Ask a running job to stop."""
    typer.echo("stopping" if _client(address).stop_job(submission_id) else "not running")


@commands.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(
    ctx: typer.Context,
    job: str = typer.Argument(..., help="train, train-policy, evaluate, retrain, promote, synth, pack, inspect (the "
                              "data jobs) or serve (a long-running job: the endpoint serves until `visor jobs stop`)."),
    address: str | None = ADDRESS,
    config: str | None = typer.Option(None, help="The job's config file or preset (resolved here, shipped)."),
    wait: bool = typer.Option(False, help="Follow the logs and exit with the job's status."),
    remote: bool = typer.Option(False, help="The cluster does not share this machine's files although its address "
                                "is local (e.g. a kubectl port-forward)."),
) -> None:
    """Submit a job to a Ray cluster (Ray Jobs API); arguments after the options go to the job (its flags and
    --set overrides).

    The job's config is resolved here, exactly as `visor JOB` would resolve it, and shipped; its paths keep their
    meaning: made absolute for a head on this machine, refused (naming the fields) for a remote cluster when
    they are relative or a SQLite store."""
    from jobs.cli.app import app
    from jobs.cli.options import JOBS
    from jobs.cluster.submit import SUBMITTABLE, default_address, follow
    from jobs.cluster.submit import submit as submit_job

    if job not in SUBMITTABLE:
        raise typer.BadParameter(f"cannot submit {job!r}; choose one of {', '.join(SUBMITTABLE)}", param_hint="JOB")
    spec = JOBS[job]
    command = typer.main.get_command(app)
    for word in spec.words:
        command = command.commands[word]
    params = command.make_context(job, [*(["--config", config] if config else []), *ctx.args]).params
    resolved = spec.resolve(params)
    try:
        client, submission = submit_job(job, address or default_address(), resolved, remote, spec.words)
    except ValueError as err:  # paths the cluster cannot reach
        raise typer.BadParameter(str(err), param_hint="--config/--set/flags") from err
    typer.echo(f"submitted {submission}")
    if wait:
        status = follow(client, submission, typer.echo)
        typer.echo(f"job {submission}: {status.value}")
        if status.value != "SUCCEEDED":
            raise typer.Exit(1)


infra_app = typer.Typer(help="Cluster manifests (KubeRay, MLflow server, scheduled retraining).",
                        no_args_is_help=True)


VALUES = typer.Option(Path("infra/values.yaml"), exists=True, dir_okay=False, help="Values file.")


@infra_app.command()
def render(
    values: Path = VALUES,
    out: Path = typer.Option(Path("infra/rendered"), help="Directory for the manifests."),
) -> None:
    """Render every manifest from the values file (namespace, image, bucket and URIs set in one place)."""
    from jobs.cluster.infra import Values
    from jobs.cluster.infra import render as render_manifests

    for path in render_manifests(load(Values, values, param_hint="--values"), out):
        typer.echo(f"wrote {path}")


@infra_app.command()
def check(
    values: Path = VALUES,
    rendered: Path | None = typer.Option(None, exists=True, file_okay=False, help="Check the manifests in this "
                                         "directory (*.yaml) instead of rendering the values file."),
) -> None:
    """Check the manifests as the API server and an operator would: every RayCluster/RayJob/RayService against
    KubeRay's CRD schemas (strict: unknown fields refused), and every job's command, config, paths and CPUs.
    Exit code 1 and one line per problem, naming the object and the field."""
    import yaml

    from jobs.cli.app import app
    from jobs.cluster.infra import Values, check_manifests, manifests

    if rendered is not None:
        files = {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(rendered.glob("*.yaml"))}
    else:
        files = manifests(load(Values, values, param_hint="--values"))
    problems = check_manifests(files, typer.main.get_command(app))
    for problem in problems:
        typer.echo(problem, err=True)
    if problems:
        raise typer.Exit(1)
    count = sum(len(documents) for documents in files.values())
    typer.echo(f"{count} objects: KubeRay schemas (strict) and every job's command, config, paths and CPUs: ok")


@infra_app.command()
def crds(
    source: Path = typer.Option(None, help="KubeRay's CRD files (ray.io_rayclusters.yaml, ray.io_rayjobs.yaml, "
                                "ray.io_rayservices.yaml; default: ../shared/kuberay-crds beside the checkout)."),
    out: Path = typer.Option(None, help="Where to write the derived schema (default: the committed "
                             "jobs/cluster/crds/kuberay-v1.7.0.json)."),
) -> None:
    """Derive the committed KubeRay schema (description-free, shared subtrees) from KubeRay's CRD files."""
    from jobs.cluster import crds as kuberay

    typer.echo(f"wrote {kuberay.write(source or kuberay.DEFAULT_SOURCE, out or kuberay.SCHEMA_FILE)}")
