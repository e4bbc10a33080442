"""The training job, ``visor train``: budget-sampled training of the universal VISOR network on Ray Train.

``config`` is its schema (``TrainConfig``); ``driver`` runs on the driver (lists the shards once, opens
the MLflow run, runs the ``TorchTrainer``, registers the model); ``worker`` is the loop every Ray Train
worker runs, given its typed ``WorkerInputs``; ``model_setup`` builds the processor and the model and
freezes parameter groups; ``steps`` holds the Ray-free mechanics (optimizer, schedule, budget draws,
one optimizer step); ``checkpoint`` moves training state in and out of Ray Train checkpoints;
``convert`` turns a LLaVA-OneVision checkpoint into a VISOR model directory (``visor convert``). May
import ``jobs.config``, ``jobs.sections``, ``jobs.faults``, ``jobs.registry.tracking`` and
``jobs.registry.model_format``, ``jobs.ray_env``, ``pipelines`` and ``visor_model`` — never
evaluation, serving or the CLI.
"""
