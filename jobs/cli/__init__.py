"""The ``visor`` command line (``visor = "jobs.cli:app"``): one Typer app assembled in :mod:`jobs.cli.app`
from one module per concern (``model``, ``demo``, ``data``, ``train``, ``evaluation``, ``registry``,
``serving``, ``cluster``), each holding only argument parsing and printing; ``options`` makes a flag from
a config field. A command module imports, at module level, nothing heavier than Typer and the config
schemas (``jobs.config``, ``jobs.sections`` and the packages' ``config`` modules: pydantic only) — so
``visor --help`` answers at once; the job itself (torch, Ray, MLflow) is imported inside the command.
"""

from jobs.cli.app import app

__all__ = ["app"]
