"""schemathesis hooks for the fuzz's second pass (``SCHEMATHESIS_HOOKS=tests.jobs.serving.fuzz_hooks``).

OpenAI's schema generates requests with some of its many optional parameters set, which VISOR refuses with a 400
naming the parameter before it reads the rest: most requests of the first pass end there. This pass drops every
top-level key VISOR does not implement from the generated JSON object before it is sent, so the fuzz reaches
what lies behind — messages, content parts, images, sampling values, generation.
"""

from __future__ import annotations

from typing import Any

import schemathesis

from jobs.serving.openai_protocol import SUPPORTED


@schemathesis.hook
def before_call(context: Any, case: Any, **kwargs: Any) -> None:
    """Keep only the parameters VISOR implements (in a JSON object body; other bodies are sent as generated)."""
    if isinstance(case.body, dict):
        case.body = {key: value for key, value in case.body.items() if key in SUPPORTED}
