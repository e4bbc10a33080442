"""``visor submit`` and ``visor jobs …``: the same jobs on a Ray cluster through the Ray Jobs API.

:func:`submit` stages the project (the packages and ``pyproject.toml``, not
``.venv``, data, runs or stores) plus the job's resolved config (see
:mod:`jobs.cluster.localize`: its paths keep the meaning they have on the submitting
machine) into a temporary ``working_dir``, and submits ``python -m jobs.cli <job> --config <it>`` with a
``runtime_env`` carrying it and the environment a job needs on the cluster
(``MLFLOW_TRACKING_URI``, ``AWS_*``, ``VISOR_API_TOKEN``…, whichever are set
here; ``VISOR_LOG_LEVEL=debug``, so the job prints everything into the log Ray Jobs keeps for
it rather than a log file in its temporary working_dir; and the libraries' progress-bar switches, as bars in a
log are one line per update). The cluster's image must have the dependencies installed (see
``infra/Dockerfile``); the code comes with the job, so a change needs no new image.

The entry points are the ordinary ``visor`` commands: the same line runs under
``ray job submit`` and as a KubeRay ``RayJob`` entrypoint.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ray.job_submission import JobStatus, JobSubmissionClient

from jobs.config import Section
from jobs.console import LOG_LEVEL_ENV, QUIET_ENV

PROJECT = Path(__file__).resolve().parents[2]
STAGED = ("visor_model", "pipelines", "jobs", "pyproject.toml")
SUBMITTABLE = ("train", "train-policy", "evaluate", "retrain", "promote", "synth", "pack", "inspect",
               "serve")  # serve: runs until stopped
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                 "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "VISOR_API_TOKEN")
CONFIG_NAME = "submitted-config.yaml"
TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}


def default_address() -> str:
    """``$RAY_ADDRESS`` when it is a dashboard URL, else the local head's dashboard."""
    address = os.environ.get("RAY_ADDRESS", "")
    return address if address.startswith("http") else "http://127.0.0.1:8265"


def stage(configs: dict[str, dict]) -> Path:
    """A temporary working_dir with the packages and ``configs`` (file name → content, written as YAML; the
    main config as ``submitted-config.yaml``)."""
    import yaml

    directory = Path(tempfile.mkdtemp(prefix="visor-submit-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in STAGED:
        source = PROJECT / name
        if source.is_dir():
            shutil.copytree(source, directory / name, ignore=ignore)
        else:
            shutil.copy2(source, directory / name)
    for name, content in configs.items():
        (directory / (CONFIG_NAME if name == "main" else name)).write_text(yaml.safe_dump(content, sort_keys=False))
    return directory


def submit(job: str, address: str, config: Section, remote: bool = False,
           words: Sequence[str] = ()) -> tuple[JobSubmissionClient, str]:
    """Submit ``visor <words> --config <config>`` (``words``: the job's command, default ``job``; ``data pack`` for
    the job ``pack``); returns the client and the submission id.

    ``config`` is the job's resolved config (its file or preset, flags and ``--set`` overrides applied, as
    ``visor <job>`` would resolve them here); it is shipped with its paths made to mean what they mean here
    (:mod:`jobs.cluster.localize`; ``ValueError`` when a remote cluster could not reach them; ``remote``: the
    address is local but the cluster is not).
    """
    from jobs.cluster.localize import localize

    if job not in SUBMITTABLE:
        raise ValueError(f"cannot submit {job!r}; choose one of {', '.join(SUBMITTABLE)}")
    localized = localize(config, address, remote=remote)
    working_dir = stage(localized.configs)
    command = ["python", "-m", "jobs.cli", *(words or (job,)), "--config", CONFIG_NAME]
    env = QUIET_ENV | {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)} | localized.env
    env[LOG_LEVEL_ENV] = "debug"  # everything into the job's own log (`visor jobs logs`), none in its working_dir
    client = JobSubmissionClient(address)
    submission = client.submit_job(
        entrypoint=shlex.join(command),
        runtime_env={"working_dir": str(working_dir), "env_vars": env},
        metadata={"visor_job": job},
    )
    shutil.rmtree(working_dir, ignore_errors=True)
    return client, submission


def follow(client: JobSubmissionClient, submission: str, echo=print, poll_s: float = 1.0) -> JobStatus:
    """Print the job's logs as they come and return its final status."""
    async def tail() -> None:
        async for lines in client.tail_job_logs(submission):
            echo(lines.rstrip("\n"))

    try:
        asyncio.run(tail())
    except Exception:  # tailing is best effort; the status below is what counts
        pass
    while (status := client.get_job_status(submission)) not in TERMINAL:
        time.sleep(poll_s)
    return status
