"""The OpenAI chat-completions request as VISOR accepts it, as pydantic models (as vLLM declares its
``ChatCompletionRequest``), validated once, with errors in OpenAI's format.

:func:`parse_chat_request` validates a request body into a :class:`ChatCompletionRequest` against the server's
:class:`RequestBounds` (its :class:`~jobs.inputs.Limits` and the served model's number of budgets) or raises
:class:`ApiError` with the HTTP status and OpenAI's error object::

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
parameter is never silently ignored. A null parameter is the same as an absent one.

How a field is refused is declared on it: :class:`Checked` (a strictly typed scalar, in its interval) answers
``"<field> must be a number in [0, 2], got 'x'"``; the structure of ``messages`` answers the message of the level
that failed (a message's role, its content, a content part, an ``image_url``); the checks shared with the pyfunc
model (:mod:`jobs.inputs`: ``max_tokens``, ``visor_budget``, the text, the image) are called as they are. Each
check raises :class:`ApiError` itself, which pydantic lets through unchanged (it collects only ``ValueError``\\ s):
the first check that fails is the answer.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, Literal

from PIL import Image
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    PlainValidator,
    PrivateAttr,
    Strict,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    model_validator,
)
from pydantic_core import core_schema

from jobs.inputs import ApiError, Limits, check_budget, check_max_tokens, check_text, decode, image_bytes, must_be

__all__ = ["SUPPORTED", "ApiError", "ChatCompletionRequest", "RequestBounds", "image_data_url", "parse_chat_request",
           "user_messages"]

OFF_VALUES: dict[str, tuple] = {  # unsupported parameters accepted at the value that turns them off
    "frequency_penalty": (0, 0.0), "presence_penalty": (0, 0.0), "logit_bias": ({},), "tools": ([],),
    "functions": ([],), "parallel_tool_calls": (True, False), "store": (False,), "metadata": ({},),
    "modalities": (["text"],), "service_tier": ("auto", "default"),
}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOP = 4
MAX_TOP_LOGPROBS = 20
MESSAGES_REQUIRED = "'messages' is required and must be a non-empty list"
BAD_CONTENT = "message content must be a string or a list of content parts"
BAD_STREAM_OPTIONS = "stream_options takes only include_usage, and only with stream: true"
KINDS = {bool: "a boolean", str: "a string", int: "an integer", float: "a number"}  # what a Checked field must be


@dataclass(frozen=True)
class RequestBounds:
    """What a request is validated against (pydantic's validation ``context``): the server's limits and the number
    of budgets of the model it serves."""

    limits: Limits
    num_budgets: int


def _bounds(info: ValidationInfo) -> RequestBounds:
    if not isinstance(info.context, RequestBounds):
        raise TypeError("validate a ChatCompletionRequest with context=RequestBounds(limits, num_budgets)")
    return info.context


def _number_text(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Checked:
    """``Annotated`` metadata of a scalar request field: strictly the type it annotates (no booleans or strings for
    a number, no floats for an integer), in ``[low, high]`` when bounded (``(low, high]`` with ``low_open``;
    ``high`` may name the :class:`~jobs.inputs.Limits` field that bounds it on this server), else refused:
    ``"<field> must be a number in [0, 2], got 'x'"`` (400, ``param`` the field)."""

    low: float | None = None
    high: float | str | None = None
    low_open: bool = False

    def __get_pydantic_core_schema__(self, source: type, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        schema = handler(source)
        schema["strict"] = True
        return core_schema.with_info_wrap_validator_function(partial(self._validate, KINDS[source]), schema)

    def _validate(self, kind: str, value: Any, handler: Callable[[Any], Any], info: ValidationInfo) -> Any:
        high = getattr(_bounds(info).limits, self.high) if isinstance(self.high, str) else self.high
        expected = kind if self.low is None else (
            f"{kind} in {'(' if self.low_open else '['}{_number_text(self.low)}, {_number_text(high)}]")
        try:
            checked = handler(value)
        except ValidationError:
            raise must_be(info.field_name, expected, value) from None
        if self.low is not None and not ((self.low < checked if self.low_open else self.low <= checked)
                                         and checked <= high):
            raise must_be(info.field_name, expected, value)
        return checked


def _refused(message: Callable[[Any], str], param: str) -> WrapValidator:
    """``Annotated`` metadata: the value as the annotation before it validates it, or — when that fails —
    :class:`ApiError` 400 with ``message(value)`` and ``param`` (checks nested inside raise their own)."""
    def validate(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise ApiError(400, message(value), param) from None

    return WrapValidator(validate)


def _shared_check(check: Callable[[Any, RequestBounds, str], Any]) -> PlainValidator:
    """``Annotated`` metadata: the value as one of :mod:`jobs.inputs`' checks (shared with the pyfunc model) takes
    it: ``check(value, bounds, field name)``."""
    return PlainValidator(lambda value, info: check(value, _bounds(info), info.field_name))


def _part_refusal(role: str) -> WrapValidator:
    return _refused(lambda part: f"unsupported content part {part.get('type')!r} in a {role} message"
                    if isinstance(part, dict) else BAD_CONTENT, "messages")


def _image_url_refusal(value: Any) -> str:
    if isinstance(value, dict):
        return "image_url.url must be a string"
    return ('an image_url part needs "image_url": {"url": "data:image/...;base64,..."} (an object), '
            f"got {type(value).__name__}")


def _message_refusal(message: Any) -> str:
    """A message that failed as a whole: its role, or (with a role) its content, which it lacks."""
    role = message.get("role") if isinstance(message, dict) else None
    if isinstance(role, str) and role in ROLES:
        return BAD_CONTENT
    return "each message needs a role of system, developer, user or assistant"


class TextPart(BaseModel):
    """A ``text`` content part."""

    type: Literal["text"]
    text: Annotated[str, Strict()]


class ImageURL(BaseModel):
    """An ``image_url`` part's object: ``url`` is a ``data:`` URL (or http(s), where the server allows them)."""

    url: Annotated[str, Strict()]


class ImagePart(BaseModel):
    """An ``image_url`` content part (user messages only)."""

    type: Literal["image_url"]
    image_url: Annotated[ImageURL, _refused(_image_url_refusal, "messages")]


SystemPart = Annotated[TextPart, _part_refusal("system")]
AssistantPart = Annotated[TextPart, _part_refusal("assistant")]
UserPart = Annotated[TextPart | ImagePart, Field(discriminator="type"), _part_refusal("user")]
_content_refusal = _refused(lambda _: BAD_CONTENT, "messages")


class ChatMessage(BaseModel):
    """What every message has: a role and content, as ``transformers``' chat format takes it (:meth:`parts`)."""

    role: str
    content: str | list[TextPart | ImagePart]

    def parts(self) -> list[dict]:
        """The content as ``transformers``' parts: ``{"type": "text", "text": ...}``, an image as
        ``{"type": "image"}`` where it was."""
        if isinstance(self.content, str):
            return [{"type": "text", "text": self.content}]
        return [{"type": "text", "text": part.text} if isinstance(part, TextPart) else {"type": "image"}
                for part in self.content]


class SystemMessage(ChatMessage):
    """A ``system`` message, or ``developer`` (OpenAI's newer name for it); text only."""

    role: Literal["system", "developer"]
    content: Annotated[str | list[SystemPart], _content_refusal]


class UserMessage(ChatMessage):
    """A ``user`` message: text and image parts."""

    role: Literal["user"]
    content: Annotated[str | list[UserPart], _content_refusal]


class AssistantMessage(ChatMessage):
    """An earlier ``assistant`` answer; text only."""

    role: Literal["assistant"]
    content: Annotated[str | list[AssistantPart], _content_refusal]


def _image_urls(messages: list[ChatMessage]) -> list[str]:
    """The URLs of the ``image_url`` parts of ``messages``, in order."""
    return [part.image_url.url for message in messages if not isinstance(message.content, str)
            for part in message.content if isinstance(part, ImagePart)]


def _texts(messages: list[ChatMessage]) -> list[str]:
    """The text parts of ``messages``, in order (a string content is one)."""
    return [part["text"] for message in messages for part in message.parts() if part["type"] == "text"]


def _conversation_checked(messages: list[ChatMessage], info: ValidationInfo) -> list[ChatMessage]:
    """``messages`` if the conversation ends with a user's text or image, its text is within the limits and it
    holds at most ``limits.max_images`` images."""
    limits = _bounds(info).limits
    last = messages[-1]
    if not isinstance(last, UserMessage) or not any(
        part["type"] == "image" or part["text"].strip() for part in last.parts()
    ):
        raise ApiError(400, "the last message must be a user message with text or an image", "messages")
    check_text(_texts(messages), limits)
    if (images := len(_image_urls(messages))) > limits.max_images:
        raise ApiError(400, f"{images} images: this model takes at most {limits.max_images} per request",
                       "messages", "too_many_images")
    return messages


Message = Annotated[SystemMessage | UserMessage | AssistantMessage, Field(discriminator="role"),
                    _refused(_message_refusal, "messages")]
Stop = Annotated[
    tuple[Annotated[str, Strict(), Field(min_length=1)], ...],
    BeforeValidator(lambda stop: (stop,) if isinstance(stop, str) else stop), Field(max_length=MAX_STOP),
    _refused(lambda _: f"stop must be a non-empty string or a list of up to {MAX_STOP} of them", "stop"),
]
MaxTokens = Annotated[int, _shared_check(lambda value, bounds, key: check_max_tokens(value, bounds.limits, key))]


class StreamOptions(BaseModel):
    """``stream_options``: only ``include_usage`` (a last chunk with the usage)."""

    model_config = ConfigDict(extra="forbid")

    include_usage: Annotated[bool, Strict()] | None = None


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions`` (module docstring), validated with ``context=RequestBounds(...)``. After
    validation ``max_completion_tokens`` holds the number of new tokens (``max_completion_tokens``, else
    ``max_tokens``, else ``min(64, limits.max_new_tokens)``) and :attr:`image` the request's image, decoded (RGB)."""

    messages: Annotated[list[Message], Field(min_length=1), _refused(lambda _: MESSAGES_REQUIRED, "messages"),
                        AfterValidator(_conversation_checked)]
    visor_budget: Annotated[int | Literal["auto"], _shared_check(
        lambda value, bounds, key: check_budget(value, bounds.num_budgets, key))] = "auto"
    visor_tau: Annotated[float, Checked(0.0, 1.0)] | None = None
    max_completion_tokens: MaxTokens | None = None
    max_tokens: MaxTokens | None = None
    logprobs: Annotated[bool, Checked()] = False
    top_logprobs: Annotated[int, Checked(0, MAX_TOP_LOGPROBS)] = 0
    stream: Annotated[bool, Checked()] = False
    stream_options: Annotated[StreamOptions, _refused(lambda _: BAD_STREAM_OPTIONS, "stream_options")] | None = None
    temperature: Annotated[float, Checked(0.0, 2.0)] = 1.0
    top_p: Annotated[float, Checked(0.0, 1.0, low_open=True)] = 1.0
    n: Annotated[int, Checked(1, "max_choices")] = 1
    stop: Stop = ()
    seed: Annotated[int, Checked(-(2**63), 2**63 - 1)] | None = None
    model: Annotated[str, Checked()] | None = None
    user: Annotated[str, Checked()] | None = None

    _image: Image.Image | None = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _known_parameters(cls, data: Any) -> dict:
        """The parameters VISOR implements; nulls dropped (null means absent), so are unsupported parameters at
        their "off" value; any other unsupported parameter is refused, naming it, and so is a request without
        ``messages`` (before any other field is looked at)."""
        if not isinstance(data, dict):
            raise ApiError(400, "request body must be a JSON object", None, "invalid_json")
        known = {}
        for key, value in data.items():
            if value is None or value in OFF_VALUES.get(key, ()):
                continue
            if key not in cls.model_fields:
                raise ApiError(400, f"unsupported parameter {key!r}: VISOR does not implement it", key,
                               "unsupported_parameter")
            known[key] = value
        if "messages" not in known:
            raise ApiError(400, MESSAGES_REQUIRED, "messages")
        return known

    @model_validator(mode="after")
    def _image_decoded(self, info: ValidationInfo) -> ChatCompletionRequest:
        """The request's image, decoded within the limits (after every field is valid)."""
        limits = _bounds(info).limits
        urls = _image_urls(self.messages)
        self._image = decode(image_bytes(urls[0], limits, http=True), limits) if urls else None
        return self

    @model_validator(mode="after")
    def _options_checked(self, info: ValidationInfo) -> ChatCompletionRequest:
        """Options that need another (``top_logprobs``: ``logprobs``; ``stream_options``: ``stream``); the number
        of new tokens resolved."""
        if self.top_logprobs and not self.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        if self.stream_options is not None and not self.stream:
            raise ApiError(400, BAD_STREAM_OPTIONS, "stream_options")
        if self.max_completion_tokens is None:
            self.max_completion_tokens = (self.max_tokens if self.max_tokens is not None
                                          else min(64, _bounds(info).limits.max_new_tokens))
        return self

    @property
    def conversation(self) -> list[dict]:
        """The messages in ``transformers``' chat format (``{"role", "content": [parts]}``, ``developer`` as
        ``system``, the image as a ``{"type": "image"}`` part where the user put it)."""
        return [{"role": ROLES[message.role], "content": message.parts()} for message in self.messages]

    @property
    def texts(self) -> list[str]:
        """The text parts of the conversation, in order."""
        return _texts(self.messages)

    @property
    def image(self) -> Image.Image | None:
        """The request's image (RGB), or None."""
        return self._image

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


SUPPORTED = frozenset(ChatCompletionRequest.model_fields)


def parse_chat_request(body: bytes, limits: Limits, num_budgets: int) -> ChatCompletionRequest:
    """Validate a raw request body (see the module docstring); raises :class:`ApiError`."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"request body is not valid JSON: {err}", None, "invalid_json") from err
    return ChatCompletionRequest.model_validate(data, context=RequestBounds(limits, num_budgets))


def image_data_url(image: Image.Image) -> str:
    """A PNG ``data:`` URL of ``image`` (what clients put in an ``image_url`` part)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def user_messages(question: str, image: Image.Image | None = None) -> list[dict]:
    """OpenAI ``messages`` for one user turn: the image (if any) as a data URL, then the question."""
    parts: list[dict] = [{"type": "text", "text": question}]
    if image is not None:
        parts.insert(0, {"type": "image_url", "image_url": {"url": image_data_url(image)}})
    return [{"role": "user", "content": parts}]
