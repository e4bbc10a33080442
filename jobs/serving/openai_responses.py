"""What the endpoint answers, as pydantic models in the shapes of OpenAI's API (as vLLM declares its
``ChatCompletionResponse``): a chat completion, the chunks of a streamed one, the model list, and VISOR's own
``visor`` object. Each dumps (``model_dump(mode="json")``) to JSON that OpenAI's published schema accepts (tested
against ``../shared/openai-openapi``); errors are :class:`jobs.inputs.ErrorResponse`.

A field that is None is left out of a chunk where OpenAI's schema does not allow null (a delta's ``role`` and
``content``, a chunk choice's ``logprobs``, a chunk's ``usage``, ``visor`` and ``error``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from jobs.inputs import ErrorInfo

FinishReason = Literal["stop", "length"]


def _omitted_if_none(default: Any = None) -> Any:
    return Field(default, exclude_if=lambda value: value is None)


class TopLogprob(BaseModel):
    """A token and its log-probability (``bytes``: its UTF-8 bytes)."""

    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    """An answered token's entry in ``logprobs.content``, with the ``top_logprobs`` most likely tokens there."""

    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    """A choice's ``logprobs``: one entry per answered token."""

    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class Usage(BaseModel):
    """Tokens of the prompt and of all choices of the answer."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class VisorStats(BaseModel):
    """VISOR's ``visor`` object: the budget a request ran (the policy's choice for ``"auto"``), its FLOPs (total
    and language-model), LLaVA-OneVision's FLOPs for the same input and the ratio, and the model version."""

    budget: int
    flops: float
    language_flops: float
    full_attention_flops: float
    saving_vs_full_attention: float
    model_version: str


class ResponseMessage(BaseModel):
    """The assistant's answer in a choice."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class ChatCompletionChoice(BaseModel):
    index: int
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: FinishReason


class ChatCompletionResponse(BaseModel):
    """``POST /v1/chat/completions`` without ``stream``: one choice per ``n``."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage
    visor: VisorStats


class DeltaMessage(BaseModel):
    """What a chunk adds to a choice: the role (first chunk), new text."""

    role: Literal["assistant"] | None = _omitted_if_none()
    content: str | None = _omitted_if_none()


class ChatCompletionStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = _omitted_if_none()
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed completion: a choice's role, new text or end (the last one of each
    choice carries ``visor``), then — with ``stream_options.include_usage`` — ``usage`` with no choices; or an
    ``error`` (no choices) when the request failed after its stream began."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionStreamChoice]
    usage: Usage | None = _omitted_if_none()
    visor: VisorStats | None = _omitted_if_none()
    error: ErrorInfo | None = _omitted_if_none()


class ModelCard(BaseModel):
    """The served model (``GET /v1/models/{id}``): its registered name, version and number of budgets."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "visor"
    version: str
    budgets: int


class ModelList(BaseModel):
    """``GET /v1/models``: the one served model."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
