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

The fields that may hold a local path are marked in the schemas (``Annotated[str, LOCAL_PATH]``, found by
:func:`jobs.config.path_fields`), so every job's resolved config — its file or preset, flags and ``--set``
overrides already applied — is treated the same way: ``visor submit evaluate --data 'demo-data/eval-*.tar'``
reads the shards it would read here. A retrain's training config is nested in it, shipped the same way.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

from jobs.config import Section, path_fields
from jobs.sections import DEFAULT_STORE

LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
SQLITE = "sqlite:///"


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
        if isinstance(value, dict):
            return {key: self.field(f"{name}.{key}", one) for key, one in value.items()}
        path = local_path(value) if isinstance(value, str) else None
        if path is None:
            return value
        if self.local_head:
            return absolute(value, self.cwd)
        if value.startswith(SQLITE) or not Path(path).is_absolute():
            self.unreachable.append(f"{name} ({value!r})")
        return value

    def config(self, config: Section) -> dict[str, Any]:
        """``config`` as the mapping to ship, with every path field localized."""
        data = config.model_dump(mode="json")
        for name, holder, key in path_fields(type(config), data):
            holder[key] = self.field(name, holder[key])
        return data


class Localized(NamedTuple):
    """What :func:`localize` gives a submission."""

    configs: dict[str, dict[str, Any]]  # file name → content; "main": the job's config
    env: dict[str, str]  # added to the job's environment


def localize(config: Section, address: str, cwd: Path | None = None, remote: bool = False) -> Localized:
    """The config files to ship (``config``, a job's resolved config, a retrain's training config nested) and the
    environment to add (``MLFLOW_TRACKING_URI``: the store the job would use here), their paths localized.

    ``remote`` treats a local address as a remote cluster (a ``kubectl port-forward``). Raises ``ValueError``
    naming every unreachable field for a remote cluster.
    """
    localizer = Localizer(is_local_head(address) and not remote, cwd or Path.cwd())
    files = {"main": localizer.config(config)}
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or f"{SQLITE}{DEFAULT_STORE}"  # the job's default store here
    env = {"MLFLOW_TRACKING_URI": localizer.field("MLFLOW_TRACKING_URI", tracking)}
    if localizer.unreachable:
        raise ValueError(
            f"the cluster at {address} is not this machine, so these paths would point into the job's temporary "
            f"working_dir or a node's disk: "
            f"{'; '.join(localizer.unreachable)}. Use s3:// URIs for data, models and run.storage_path, and set "
            "MLFLOW_TRACKING_URI to a tracking server (`mlflow server`).")
    return Localized(files, env)
