"""The OpenAI chat-completions request, as VISOR accepts it, and errors in OpenAI's format.

:func:`parse_chat_request` turns a request body into a :class:`ChatRequest` (the whole
conversation, at most one decoded image, budget, τ, sampling settings, limits) or raises
:class:`ApiError` with the HTTP status and an OpenAI-style error object::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "...", "code": "..."}}

Accepted — the request semantics of OpenAI's API and vLLM's OpenAI-compatible server:

* ``messages``: every ``system``/``developer``/``user``/``assistant`` message, in order, becomes the
  conversation the processor's chat template renders (the template training uses; ``developer``,
  OpenAI's newer name for ``system``, is rendered as ``system``); content is a string or a list of
  ``text`` and ``image_url`` parts (``{"url": ...}`` with a ``data:`` URL, and http(s) URLs only
  when allowed), the image staying where the user put it (VISOR takes one image per request, and
  none is needed: a text-only chat is answered too); the text must be valid Unicode (no lone
  surrogates) and at most ``max_text_chars`` characters, checked before anything is tokenized;
* ``max_completion_tokens`` (or the older ``max_tokens``), ``temperature`` (0: greedy),
  ``top_p``, ``n`` (choices), ``stop`` (a string or up to 4), ``seed`` (same seed, same sampled
  answer), ``logprobs`` and ``top_logprobs``, ``stream`` and ``stream_options.include_usage``,
  ``model``, ``user`` (recorded by nobody: it changes no output);
* the extensions ``visor_budget`` (``"auto"`` or an integer) and ``visor_tau``.

Any other parameter OpenAI defines (``tools``, ``response_format``, ``audio``, penalties …) is
answered with a 400 naming it unless it is absent, null or at the value that means "off" — a
parameter is never silently ignored.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from PIL import Image

from jobs.inputs import ApiError, Limits, check_budget, check_max_tokens, check_text, decode, image_bytes

__all__ = ["ApiError", "ChatRequest", "image_data_url", "parse_chat_request", "user_messages"]

EXTENSIONS = ("visor_budget", "visor_tau")
SUPPORTED = {"messages", "model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "seed",
             "logprobs", "top_logprobs", "stream", "stream_options", "user", *EXTENSIONS}
OFF_VALUES: dict[str, tuple] = {  # unsupported parameters accepted at the value that turns them off
    "frequency_penalty": (0, 0.0), "presence_penalty": (0, 0.0), "logit_bias": ({},), "tools": ([],),
    "functions": ([],), "parallel_tool_calls": (True, False), "store": (False,), "metadata": ({},),
    "modalities": (["text"],), "service_tier": ("auto", "default"),
}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOP = 4
MAX_TOP_LOGPROBS = 20


@dataclass
class ChatRequest:
    """A validated request. ``conversation`` is in ``transformers``' chat format (``{"role", "content": [parts]}``,
    the image as a ``{"type": "image"}`` part where the user put it); ``image`` is that image (RGB) or None."""

    conversation: list[dict]
    image: Image.Image | None
    budget: str | int
    tau: float | None
    max_tokens: int
    temperature: float  # 0 = greedy
    top_p: float
    n: int
    stop: tuple[str, ...]
    seed: int | None
    logprobs: bool
    top_logprobs: int
    stream: bool
    include_usage: bool
    model: str | None

    @property
    def sampling(self) -> tuple:
        """What must be equal for requests to share one ``generate`` call."""
        return (self.temperature, self.top_p, self.seed)


def _image_bytes(url: Any, limits: Limits) -> bytes:
    if not isinstance(url, str):
        raise ApiError(400, "image_url.url must be a string", "messages")
    return image_bytes(url, limits, http=True)


def _parts(content: Any) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return content
    raise ApiError(400, "message content must be a string or a list of content parts", "messages")


def _conversation(messages: Any, limits: Limits) -> tuple[list[dict], list[Any]]:
    """``messages`` in ``transformers``' chat format, and the image URLs in order of appearance."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' is required and must be a non-empty list", "messages")
    conversation, urls = [], []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or message["role"] not in ROLES:
            raise ApiError(400, "each message needs a role of system, developer, user or assistant", "messages")
        role, content = ROLES[message["role"]], []
        for part in _parts(message.get("content")):
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                content.append({"type": "text", "text": part["text"]})
            elif part.get("type") == "image_url" and role == "user":
                image_url = part.get("image_url")
                if not isinstance(image_url, dict):
                    raise ApiError(400, 'an image_url part needs "image_url": {"url": "data:image/...;base64,..."} '
                                   f"(an object), got {type(image_url).__name__}", "messages")
                urls.append(image_url.get("url"))
                content.append({"type": "image"})
            else:
                raise ApiError(400, f"unsupported content part {part.get('type')!r} in a {role} message", "messages")
        conversation.append({"role": role, "content": content})
    if conversation[-1]["role"] != "user" or not any(
        part["type"] == "image" or part["text"].strip() for part in conversation[-1]["content"]
    ):
        raise ApiError(400, "the last message must be a user message with text or an image", "messages")
    check_text([part["text"] for message in conversation for part in message["content"] if part["type"] == "text"],
               limits)
    if len(urls) > limits.max_images:
        raise ApiError(400, f"{len(urls)} images: this model takes at most {limits.max_images} per request",
                       "messages", "too_many_images")
    return conversation, urls


def _unsupported(data: dict) -> None:
    for key, value in data.items():
        if key in SUPPORTED or value is None or value in OFF_VALUES.get(key, ()):
            continue
        raise ApiError(400, f"unsupported parameter {key!r}: VISOR does not implement it", key,
                       "unsupported_parameter")


def _number(data: dict, key: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = data.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        (low < value if low_open else low <= value) and value <= high
    ):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ApiError(400, f"{key} must be a number in {interval}, got {value!r}", key)
    return float(value)


def _integer(data: dict, key: str, default: int | None, low: int, high: int) -> int | None:
    value = data.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, f"{key} must be an integer in [{low}, {high}], got {value!r}", key)
    return value


def _stop(value: Any) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value if value is not None else []
    if not isinstance(stops, list) or len(stops) > MAX_STOP or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, f"stop must be a non-empty string or a list of up to {MAX_STOP} of them", "stop")
    return tuple(stops)


def parse_chat_request(body: bytes, limits: Limits, num_budgets: int) -> ChatRequest:
    """Validate a raw request body (see the module docstring); raises :class:`ApiError`."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"request body is not valid JSON: {err}", None, "invalid_json") from err
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object", None, "invalid_json")
    _unsupported(data)
    conversation, urls = _conversation(data.get("messages"), limits)
    image = decode(_image_bytes(urls[0], limits), limits) if urls else None

    budget = check_budget(data.get("visor_budget", "auto"), num_budgets)
    tau = data.get("visor_tau")
    if tau is not None:
        tau = _number(data, "visor_tau", 0.0, 0.0, 1.0)
    key = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = check_max_tokens(data[key] if data.get(key) is not None else min(64, limits.max_new_tokens),
                                  limits, key)
    logprobs = data.get("logprobs") or False
    if not isinstance(logprobs, bool):
        raise ApiError(400, f"logprobs must be a boolean, got {logprobs!r}", "logprobs")
    top_logprobs = _integer(data, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    if top_logprobs and not logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
    stream = bool(data.get("stream") or False)
    options = data.get("stream_options")
    if options is not None and (not stream or not isinstance(options, dict)
                                or set(options) - {"include_usage"}):
        raise ApiError(400, "stream_options takes only include_usage, and only with stream: true", "stream_options")
    return ChatRequest(
        conversation=conversation, image=image, budget=budget, tau=tau, max_tokens=max_tokens,
        temperature=_number(data, "temperature", 1.0, 0.0, 2.0), top_p=_number(data, "top_p", 1.0, 0.0, 1.0, True),
        n=_integer(data, "n", 1, 1, limits.max_choices), stop=_stop(data.get("stop")),
        seed=_integer(data, "seed", None, -(2**63), 2**63 - 1), logprobs=logprobs, top_logprobs=top_logprobs,
        stream=stream, include_usage=bool((options or {}).get("include_usage")), model=data.get("model"),
    )


def image_data_url(image: Image.Image) -> str:
    """A PNG ``data:`` URL of ``image`` (what clients put in an ``image_url`` part)."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def user_messages(question: str, image: Image.Image | None = None) -> list[dict]:
    """OpenAI ``messages`` for one user turn: the image (if any) as a data URL, then the question."""
    parts: list[dict] = [{"type": "text", "text": question}]
    if image is not None:
        parts.insert(0, {"type": "image_url", "image_url": {"url": image_data_url(image)}})
    return [{"role": "user", "content": parts}]
