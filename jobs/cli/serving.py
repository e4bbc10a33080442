"""``visor serve``: the OpenAI-compatible endpoint (:mod:`jobs.serving`)."""

from __future__ import annotations

import typer

from jobs.cli.options import VERBOSE, JobCommand, job_command
from jobs.serving.config import ServeConfig

commands = typer.Typer()

SERVE = JobCommand(ServeConfig, ("model", "host", "port", "max_batch_size", "max_ongoing_requests", "replicas",
                                 "replica_gpus", "device", "dtype", "image_cache_mb", "reload_poll_seconds",
                                 "limits.allow_image_urls", "tracking_uri"),
                   renamed={"--reload-poll": "reload_poll_seconds"})


@job_command(commands, "serve", SERVE)
def serve(config: ServeConfig, verbose: bool = VERBOSE) -> None:
    """Serve the model over an OpenAI-compatible HTTP API on Ray Serve (set VISOR_API_TOKEN to require a token)."""
    import time

    from jobs.console import job_console
    from jobs.serving.serve import start

    with job_console("serve", verbose) as console:
        start(config)
        console.say(f"serving {config.model} at http://{config.host}:{config.port}/v1 (Ctrl-C to stop)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            from ray import serve as ray_serve

            ray_serve.shutdown()
