"""The MLflow side of the pipeline: where runs go, how a model is stored and registered, and how a new
model becomes the champion.

``tracking`` holds the conventions every job follows (tracking URI, experiments, run names, registering
a version); ``model_format`` is how a VISOR model is logged to and loaded from MLflow; ``promote`` moves
the ``champion`` alias (``visor promote``); ``retrain`` runs train → policy → evaluate → promote when
the data changed (``visor retrain``); ``config`` holds ``PromotionRule`` and ``RetrainConfig``.
``tracking``, ``model_format`` and ``promote`` import only ``jobs.config``, ``jobs.sections``, MLflow
and ``visor_model`` (``model_format`` also ``jobs.inputs``, the request checks it shares with the
endpoint) — every other job package builds on them; ``retrain`` alone drives the other
packages (``jobs.train``, ``jobs.evaluation``).
"""
