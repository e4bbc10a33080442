"""``visor serve``: the OpenAI-compatible endpoint (:mod:`jobs.serving`)."""

from __future__ import annotations

import typer

commands = typer.Typer()


@commands.command()
def serve(
    model: str = typer.Option("models:/visor@champion", help="MLflow model URI to serve."),
    host: str = typer.Option("127.0.0.1", help="Address of the HTTP proxy."),
    port: int = typer.Option(8000, help="Port of the HTTP proxy."),
    max_batch_size: int = typer.Option(8, min=1, help="Requests per generate batch."),
    max_ongoing_requests: int = typer.Option(32, min=1, help="In-flight requests per replica."),
    replicas: int = typer.Option(1, min=1, help="Model replicas."),
    reload_poll: float = typer.Option(0.0, min=0, help="Seconds between checks of the alias (0: only on "
                                      "POST /admin/reload)."),
    allow_image_urls: bool = typer.Option(False, help="Also accept http(s) image URLs (default: data URLs only)."),
    tracking_uri: str | None = typer.Option(None, help="MLflow tracking URI (default: env or ./mlflow.db)."),
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API on Ray Serve (set VISOR_API_TOKEN to require a token)."""
    import time

    from jobs.serving.openai_protocol import Limits
    from jobs.serving.serve import ServeConfig, start

    try:
        config = ServeConfig(model_uri=model, tracking_uri=tracking_uri, host=host, port=port,
                             num_replicas=replicas, max_batch_size=max_batch_size,
                             max_ongoing_requests=max_ongoing_requests, reload_poll_s=reload_poll,
                             limits=Limits(allow_image_urls=allow_image_urls))
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    start(config)
    typer.echo(f"serving {model} at http://{host}:{port}/v1 (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve as ray_serve

        ray_serve.shutdown()
