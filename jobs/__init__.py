"""Entry points run as Ray jobs, and the ``visor`` command line — one sub-package per concern.

``train`` (the Ray Train job), ``evaluation`` (scoring every budget, the policy job, the evaluation job),
``registry`` (MLflow conventions, the model format, promotion, retraining), ``serving`` (the Ray Serve
endpoint), ``cluster`` (connecting to Ray, job submission, Kubernetes manifests), ``demo`` (the local
demos) and ``cli`` (the ``visor`` commands). Dependencies point one way, ``jobs → pipelines →
visor_model``; inside ``jobs`` each package's ``__init__`` says what it may import.
"""
