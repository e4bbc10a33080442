"""The retrain job, ``visor retrain``: train → policy → evaluate → promote when the training data changed.

``config`` is its schema (``RetrainConfig``); ``retrain`` runs it (the lock, the parent MLflow run, the
stages). It sits above the jobs it chains: it may import ``jobs.train``, ``jobs.evaluation`` and
``jobs.registry`` (and what they may), never ``jobs.serving``, ``jobs.cluster``, ``jobs.demo`` or the CLI.
"""
