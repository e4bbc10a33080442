"""The MLflow side of the pipeline: where runs go, how a model is stored and registered, and how a new
model becomes the champion.

``tracking`` holds the conventions every job follows (tracking URI, experiments, run names, registering
a version); ``model_format`` is how a VISOR model is logged to and loaded from MLflow (``pyfunc_model`` the
code MLflow logs with it); ``promote`` moves the ``champion`` alias (``visor promote``); ``config`` holds
``PromotionRule``. The lowest job package (``docs/DESIGN.md §2``): it imports only the modules directly in
``jobs/`` (``config``, ``sections``, ``inputs``…), MLflow and ``visor_model`` — every other job package builds
on it.
"""
