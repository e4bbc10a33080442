"""``visor serve``: the OpenAI-compatible endpoint (:mod:`jobs.serving`)."""

from __future__ import annotations

import typer

from jobs.cli.options import VERBOSE, load, option, renamed_flag
from jobs.serving.config import Limits, ServeConfig

commands = typer.Typer()


@commands.command()
def serve(
    model: str = option(ServeConfig, "model"),
    host: str = option(ServeConfig, "host"),
    port: int = option(ServeConfig, "port"),
    max_batch_size: int = option(ServeConfig, "max_batch_size"),
    max_ongoing_requests: int = option(ServeConfig, "max_ongoing_requests"),
    replicas: int = option(ServeConfig, "replicas"),
    replica_gpus: float = option(ServeConfig, "replica_gpus"),
    device: str = option(ServeConfig, "device"),
    dtype: str = option(ServeConfig, "dtype"),
    image_cache_mb: float = option(ServeConfig, "image_cache_mb"),
    reload_poll_seconds: float = option(ServeConfig, "reload_poll_seconds"),
    reload_poll: float | None = renamed_flag("--reload-poll", "--reload-poll-seconds"),
    allow_image_urls: bool = option(Limits, "allow_image_urls"),
    tracking_uri: str | None = option(ServeConfig, "tracking_uri"),
    verbose: bool = VERBOSE,
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API on Ray Serve (set VISOR_API_TOKEN to require a token)."""
    import time

    from jobs.console import job_console
    from jobs.serving.serve import start

    config = load(ServeConfig, {
        "model": model, "host": host, "port": port, "max_batch_size": max_batch_size,
        "max_ongoing_requests": max_ongoing_requests, "replicas": replicas, "tracking_uri": tracking_uri,
        "replica_gpus": replica_gpus, "device": device, "dtype": dtype,
        "image_cache_mb": image_cache_mb,
        "reload_poll_seconds": reload_poll_seconds if reload_poll is None else reload_poll,
        "limits": {"allow_image_urls": allow_image_urls},
    })
    with job_console("serve", verbose) as console:
        start(config)
        console.say(f"serving {model} at http://{host}:{port}/v1 (Ctrl-C to stop)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            from ray import serve as ray_serve

            ray_serve.shutdown()
