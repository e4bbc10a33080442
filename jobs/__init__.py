"""Entry points run as Ray jobs, and the ``visor`` command line — one sub-package per concern.

``train`` (the Ray Train job), ``evaluation`` (scoring every budget, the policy job, the evaluation job),
``registry`` (MLflow conventions, the model format, promotion), ``serving`` (the Ray Serve endpoint),
``retrain`` (train → policy → evaluate → promote), ``cluster`` (job submission, Kubernetes manifests),
``demo`` (the local demos) and ``cli`` (the ``visor`` commands). Beside them, below every package:
``config`` (the one config idiom: the ``Section`` base and ``load_config``), ``sections`` (config sections
several jobs share), ``console`` (what a command prints), ``ray_env`` (connecting to Ray), ``faults``
(test-only fault injection), ``inputs`` and ``inference_device``, and ``configs/`` (the shipped presets).
The packages are layers (``docs/DESIGN.md §2`` has the table, ``tests/test_layers.py`` checks it): a
module imports from its own package and lower layers only.
"""
