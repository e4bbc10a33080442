"""Connecting to Ray the same way in every job.

With ``RAY_ADDRESS`` set (or an address given) the job joins that cluster. Otherwise it
looks at the cluster file the last ``ray start`` on this machine wrote
(``<RAY_TMPDIR or /tmp>/ray/ray_current_cluster``): it joins that cluster when its GCS
answers within :data:`PROBE_SECONDS`, and starts an embedded single-node instance when
there is no file or the file is stale (a ``ray start`` that ended uncleanly) — plain
``ray.init()`` would retry a stale address forever. Either way it prints one line saying
which. For the embedded instance token authentication is turned off unless
``RAY_AUTH_MODE`` is already set: since Ray 2.59 a fresh local instance writes a token that
a later ``ray start`` / ``ray job submit`` on the same machine would then demand.
"""

from __future__ import annotations

import os
import socket

from jobs.console import current

PROBE_SECONDS = 3.0


def recorded_cluster(temp_dir: str | None = None) -> tuple[str | None, bool]:
    """``(address, alive)``: the GCS address in Ray's cluster file (``None`` without one) and whether a TCP
    connection to it opens within :data:`PROBE_SECONDS`."""
    from ray._private.utils import read_ray_address

    address = read_ray_address(temp_dir)
    if not address:
        return None, False
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_SECONDS):
            return address, True
    except (OSError, ValueError):
        return address, False


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address`` / ``RAY_ADDRESS`` / a live local cluster, or start a local Ray; a no-op when Ray is
    already up."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        recorded, alive = recorded_cluster()
        if alive:
            address = recorded
            current().say(f"joining the local Ray cluster at {address} (started by `ray start`)")
        else:
            why = (f"; the cluster file names {recorded}, which does not answer (a `ray start` that ended "
                   "uncleanly — `ray stop --force` removes the file)") if recorded else ""
            current().say(f"starting a local Ray instance{why}")
            address = "local"
    if address == "local":
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address=address, num_cpus=num_cpus if address == "local" else None, include_dashboard=False,
             configure_logging=False)
