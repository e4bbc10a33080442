"""The OpenAI-compatible endpoint on Ray Serve, ``visor serve``.

``serve`` is the deployment (FastAPI routes, batching, reloading when the champion moves) and its
settings; ``openai_protocol`` parses and validates chat-completion requests and formats OpenAI-style
errors. May import ``jobs.registry.tracking`` and ``jobs.registry.model_format``, ``jobs.cluster.ray_env``,
``pipelines`` and ``visor_model`` — never train, evaluation or the CLI.
"""
