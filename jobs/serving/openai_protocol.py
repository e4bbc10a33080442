"""The OpenAI chat-completions request, as VISOR accepts it, and errors in OpenAI's format.

:func:`parse_chat_request` turns a request body into a :class:`ChatRequest`
(the question text, at most one decoded image, budget, τ, limits) or raises
:class:`ApiError` with the HTTP status and an OpenAI-style error object::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "...", "code": "..."}}

Accepted: ``messages`` (``system``/``user``/``assistant`` roles; content a string or
a list of ``text`` and ``image_url`` parts — ``data:`` URLs, and http(s) URLs only
when allowed), ``max_tokens`` (or ``max_completion_tokens``), ``temperature``,
``stream``, ``model``, and the extensions ``visor_budget`` (``"auto"`` or an
integer) and ``visor_tau``. The last user message is the question; the image may
sit in any user message (VISOR takes one image per request).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from PIL import Image

from jobs.serving.config import Limits
from pipelines.validate import Rejected, decode_image


class ApiError(Exception):
    """An error answered to the client: ``status`` and the OpenAI error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass
class ChatRequest:
    """A validated request: ``question`` (the text of the user turn), ``image`` (RGB or None),
    ``budget`` (``"auto"`` or a valid int), ``tau`` (None: the model's), ``max_tokens``,
    ``temperature`` (0 = greedy), ``stream``, ``model``."""

    question: str
    image: Image.Image | None
    budget: str | int
    tau: float | None
    max_tokens: int
    temperature: float
    stream: bool
    model: str | None


def _fetch(url: str, limits: Limits) -> bytes:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (only http(s) reach here)
            data = response.read(limits.max_image_bytes + 1)
    except OSError as err:
        raise ApiError(400, f"cannot fetch image_url: {err}", "messages", "invalid_image_url") from err
    return data


def _image_bytes(url: Any, limits: Limits) -> bytes:
    if not isinstance(url, str):
        raise ApiError(400, "image_url.url must be a string", "messages")
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or ";base64" not in header:
            raise ApiError(400, "image data URLs must be base64 encoded (data:image/png;base64,...)", "messages")
        if len(payload) * 3 // 4 > limits.max_image_bytes:
            raise ApiError(413, f"image is larger than {limits.max_image_bytes} bytes", "messages",
                           "image_too_large")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as err:
            raise ApiError(400, f"image data URL is not valid base64: {err}", "messages") from err
    if url.startswith(("http://", "https://")):
        if not limits.allow_image_urls:
            raise ApiError(400, "http(s) image URLs are disabled on this server; send a data URL", "messages",
                           "image_url_not_allowed")
        return _fetch(url, limits)
    raise ApiError(400, "image_url.url must be a data: URL (or http(s) when enabled)", "messages")


def _decode(data: bytes, limits: Limits) -> Image.Image:
    if len(data) > limits.max_image_bytes:
        raise ApiError(413, f"image is larger than {limits.max_image_bytes} bytes", "messages", "image_too_large")
    try:
        return decode_image(data, limits.max_image_pixels)
    except Rejected as err:
        code = "image_too_large" if err.reason == "decompression_bomb" else "invalid_image"
        raise ApiError(400, f"image rejected: {err.detail}", "messages", code) from err


def _parts(content: Any) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return content
    raise ApiError(400, "message content must be a string or a list of content parts", "messages")


def parse_chat_request(body: bytes, limits: Limits, num_budgets: int) -> ChatRequest:
    """Validate a raw request body (see the module docstring); raises :class:`ApiError`."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"request body is not valid JSON: {err}", None, "invalid_json") from err
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object", None, "invalid_json")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' is required and must be a non-empty list", "messages")
    question, images = None, []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise ApiError(400, "each message needs a role of system, user or assistant", "messages")
        texts = []
        for part in _parts(message.get("content")):
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") == "image_url" and message["role"] == "user":
                images.append((part.get("image_url") or {}).get("url"))
            else:
                raise ApiError(400, f"unsupported content part {part.get('type')!r} in a {message['role']} message",
                               "messages")
        if message["role"] == "user":
            question = " ".join(texts).strip()
    if not question:
        raise ApiError(400, "the last user message has no text", "messages")
    if len(images) > limits.max_images:
        raise ApiError(400, f"{len(images)} images: this model takes at most {limits.max_images} per request",
                       "messages", "too_many_images")
    image = _decode(_image_bytes(images[0], limits), limits) if images else None

    budget = data.get("visor_budget", "auto")
    if budget != "auto" and (isinstance(budget, bool) or not isinstance(budget, int)
                             or not 0 <= budget < num_budgets):
        raise ApiError(400, f"visor_budget must be \"auto\" or an integer in [0, {num_budgets - 1}], got {budget!r}",
                       "visor_budget", "invalid_budget")
    tau = data.get("visor_tau")
    if tau is not None and (not isinstance(tau, int | float) or not 0 <= tau <= 1):
        raise ApiError(400, f"visor_tau must be a number in [0, 1], got {tau!r}", "visor_tau")
    max_tokens = data.get("max_completion_tokens", data.get("max_tokens", min(64, limits.max_new_tokens)))
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= limits.max_new_tokens:
        raise ApiError(400, f"max_tokens must be an integer in [1, {limits.max_new_tokens}]", "max_tokens")
    temperature = data.get("temperature", 1.0)
    if not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
        raise ApiError(400, "temperature must be a number in [0, 2]", "temperature")
    return ChatRequest(question, image, budget, None if tau is None else float(tau), max_tokens, float(temperature),
                       bool(data.get("stream", False)), data.get("model"))


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
