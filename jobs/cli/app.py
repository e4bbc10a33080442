"""The root ``visor`` Typer app: every command module's commands, and the ``data``, ``jobs`` and ``infra`` groups."""

from __future__ import annotations

import typer

from jobs.cli import cluster, data, demo, evaluation, model, registry, retrain, serving, train

app = typer.Typer(help="VISOR: budget-adaptive vision-language model — jobs and tools.", no_args_is_help=True)
for module in (model, demo, train, evaluation, registry, retrain, serving, cluster):
    app.add_typer(module.commands)
app.add_typer(data.data_app, name="data")
app.add_typer(cluster.jobs_app, name="jobs")
app.add_typer(cluster.infra_app, name="infra")
