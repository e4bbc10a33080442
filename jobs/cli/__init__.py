"""The ``visor`` command line (``visor = "jobs.cli:app"``): one Typer app assembled in :mod:`jobs.cli.app`
from one module per concern (``model``, ``demo``, ``data``, ``train``, ``evaluation``, ``registry``,
``serving``, ``cluster``), each holding only argument parsing and printing. A command module imports
nothing heavier than Typer at module level — so ``visor --help`` answers at once; the job itself
(torch, Ray, MLflow) is imported inside the command that runs it.
"""

from jobs.cli.app import app

__all__ = ["app"]
