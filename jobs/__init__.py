"""Entry points run as Ray jobs, and the ``visor`` command-line interface (``jobs.cli``)."""
