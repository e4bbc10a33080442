"""What a submitted job's paths mean: what they meant on the submitting machine, wherever the job runs.

A job submitted through the Ray Jobs API runs in a temporary ``working_dir`` on the cluster. A relative shard
spec, storage path or ``sqlite:///mlflow.db`` would resolve there — the shards are missing, and the run, the
registered model and the checkpoints land in a directory Ray deletes. :func:`localize` therefore loads the
submitted config here (file or preset, with its ``--set`` overrides), and

* for a head on this machine (the dashboard address is a loopback or this host's name), makes every relative
  local path absolute (``sqlite:///x.db`` → ``sqlite:////abs/x.db``) and forwards the tracking store the job
  would have used here as ``MLFLOW_TRACKING_URI``;
* for any other cluster, refuses the submission before anything is uploaded, naming every field that holds a
  relative path or a SQLite store (use ``s3://`` URIs and an MLflow tracking server there). An absolute path
  is taken as a path on the cluster's nodes (a volume they mount, e.g. ``/models/…``) and shipped as is.

The job's own arguments get the same treatment for the options that take a path or a store (:data:`PATH_OPTIONS`:
``--data``, ``--out``, ``--model``, ``--tracking-uri``, and the ``URI`` of ``--baseline NAME=URI``), so
``visor submit evaluate -- --data 'demo-data/eval-*.tar'`` reads the shards it would read here. The result is the
resolved config the job gets (all keys written out; overrides already applied) and its arguments.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
SQLITE = "sqlite:///"
# (section, key) of every field of a training config (or one of its stages) that may hold a local path
TRAIN_PATHS = (("data", "train"), ("model", "path"), ("model", "processor"), ("run", "storage_path"),
               ("mlflow", "tracking_uri"))
RETRAIN_PATHS = (("policy", "data"), (None, "eval_data"), (None, "lock_dir"))
TRAIN_CONFIG_NAME = "submitted-train-config.yaml"
# options of the jobs' own arguments (`--opt value` or `--opt=value`) whose value may be a local path or store;
# --baseline's value is NAME=URI
PATH_OPTIONS = ("--data", "--out", "--model", "--tracking-uri", "--baseline")


def is_local_head(address: str) -> bool:
    """Whether the Ray dashboard at ``address`` runs on this machine (shares its filesystem)."""
    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    return host in LOOPBACK or host in {socket.gethostname(), socket.getfqdn()}


def local_path(value: str) -> str | None:
    """The filesystem path ``value`` names on this machine, or ``None`` for a URI (``s3://``, ``models:/`` …)."""
    if value.startswith(SQLITE):
        return value[len(SQLITE):]
    return None if SCHEME.match(value) else value


def absolute(value: str, cwd: Path) -> str:
    """``value`` with a relative local path made absolute against ``cwd`` (URIs unchanged)."""
    path = local_path(value)
    if path is None or Path(path).is_absolute():
        return value
    resolved = str(cwd / path)
    return f"{SQLITE}{resolved}" if value.startswith(SQLITE) else resolved


class Localizer:
    """Rewrites (local head) or collects (remote cluster: relative paths, SQLite stores) the local paths of a
    config's fields."""

    def __init__(self, local_head: bool, cwd: Path) -> None:
        self.local_head, self.cwd = local_head, cwd
        self.unreachable: list[str] = []

    def field(self, name: str, value: Any) -> Any:
        if isinstance(value, list):
            return [self.field(name, one) for one in value]
        path = local_path(value) if isinstance(value, str) else None
        if path is None:
            return value
        if self.local_head:
            return absolute(value, self.cwd)
        if value.startswith(SQLITE) or not Path(path).is_absolute():
            self.unreachable.append(f"{name} ({value!r})")
        return value

    def fields(self, data: dict[str, Any], paths: tuple, prefix: str = "") -> None:
        """Localize ``data``'s ``paths`` in place (missing sections and keys are skipped)."""
        for section, key in paths:
            holder = data if section is None else data.get(section)
            if isinstance(holder, dict) and holder.get(key) is not None:
                name = f"{prefix}{section + '.' if section else ''}{key}"
                holder[key] = self.field(name, holder[key])

    def train(self, data: dict[str, Any]) -> dict[str, Any]:
        self.fields(data, TRAIN_PATHS)
        for index, stage in enumerate(data.get("stages") or []):
            self.fields(stage, TRAIN_PATHS, prefix=f"stages[{index}].")
        return data

    def option(self, name: str, value: str) -> str:
        """One value of the path option ``name`` (``--baseline``: the URI of ``NAME=URI``)."""
        label, separator, uri = value.partition("=") if name == "--baseline" else ("", "", value)
        return f"{label}{separator}{self.field(name, uri)}"

    def arguments(self, args: list[str]) -> list[str]:
        """A job's arguments with the values of its :data:`PATH_OPTIONS` localized (everything else as given)."""
        localized: list[str] = []
        pending: str | None = None  # a path option whose value is the next argument
        for arg in args:
            name, separator, value = arg.partition("=")
            if pending is not None:
                localized.append(self.option(pending, arg))
                pending = None
            elif name in PATH_OPTIONS and separator:
                localized.append(f"{name}={self.option(name, value)}")
            else:
                localized.append(arg)
                pending = arg if arg in PATH_OPTIONS else None
        return localized


class Localized(NamedTuple):
    """What :func:`localize` gives a submission."""

    configs: dict[str, dict[str, Any]]  # file name → content; "main": the job's config
    env: dict[str, str]  # added to the job's environment
    args: list[str]  # the job's own arguments


def localize(job: str, config: str | None, overrides: list[str], args: list[str], address: str,
             cwd: Path | None = None, remote: bool = False) -> Localized:
    """The config files to ship, the environment to add (``MLFLOW_TRACKING_URI``: the store the job would use
    here) and the job's arguments, their paths localized.

    ``config`` is a file or preset of ``job`` (``train`` or ``retrain``; other jobs ship none), ``overrides`` its
    ``key=value`` settings, ``args`` the job's other arguments; ``remote`` treats a local address as a remote
    cluster (a ``kubectl port-forward``). Raises ``ValueError`` naming every unreachable field or argument for a
    remote cluster.
    """
    from jobs.config import load_config
    from jobs.retrain.config import RetrainConfig
    from jobs.train.config import load_train_config

    cwd = cwd or Path.cwd()
    localizer = Localizer(is_local_head(address) and not remote, cwd)
    files: dict[str, dict[str, Any]] = {}
    if config is not None and job == "train":
        files["main"] = localizer.train(load_train_config(config, overrides).model_dump(mode="json"))
    elif config is not None and job == "retrain":
        retrain = load_config(RetrainConfig, config, overrides)
        train = load_train_config(retrain.train_config, retrain.train_overrides)
        files["main"] = retrain.model_dump(mode="json") | {"train_config": TRAIN_CONFIG_NAME, "train_overrides": []}
        localizer.fields(files["main"], RETRAIN_PATHS)
        files[TRAIN_CONFIG_NAME] = localizer.train(train.model_dump(mode="json"))
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or f"{SQLITE}mlflow.db"  # the job's default store here
    env = {"MLFLOW_TRACKING_URI": localizer.field("MLFLOW_TRACKING_URI", tracking)}
    args = localizer.arguments(args)
    if localizer.unreachable:
        raise ValueError(
            f"the cluster at {address} is not this machine, so these paths would point into the job's temporary "
            f"working_dir or a node's disk: "
            f"{'; '.join(localizer.unreachable)}. Use s3:// URIs for data, models and run.storage_path, and set "
            "MLFLOW_TRACKING_URI to a tracking server (`mlflow server`).")
    return Localized(files, env, args)
