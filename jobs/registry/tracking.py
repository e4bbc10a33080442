"""MLflow conventions shared by the jobs: where runs go, how they are named, tagged and registered.

* Tracking URI: the config's, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``
  (an absolute path, so Ray workers started elsewhere write to the same store).
* An experiment created in a SQLite store keeps its artifacts in ``mlruns/<experiment>/``
  beside the database file (MLflow's default is ``./mlruns`` of whichever process creates it).
* A run carries the tag ``visor.run_name``; a job started again with the same
  name resumes the newest unfinished run of that name instead of opening a new one
  (a finished run is never reopened: the next job with that name starts afresh).
* A registered version carries the tags ``data_version`` and ``plan`` and gets an alias.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from jobs.sections import DEFAULT_STORE

RUN_NAME_TAG = "visor.run_name"


def tracking_uri(configured: str | None = None) -> str:
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path.cwd() / DEFAULT_STORE}"


def git_commit() -> str:
    """The commit of the code being run ("unknown" outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` → ``{"a.b": "1"}`` (MLflow params are flat strings, at most 6000 chars)."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat


def experiment_id(uri: str, name: str) -> str:
    """The id of experiment ``name`` in the store at ``uri``, created if missing, and made the active one."""
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(name)
    if found is None:
        location = None
        if uri.startswith("sqlite:///"):
            folder = re.sub(r"[^\w.-]", "_", name)
            location = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns" / folder).as_uri()
        try:
            client.create_experiment(name, artifact_location=location)
        except MlflowException:  # another worker created it first
            pass
        found = client.get_experiment_by_name(name)
    return mlflow.set_experiment(experiment_id=found.experiment_id).experiment_id


def start_or_resume_run(uri: str, experiment: str, run_name: str, tags: dict[str, str]) -> Run:
    """The newest unfinished run named ``run_name`` in ``experiment`` (marked running again), or a new one."""
    experiment = experiment_id(uri, experiment)
    client = MlflowClient(uri)
    found = client.search_runs(
        [experiment], f"tags.`{RUN_NAME_TAG}` = '{run_name}' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return client.get_run(found[0].info.run_id)
    return client.create_run(experiment, run_name=run_name, tags={RUN_NAME_TAG: run_name, **tags})


def create_run(uri: str, experiment: str, run_name: str, tags: dict[str, str]) -> str:
    """A new run (not made the active fluent run, so jobs run inside it can open their own nested runs)."""
    return MlflowClient(uri).create_run(experiment_id(uri, experiment), run_name=run_name, tags=tags).info.run_id


@contextmanager
def failure_marked(client: MlflowClient, run_id: str,
                   tags: Callable[[], dict[str, str]] = dict) -> Iterator[None]:
    """Whatever escapes the block (an interrupt too) marks run ``run_id`` ``FAILED``, tagged ``error`` (``Type:
    message``, 5000 characters at most) and with ``tags()`` as they are then (e.g. the stage that failed), and
    propagates; the one way a job marks its run failed."""
    try:
        yield
    except BaseException as err:
        for key, value in {**tags(), "error": f"{type(err).__name__}: {err}"[:5000]}.items():
            client.set_tag(run_id, key, value)
        client.set_terminated(run_id, "FAILED")
        raise


def register(uri: str, model_uri: str, name: str, alias: str, tags: dict[str, str]) -> str:
    """Register ``model_uri`` as a new version of ``name``, tag it and point ``alias`` at it; returns the version."""
    mlflow.set_tracking_uri(uri)
    version = mlflow.register_model(model_uri, name).version
    client = MlflowClient(uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, alias, version)
    return str(version)


def start_job_run(uri: str, experiment: str, run_name: str, tags: dict[str, str], parent_run_id: str | None = None):
    """``mlflow.start_run`` for a job: in ``experiment``, or nested under ``parent_run_id`` (in its experiment)."""
    if parent_run_id is None:
        experiment = experiment_id(uri, experiment)
    else:
        mlflow.set_tracking_uri(uri)
        experiment = MlflowClient(uri).get_run(parent_run_id).info.experiment_id
    return mlflow.start_run(experiment_id=experiment, run_name=run_name, tags=tags, parent_run_id=parent_run_id)


def alias_version(client: MlflowClient, name: str, alias: str):
    """The ``ModelVersion`` that ``name@alias`` points at, or None (no such model or alias)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def pinned_model_uri(model_uri: str, tracking_uri: str) -> str:
    """``models:/name/N`` for a ``models:/name@alias`` URI (the version the alias points at now), so a run that
    starts from it keeps using that version even if the alias moves; other URIs are returned unchanged."""
    found = registered_version(model_uri, tracking_uri)
    return model_uri if found is None else f"models:/{found[0]}/{found[1]}"


def registered_version(model_uri: str, tracking_uri: str) -> tuple[str, str] | None:
    """``(name, version)`` of a ``models:/name/N`` or ``models:/name@alias`` URI; None otherwise."""
    match = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@([\w.-]+))/?", model_uri)
    if not match:
        return None
    name, version, alias = match.groups()
    if alias:
        version = str(MlflowClient(tracking_uri).get_model_version_by_alias(name, alias).version)
    return name, version
