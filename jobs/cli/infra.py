"""``visor infra render``: Kubernetes manifests from one values file (see :mod:`jobs.cluster.infra`)."""

from __future__ import annotations

from pathlib import Path

import typer

infra_app = typer.Typer(help="Cluster manifests (KubeRay, MLflow server, scheduled retraining).",
                        no_args_is_help=True)


@infra_app.command()
def render(
    values: Path = typer.Option(Path("infra/values.yaml"), exists=True, dir_okay=False, help="Values file."),
    out: Path = typer.Option(Path("infra/rendered"), help="Directory for the manifests."),
) -> None:
    """Render every manifest from the values file (namespace, image, bucket and URIs set in one place)."""
    from pydantic import ValidationError

    from jobs.cluster.infra import load_values
    from jobs.cluster.infra import render as render_manifests
    from jobs.train.config import describe_errors

    try:
        loaded = load_values(values)
    except ValidationError as err:
        raise typer.BadParameter(f"{values}: {describe_errors(err)}", param_hint="--values") from err
    for path in render_manifests(loaded, out):
        typer.echo(f"wrote {path}")
