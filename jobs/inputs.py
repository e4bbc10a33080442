"""What a request to a VISOR model may hold, checked the same way by the endpoint (:mod:`jobs.serving`) and by
the ``mlflow.pyfunc`` model (:class:`jobs.registry.model_format.VisorPyfunc`): the same :class:`Limits`, the same
messages, raised as :class:`ApiError` (an HTTP status and OpenAI's error object, :class:`ErrorResponse`)::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "...", "code": "..."}}

Imports only ``jobs.config`` and ``pipelines`` (``options``, ``validate``): the pyfunc model carries this module in
its code and loads where Ray is not installed.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from PIL import Image
from pydantic import BaseModel, Field

from jobs.config import Section, default_of
from pipelines.options import ReadOptions
from pipelines.validate import Rejected, decode_image


class Limits(Section):
    """What a request may ask for; anything beyond is answered with a 4xx."""

    max_image_bytes: int = Field(10_000_000, ge=1, description="Largest encoded image accepted, in bytes.")
    max_image_pixels: int = Field(default_of(ReadOptions, "max_image_pixels"), ge=1,
                                  description="Largest image accepted, in pixels (decompression bombs).")
    max_new_tokens: int = Field(512, ge=1, description="Largest max_tokens a request may ask for.")
    max_text_chars: int = Field(200_000, ge=1, description="Most characters of text in a request (all messages), "
                                "checked before tokenizing; the model's context is checked after.")
    allow_image_urls: bool = Field(False, description="Also accept http(s) image URLs (default: data URLs only).")
    max_images: int = Field(1, ge=1, description="Images per request.")
    max_choices: int = Field(8, ge=1, description="Largest n (choices per request).")


class ErrorInfo(BaseModel):
    """OpenAI's error object: ``type`` is the kind (``invalid_request_error``, ``authentication_error``,
    ``rate_limit_error``, ``server_error``), ``param`` the request field at fault, ``code`` a machine-readable
    reason."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """The body of every error answer: ``{"error": {...}}``."""

    error: ErrorInfo


class ApiError(Exception):
    """An error answered to the client: ``status`` and the OpenAI error body (:attr:`body`)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.body = ErrorResponse(error=ErrorInfo(message=message, type=kind, param=param, code=code))


def must_be(key: str, expected: str, value: Any, code: str | None = None) -> ApiError:
    """The 400 for a field of the wrong type or out of range: ``"<key> must be <expected>, got <value>"``."""
    return ApiError(400, f"{key} must be {expected}, got {value!r}", key, code)


def _fetch(url: str, limits: Limits) -> bytes:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (only http(s) reach here)
            data = response.read(limits.max_image_bytes + 1)
    except OSError as err:
        raise ApiError(400, f"cannot fetch image_url: {err}", "messages", "invalid_image_url") from err
    return data


def image_bytes(url: str, limits: Limits, http: bool = False, bare_base64: bool = False) -> bytes:
    """The encoded image of a ``data:`` URL (with ``http``: or an http(s) URL, when ``limits`` allow them; with
    ``bare_base64``: or bare base64); raises :class:`ApiError`."""
    if bare_base64 and not url.startswith("data:"):
        url = "data:image/*;base64," + url
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
    if http and url.startswith(("http://", "https://")):
        if not limits.allow_image_urls:
            raise ApiError(400, "http(s) image URLs are disabled on this server; send a data URL", "messages",
                           "image_url_not_allowed")
        return _fetch(url, limits)
    raise ApiError(400, "image_url.url must be a data: URL (or http(s) when enabled)", "messages")


def decode(data: bytes, limits: Limits) -> Image.Image:
    """The RGB image of encoded bytes within ``limits``; raises :class:`ApiError`."""
    if len(data) > limits.max_image_bytes:
        raise ApiError(413, f"image is larger than {limits.max_image_bytes} bytes", "messages", "image_too_large")
    try:
        return decode_image(data, limits.max_image_pixels)
    except Rejected as err:
        code = "image_too_large" if err.reason == "decompression_bomb" else "invalid_image"
        detail = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", err.detail)
        if "cannot identify image file" in detail:
            detail += " (not an image in a format Pillow reads: PNG, JPEG, WebP, GIF, BMP, TIFF ...)"
        raise ApiError(400, f"image rejected: {detail}", "messages", code) from err


def check_text(texts: list[str], limits: Limits, param: str = "messages") -> None:
    """Refuse text that is not valid Unicode (lone surrogates) or longer than ``limits.max_text_chars`` in all, before
    anything tokenizes it; raises :class:`ApiError`."""
    total = sum(len(text) for text in texts)
    if total > limits.max_text_chars:
        raise ApiError(400, f"the text has {total} characters, more than this server accepts "
                       f"({limits.max_text_chars})", param, "context_length_exceeded")
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ApiError(400, f"the text is not valid Unicode: {err.reason} at character {err.start} "
                           f"({text[err.start:err.end]!r})", param, "invalid_text") from err


def check_max_tokens(value: Any, limits: Limits, key: str = "max_tokens") -> int:
    """``value`` as the number of new tokens, an integer in ``[1, limits.max_new_tokens]``; raises :class:`ApiError`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limits.max_new_tokens:
        raise must_be(key, f"an integer in [1, {limits.max_new_tokens}]", value)
    return value


def check_context(prompt_tokens: int, max_tokens: int, limit: int) -> None:
    """Refuse a prompt that leaves no room for ``max_tokens`` in the model's context ``limit``."""
    if prompt_tokens + max_tokens > limit:
        raise ApiError(400, f"prompt of {prompt_tokens} tokens + max_tokens {max_tokens} exceeds the model's "
                       f"context of {limit} tokens", "messages", "context_length_exceeded")


def check_budget(value: Any, num_budgets: int, key: str = "visor_budget", strings: bool = False) -> str | int:
    """``value`` as a budget: ``"auto"`` or an integer in ``[0, num_budgets)`` (with ``strings``, also such an integer
    written as a string); raises :class:`ApiError`."""
    if strings and isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value == "auto" or (not isinstance(value, bool) and isinstance(value, int) and 0 <= value < num_budgets):
        return value
    raise must_be(key, f'"auto" or an integer in [0, {num_budgets - 1}]', value, "invalid_budget")
