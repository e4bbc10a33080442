"""The OpenAI-compatible endpoint on Ray Serve, ``visor serve``.

``serve`` is the deployment (FastAPI routes, reloading when the champion moves); ``engine`` the
decode loop of a replica (continuous batching; a failure fails only its own request);
``openai_protocol`` declares the chat-completion request as pydantic models, validated once (with
the limits, checks and OpenAI-style errors of ``jobs.inputs``, shared with the pyfunc model), and builds
client messages; ``openai_responses`` declares the responses (completion, chunk, model list, ``visor``);
``config`` holds the server settings (``ServeConfig``; ``Limits`` re-exported). May import
``jobs.config``, ``jobs.sections``, ``jobs.inputs``, ``jobs.faults``, ``jobs.registry.tracking`` and
``jobs.registry.model_format``, ``jobs.ray_env``, ``pipelines`` and ``visor_model`` — never
train, evaluation or the CLI.
"""
