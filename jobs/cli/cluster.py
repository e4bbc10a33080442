"""``visor jobs …``: thin wrappers over the Ray Jobs API (list, status, logs, stop)."""

from __future__ import annotations

import typer

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
