"""The ``visor`` command line (``visor = "jobs.cli:app"``)."""

from jobs.cli.app import app

__all__ = ["app"]
