"""Connecting to Ray the same way in every job.

With ``RAY_ADDRESS`` set (or an address given) the job joins that cluster;
otherwise ``ray.init()`` starts an embedded single-node instance. For the
embedded instance token authentication is turned off unless ``RAY_AUTH_MODE``
is already set: since Ray 2.59 a fresh local instance writes a token that a
later ``ray start`` / ``ray job submit`` on the same machine would then demand.
"""

from __future__ import annotations

import os


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address`` / ``RAY_ADDRESS``, or start a local Ray; a no-op when Ray is already up."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
             configure_logging=False)
