"""``python -m jobs.cli …``: the ``visor`` command (what ``visor submit`` and the RayJob entrypoints run)."""

from jobs.cli import app

app()
