"""``visor infra render``: Kubernetes manifests from one values file (see :mod:`jobs.infra`)."""

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

    from jobs.infra import load_values
    from jobs.infra import render as render_manifests

    try:
        loaded = load_values(values)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise typer.BadParameter(f"{values}: {problems}", param_hint="--values") from err
    for path in render_manifests(loaded, out):
        typer.echo(f"wrote {path}")
