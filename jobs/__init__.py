"""Entry points run as Ray jobs, and the ``visor`` command line — one sub-package per concern.

``train`` (the Ray Train job), ``evaluation`` (scoring every budget, the policy job, the evaluation job),
``registry`` (MLflow conventions, the model format, promotion, retraining), ``serving`` (the Ray Serve
endpoint), ``cluster`` (connecting to Ray, job submission, Kubernetes manifests), ``demo`` (the local
demos) and ``cli`` (the ``visor`` commands). Beside them: ``config`` (the one config idiom: the
``Section`` base and ``load_config``), ``sections`` (config sections several jobs share), ``faults``
(test-only fault injection) and ``configs/`` (the shipped presets). Dependencies point one way,
``jobs → pipelines → visor_model``; each package's ``__init__`` says what it may import, and
``docs/DESIGN.md §2`` has the whole table.
"""
