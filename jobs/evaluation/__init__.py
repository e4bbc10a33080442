"""Scoring every budget on every sample and what is built on it: the policy job (``visor train-policy``)
and the evaluation job (``visor evaluate``).

``scoring`` is the batch inference (Ray Data actors holding the model); ``generation`` answers samples that
name a benchmark metric greedily and scores them with it (``metrics``: each benchmark's metric, once);
``policy`` labels budget sufficiency, trains the policy head and picks τ; ``evaluate`` reports accuracy,
FLOPs and latency per budget and under the policy, as a typed ``report`` (``EvalReport``); ``config`` holds
their settings (``ScoreOptions``, ``PolicyTraining``, ``PolicyConfig``). May import ``jobs.config``,
``jobs.sections``, ``jobs.registry.tracking`` and ``jobs.registry.model_format``, ``jobs.ray_env``,
``pipelines`` and ``visor_model`` — never train, serving or the CLI.
"""
