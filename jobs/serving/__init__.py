"""The OpenAI-compatible endpoint on Ray Serve, ``visor serve``.

``serve`` is the deployment (FastAPI routes, batching, reloading when the champion moves);
``openai_protocol`` parses and validates chat-completion requests, formats OpenAI-style errors and
builds client messages; ``config`` holds the server settings and request limits (``ServeConfig``,
``Limits``). May import ``jobs.config``, ``jobs.sections``, ``jobs.registry.tracking`` and
``jobs.registry.model_format``, ``jobs.cluster.ray_env``, ``pipelines`` and ``visor_model`` — never
train, evaluation or the CLI.
"""
