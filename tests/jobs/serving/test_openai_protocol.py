"""The OpenAI protocol as pydantic models (issue 30), without a server: requests refused with the status, param,
code and message the hand-written checks gave, OpenAI's own example requests accepted, and every response model
dumped to JSON that OpenAI's published schema (``../shared/openai-openapi``) accepts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from PIL import Image

from jobs.inputs import ApiError, Limits
from jobs.serving import openai_responses as api
from jobs.serving.openai_protocol import SUPPORTED, ChatCompletionRequest, image_data_url, parse_chat_request

SPEC = Path(__file__).resolve().parents[3].parent / "shared" / "openai-openapi" / "chat-completions-and-models.yaml"
IMAGE = image_data_url(Image.new("RGB", (16, 12), (200, 30, 30)))
USER = [{"role": "user", "content": "what colour is it ?"}]


def image_part(image_url: Any) -> dict:
    return {"type": "image_url", "image_url": image_url}


def parse(body: Any, num_budgets: int = 2) -> ChatCompletionRequest:
    return parse_chat_request(body if isinstance(body, bytes) else json.dumps(body).encode(), Limits(), num_budgets)


# (request body, status, param, code, message): what the hand-written validators answered before the models
REFUSED = [
    (b"[1]", 400, None, "invalid_json", "request body must be a JSON object"),
    ({"model": "visor"}, 400, "messages", None, "'messages' is required and must be a non-empty list"),
    ({"messages": []}, 400, "messages", None, "'messages' is required and must be a non-empty list"),
    ({"messages": [{"role": ["user"], "content": "x"}]}, 400, "messages", None,
     "each message needs a role of system, developer, user or assistant"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages", None,
     "each message needs a role of system, developer, user or assistant"),
    ({"messages": [{"role": "user"}]}, 400, "messages", None,
     "message content must be a string or a list of content parts"),
    ({"messages": [{"role": "user", "content": [5]}]}, 400, "messages", None,
     "message content must be a string or a list of content parts"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400, "messages", None,
     "unsupported content part 'audio' in a user message"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, 400, "messages", None,
     "unsupported content part 'text' in a user message"),
    ({"messages": [{"role": "developer", "content": [image_part({"url": IMAGE})]}, *USER]}, 400, "messages", None,
     "unsupported content part 'image_url' in a system message"),
    ({"messages": [{"role": "user", "content": [image_part(IMAGE)]}]}, 400, "messages", None,
     'an image_url part needs "image_url": {"url": "data:image/...;base64,..."} (an object), got str'),
    ({"messages": [{"role": "user", "content": [image_part({"url": 5})]}]}, 400, "messages", None,
     "image_url.url must be a string"),
    ({"messages": [{"role": "user", "content": [image_part({"url": IMAGE}), image_part({"url": IMAGE})]}]}, 400,
     "messages", "too_many_images", "2 images: this model takes at most 1 per request"),
    ({"messages": [*USER, {"role": "assistant", "content": "red"}]}, 400, "messages", None,
     "the last message must be a user message with text or an image"),
    ({"messages": USER, "tools": [{"type": "function"}]}, 400, "tools", "unsupported_parameter",
     "unsupported parameter 'tools': VISOR does not implement it"),
    ({"messages": USER, "visor_budget": "1"}, 400, "visor_budget", "invalid_budget",
     "visor_budget must be \"auto\" or an integer in [0, 1], got '1'"),
    ({"messages": USER, "visor_tau": True}, 400, "visor_tau", None, "visor_tau must be a number in [0, 1], got True"),
    ({"messages": USER, "max_tokens": 0}, 400, "max_tokens", None, "max_tokens must be an integer in [1, 512], got 0"),
    ({"messages": USER, "max_completion_tokens": 2.0}, 400, "max_completion_tokens", None,
     "max_completion_tokens must be an integer in [1, 512], got 2.0"),
    ({"messages": USER, "logprobs": "yes"}, 400, "logprobs", None, "logprobs must be a boolean, got 'yes'"),
    ({"messages": USER, "top_logprobs": 2}, 400, "top_logprobs", None, "top_logprobs needs logprobs: true"),
    ({"messages": USER, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs", None,
     "top_logprobs must be an integer in [0, 20], got 21"),
    ({"messages": USER, "stream_options": {"include_usage": True}}, 400, "stream_options", None,
     "stream_options takes only include_usage, and only with stream: true"),
    ({"messages": USER, "stream": True, "stream_options": {"include_obfuscation": False}}, 400, "stream_options",
     None, "stream_options takes only include_usage, and only with stream: true"),
    ({"messages": USER, "temperature": "0"}, 400, "temperature", None,
     "temperature must be a number in [0, 2], got '0'"),
    ({"messages": USER, "temperature": 2.5}, 400, "temperature", None,
     "temperature must be a number in [0, 2], got 2.5"),
    ({"messages": USER, "top_p": 0}, 400, "top_p", None, "top_p must be a number in (0, 1], got 0"),
    ({"messages": USER, "n": 9}, 400, "n", None, "n must be an integer in [1, 8], got 9"),
    ({"messages": USER, "n": True}, 400, "n", None, "n must be an integer in [1, 8], got True"),
    ({"messages": USER, "stop": ["a", ""]}, 400, "stop", None,
     "stop must be a non-empty string or a list of up to 4 of them"),
    ({"messages": USER, "stop": ["a"] * 5}, 400, "stop", None,
     "stop must be a non-empty string or a list of up to 4 of them"),
    ({"messages": USER, "seed": 2**63}, 400, "seed", None,
     f"seed must be an integer in [{-(2**63)}, {2**63 - 1}], got {2**63}"),
]


@pytest.mark.parametrize(("body", "status", "param", "code", "message"), REFUSED)
def test_a_request_is_refused_as_the_hand_written_checks_refused_it(body, status, param, code, message) -> None:
    with pytest.raises(ApiError) as raised:
        parse(body)
    assert raised.value.status == status
    assert raised.value.body.model_dump() == {"error": {"message": message, "type": "invalid_request_error",
                                                       "param": param, "code": code}}


def test_a_valid_request_is_read_once_into_what_the_engine_takes() -> None:
    """Nulls are absent parameters and unsupported ones at their "off" value pass; the conversation comes out in
    ``transformers``' format with the image where the user put it, decoded; the number of new tokens resolved."""
    request = parse({
        "messages": [{"role": "developer", "content": "be brief"},
                     {"role": "user", "content": [image_part({"url": IMAGE, "detail": "low"}),
                                                  {"type": "text", "text": "what colour ?"}]},
                     {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
                     {"role": "user", "content": "sure ?"}],
        "max_tokens": 5, "stop": "\n", "seed": None, "tools": [], "presence_penalty": 0, "stream": True,
        "stream_options": {"include_usage": True}, "visor_budget": 1,
    })
    assert request.conversation == [
        {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour ?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        {"role": "user", "content": [{"type": "text", "text": "sure ?"}]},
    ]
    assert request.texts == ["be brief", "what colour ?", "red", "sure ?"]
    assert request.image.size == (16, 12) and request.image.mode == "RGB"
    assert (request.max_completion_tokens, request.stop, request.seed, request.include_usage) == (5, ("\n",), None,
                                                                                                  True)
    assert (request.visor_budget, request.visor_tau, request.temperature, request.n) == (1, None, 1.0, 1)
    default = parse({"messages": USER})
    assert default.max_completion_tokens == 64 and default.image is None and default.visor_budget == "auto"
    assert parse({"messages": USER, "max_tokens": 3, "max_completion_tokens": 7}).max_completion_tokens == 7


def test_the_fuzz_keeps_exactly_the_fields_of_the_request_model() -> None:
    assert SUPPORTED == set(ChatCompletionRequest.model_fields)
    assert {"messages", "max_completion_tokens", "visor_budget", "visor_tau"} <= SUPPORTED


def openai_spec() -> dict:
    if not SPEC.is_file():
        pytest.fail(f"OpenAI's reduced spec is missing: expected {SPEC} (the shared folder beside the checkout, "
                    "../shared/openai-openapi; CI has it)")
    return yaml.safe_load(SPEC.read_text())


def nullable(keyword: Any) -> Any:
    """A JSON Schema keyword that also passes null where the schema says ``nullable: true`` (OpenAPI 3.0's way,
    which OpenAI's 3.1 document still uses in its chunk schema)."""
    def check(validator: Any, value: Any, instance: Any, schema: dict) -> Any:
        if instance is None and schema.get("nullable"):
            return
        yield from keyword(validator, value, instance, schema)

    return check


OpenAPIValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    {name: nullable(jsonschema.Draft202012Validator.VALIDATORS[name]) for name in ("type", "enum")})


def schema_errors(spec: dict, name: str, instance: Any) -> list[str]:
    """Where ``instance`` breaks OpenAI's component schema ``name``."""
    validator = OpenAPIValidator({"$ref": f"#/components/schemas/{name}", "components": spec["components"]})
    return [f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(instance)]


def test_every_response_model_dumps_to_what_openais_schema_accepts() -> None:
    spec = openai_spec()
    entry = api.TokenLogprob(token="red", logprob=-0.1, bytes=list(b"red"),
                             top_logprobs=[api.TopLogprob(token="red", logprob=-0.1, bytes=list(b"red"))])
    logprobs = api.ChoiceLogprobs(content=[entry])
    visor = api.VisorStats(budget=1, flops=2e6, language_flops=1e6, full_attention_flops=8e6,
                           saving_vs_full_attention=4.0, model_version="3")
    usage = api.Usage(prompt_tokens=120, completion_tokens=2, total_tokens=122)
    choices = [api.ChatCompletionChoice(index=0, message=api.ResponseMessage(content="red"), logprobs=logprobs,
                                        finish_reason="stop"),
               api.ChatCompletionChoice(index=1, message=api.ResponseMessage(content="re"), logprobs=None,
                                        finish_reason="length")]
    completion = api.ChatCompletionResponse(id="chatcmpl-1", created=1, model="visor", choices=choices, usage=usage,
                                            visor=visor)
    assert schema_errors(spec, "CreateChatCompletionResponse", completion.model_dump(mode="json")) == []

    def chunk(*choices: api.ChatCompletionStreamChoice, **extra: Any) -> dict:
        return api.ChatCompletionChunk(id="chatcmpl-1", created=1, model="visor", choices=list(choices),
                                   **extra).model_dump(mode="json")

    error = ApiError(500, "generation failed: RuntimeError", None, "generation_failed", kind="server_error")
    chunks = [
        chunk(api.ChatCompletionStreamChoice(index=0, delta=api.DeltaMessage(role="assistant", content=""))),
        chunk(api.ChatCompletionStreamChoice(index=0, delta=api.DeltaMessage(content="red"), logprobs=logprobs)),
        chunk(api.ChatCompletionStreamChoice(index=0, delta=api.DeltaMessage(content="red"))),
        chunk(api.ChatCompletionStreamChoice(index=0, delta=api.DeltaMessage(), finish_reason="stop"), visor=visor),
        chunk(usage=usage),
        chunk(error=error.body.error),
    ]
    for streamed in chunks:
        assert schema_errors(spec, "CreateChatCompletionStreamResponse", streamed) == [], streamed
    assert chunks[0]["choices"][0] == {"index": 0, "delta": {"role": "assistant", "content": ""},
                                       "finish_reason": None}  # what is None and may not be null is left out
    assert "usage" not in chunks[1] and "logprobs" not in chunks[2]["choices"][0]
    models = api.ModelList(data=[api.ModelCard(id="visor", version="3", budgets=2)]).model_dump(mode="json")
    assert schema_errors(spec, "ListModelsResponse", models) == []
    assert schema_errors(spec, "ErrorResponse", error.body.model_dump(mode="json")) == []

    before = completion.model_dump(mode="json")  # the hand-built dict of before: no refusal, which OpenAI requires
    before["choices"][0]["message"].pop("refusal")
    assert schema_errors(spec, "CreateChatCompletionResponse", before) == ["['choices', 0, 'message']: "
                                                                          "'refusal' is a required property"]


def test_openais_example_requests_are_accepted_and_dump_to_its_schema() -> None:
    """The spec's example requests (the fuzz's first inputs) all parse, but the one with ``tools``; a parsed request
    dumps (the fields the client set, and the resolved number of tokens) to a valid OpenAI request."""
    spec = openai_spec()
    examples = spec["paths"]["/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    for name, example in examples.items():
        if "tools" in example["value"]:
            with pytest.raises(ApiError, match="unsupported parameter 'tools'"):
                parse(example["value"], num_budgets=3)
            continue
        request = parse(example["value"], num_budgets=3)
        assert schema_errors(spec, "CreateChatCompletionRequest",
                             request.model_dump(mode="json", exclude_unset=True)) == [], name
