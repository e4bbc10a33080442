"""The Ray Serve endpoint over real HTTP on 127.0.0.1: the openai client, streaming, 4xx answers, batching under
load, bearer tokens, reloading when the champion moves, and failures that stay with the request that caused them
(apps whose model raises for marked requests, through VISOR_TEST_FAULT)."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import mlflow
import openai
import pytest
import torch
from mlflow.tracking import MlflowClient
from openai import OpenAI
from PIL import Image
from ray import serve

from jobs.registry.model_format import load_visor
from jobs.serving.config import Limits, ServeConfig
from jobs.serving.openai_protocol import image_data_url, user_messages
from jobs.serving.serve import build_app
from pipelines.synth import render_sample
from tests.conftest import random_image
from tests.pipelines.helpers import bomb_png

QUESTION = "what colour is the background ?"
FAULT = "FAULT"  # the marker of the requests the faulty apps' model fails (VISOR_TEST_FAULT=serve:marker=FAULT)


def messages(image: Image.Image | None = None, question: str = QUESTION) -> list[dict]:
    return user_messages(question, image)


@pytest.fixture(scope="module")
def server(registry):
    """The app on a free port, serving models:/visor@champion (version 1); its replica asks Ray for the local
    Ray's one logical GPU, the others for none."""
    client = MlflowClient(registry.uri)
    client.set_registered_model_alias("visor", "champion", "1")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = ServeConfig(tracking_uri=registry.uri, port=port, cpus_per_replica=0.5, replica_gpus=1, max_batch_size=8,
                         batch_wait_timeout_seconds=0.05, limits=Limits(max_image_bytes=200_000, max_new_tokens=32))
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config), name="visor", route_prefix="/", blocking=False)
    secured = ServeConfig(tracking_uri=registry.uri, port=port, cpus_per_replica=0.25, api_token="s3cret")
    serve.run(build_app(secured), name="visor-secured", route_prefix="/secured", blocking=False)
    tight = ServeConfig(tracking_uri=registry.uri, port=port, cpus_per_replica=0.25, max_batch_size=1,
                        max_queued_requests=1, max_ongoing_requests=16, limits=Limits(max_new_tokens=32))
    serve.run(build_app(tight), name="visor-tight", route_prefix="/tight", blocking=False)
    for at, error in (("prefill", "value"), ("decode", "runtime")):  # the model raises for requests saying FAULT
        faulty = ServeConfig(tracking_uri=registry.uri, port=port, cpus_per_replica=0.25,
                             batch_wait_timeout_seconds=0.3, limits=Limits(max_new_tokens=32))
        with pytest.MonkeyPatch.context() as env:
            env.setenv("VISOR_TEST_FAULT", f"serve:marker={FAULT}:at={at}:error={error}")
            app = build_app(faulty)
        serve.run(app, name=f"visor-faulty-{at}", route_prefix=f"/faulty-{at}", blocking=False)
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def test_openai_client_answers_like_generate_and_streams(server, registry) -> None:
    image = render_sample(4, "eval", 1).image
    client = OpenAI(base_url=f"{server}/v1", api_key="unused")
    response = client.chat.completions.create(model="visor", messages=messages(image), temperature=0, max_tokens=4,
                                              extra_body={"visor_budget": 1})
    answer = response.choices[0].message.content
    visor = response.model_extra["visor"]
    assert visor["budget"] == 1 and visor["model_version"] == "1" and visor["saving_vs_full_attention"] > 1

    mlflow.set_tracking_uri(registry.uri)
    model, processor = load_visor("models:/visor/1")
    inputs = dict(processor(text=[processor.prompt(QUESTION)], images=[image], return_tensors="pt"))
    inputs.pop("batch_num_images", None)
    assert response.usage.prompt_tokens == inputs["input_ids"].shape[1]  # the image's tokens counted
    tokens = model.generate(**inputs, budget=1, max_new_tokens=4)[0, inputs["input_ids"].shape[1]:].tolist()
    eos = processor.tokenizer.eos_token_id
    tokens = tokens[: tokens.index(eos)] if eos in tokens else tokens
    assert answer == processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    chunks = list(client.chat.completions.create(model="visor", messages=messages(image), temperature=0,
                                                 max_tokens=4, stream=True, extra_body={"visor_budget": 1}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed.strip() == answer and chunks[-1].choices[0].finish_reason in ("stop", "length")
    text_only = client.chat.completions.create(model="visor", messages=messages(None), temperature=0, max_tokens=3)
    assert text_only.model_extra["visor"]["budget"] in (0, 1)
    models = client.models.list()
    assert [m.id for m in models.data] == ["visor"] and models.data[0].model_extra["version"] == "1"


def test_conversation_and_sampling_parameters(server, registry) -> None:
    """The whole conversation through the chat template; n, seed, stop, logprobs, include_usage (issue 15)."""
    image = render_sample(4, "eval", 5).image
    client = OpenAI(base_url=f"{server}/v1", api_key="unused")
    conversation = [
        {"role": "system", "content": "what is it ?"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_data_url(image)}},
                                     {"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "how many shapes are there ?"},
    ]
    mlflow.set_tracking_uri(registry.uri)
    model, processor = load_visor("models:/visor/1")
    templated = processor.apply_chat_template([
        {"role": "system", "content": [{"type": "text", "text": "what is it ?"}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        {"role": "user", "content": [{"type": "text", "text": "how many shapes are there ?"}]},
    ], add_generation_prompt=True, tokenize=False)
    inputs = dict(processor(text=[templated], images=[image], return_tensors="pt"))
    inputs.pop("batch_num_images", None)
    prompt_len = inputs["input_ids"].shape[1]
    expected = model.generate(**inputs, budget=1, max_new_tokens=4, eos_token_id=[])[0, prompt_len:].tolist()
    reply = client.chat.completions.create(model="visor", messages=conversation, temperature=0, max_tokens=4,
                                           logprobs=True, top_logprobs=2, extra_body={"visor_budget": 1})
    choice = reply.choices[0]
    eos = processor.tokenizer.eos_token_id
    tokens = expected[: expected.index(eos)] if eos in expected else expected
    assert choice.message.content == processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    assert reply.usage.prompt_tokens == prompt_len and choice.finish_reason == ("stop" if eos in expected else "length")
    with torch.no_grad():  # log_softmax of the model's own logits at each chosen token, from one forward pass
        full = torch.tensor([inputs["input_ids"][0].tolist() + tokens])
        out = model(input_ids=full, pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"], budget=1)
    column = {int(c): j for j, c in enumerate(out.text_index[0])}
    logprobs = torch.log_softmax(out.logits[0].float(), -1)
    for step, (token, entry) in enumerate(zip(tokens, choice.logprobs.content, strict=True)):
        assert entry.logprob == pytest.approx(float(logprobs[column[prompt_len + step - 1], token]), abs=1e-4)
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].logprob >= entry.logprob - 1e-6

    def sampled(seed: int) -> list[str]:
        answer = client.chat.completions.create(model="visor", messages=conversation, n=3, temperature=1.5, seed=seed,
                                                max_tokens=6)
        return [c.message.content for c in answer.choices]

    first = sampled(7)
    assert len(first) == 3 and sampled(7) == first  # the same seed, the same choices
    assert any(sampled(seed) != first for seed in (8, 9, 10))

    greedy = choice.message.content
    assert len(greedy) >= 2
    stop = greedy[1:2]
    cut = client.chat.completions.create(model="visor", messages=conversation, temperature=0, max_tokens=4,
                                         stop=[stop], extra_body={"visor_budget": 1}).choices[0]
    assert cut.message.content == greedy[: greedy.find(stop)].rstrip() and cut.finish_reason == "stop"

    chunks = list(client.chat.completions.create(model="visor", messages=conversation, temperature=0, max_tokens=4,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body={"visor_budget": 1}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip() == greedy
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == reply.usage.total_tokens


def bad_requests(image: Image.Image) -> list[tuple[str, object, int, str]]:
    big = random_image(300, 300, 0)  # ~270 kB of PNG: random pixels do not compress
    two = messages(image)
    two[0]["content"].append({"type": "image_url", "image_url": {"url": image_data_url(image)}})
    return [
        ("malformed JSON", b"{not json", 400, "not valid JSON"),
        ("missing messages", {"model": "visor"}, 400, "'messages' is required"),
        ("two images", {"messages": two}, 400, "at most 1 per request"),
        ("image too large", {"messages": messages(big)}, 413, "larger than 200000 bytes"),
        ("decompression bomb", {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(bomb_png(20000))
                                                .decode()}}, {"type": "text", "text": QUESTION}]}]}, 400,
         "max_pixels"),
        ("not an image", {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"hello")
                                                .decode()}}, {"type": "text", "text": QUESTION}]}]}, 400,
         "cannot identify image file (not an image in a format Pillow reads"),
        ("unknown budget", {"messages": messages(image), "visor_budget": 7}, 400, "visor_budget must be"),
        ("http image URL", {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}},
            {"type": "text", "text": QUESTION}]}]}, 400, "disabled on this server"),
        ("prompt too long", {"messages": messages(image, " ".join(["what"] * 5000))}, 400, "exceeds the model's"),
        ("unknown model", {"model": "gpt-4", "messages": messages(image)}, 404, "not served here"),
        ("tools", {"messages": messages(image), "tools": [{"type": "function", "function": {"name": "f"}}]}, 400,
         "unsupported parameter 'tools'"),
        ("response_format", {"messages": messages(image), "response_format": {"type": "json_object"}}, 400,
         "unsupported parameter 'response_format'"),
        ("penalty", {"messages": messages(image), "presence_penalty": 0.5}, 400,
         "unsupported parameter 'presence_penalty'"),
        ("top_logprobs alone", {"messages": messages(image), "top_logprobs": 2}, 400, "needs logprobs"),
        ("ends with the assistant", {"messages": [*messages(image), {"role": "assistant", "content": "red"}]}, 400,
         "last message must be a user message"),
        ("image_url as a bare string", {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": image_data_url(image)}, {"type": "text", "text": QUESTION}]}]}, 400,
         'needs "image_url": {"url"'),
        ("an <image> placeholder typed as text", {"messages": messages(None, "<image> what is it ?")}, 400,
         "the model's processor refused the input"),
        ("lone surrogate", b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}', 400, "not valid Unicode"),
        ("text beyond max_text_chars", {"messages": messages(image, "what " * 50_000)}, 400, "characters, more than"),
    ]


def test_bad_requests_get_4xx_in_openai_format(server) -> None:
    image = render_sample(4, "eval", 2).image
    with httpx.Client(base_url=server, timeout=60) as http:
        for name, body, status, message in bad_requests(image):
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            response = http.post("/v1/chat/completions", content=content,
                                 headers={"content-type": "application/json"})
            assert response.status_code == status, (name, response.text)
            error = response.json()["error"]
            assert message in error["message"] and error["type"] == "invalid_request_error", name
            assert "object at 0x" not in error["message"], name
            if "unsupported parameter" in message:
                assert error["param"] == message.split("'")[1] and error["code"] == "unsupported_parameter"
        ok = http.post("/v1/chat/completions", json={"messages": messages(image), "max_tokens": 2})
        assert ok.status_code == 200  # still serving


def test_load_with_mixed_budgets_is_batched(server) -> None:
    images = [render_sample(4, "eval", i).image for i in range(8)]
    bodies = [{"messages": messages(images[i % 8]), "max_tokens": 3, "temperature": 0,
               "visor_budget": ["auto", 0, 1][i % 3]} for i in range(200)]
    with httpx.Client(base_url=server, timeout=120) as http:
        before = http.get("/admin/stats").json()
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda b: http.post("/v1/chat/completions", json=b).status_code, bodies))
        after = http.get("/admin/stats").json()
    assert statuses == [200] * 200
    assert after["requests"] - before["requests"] == 200
    assert max(int(k) for k in after["rows_per_step"]) > 1  # several requests shared one decode step


def long_running_seed(client: OpenAI, request: dict) -> int:
    """A seed for which ``request`` (sampled) runs to max_tokens in at least one choice."""
    for seed in range(40):
        if any(c.finish_reason == "length" for c in client.chat.completions.create(**request, seed=seed).choices):
            return seed
    raise AssertionError("no seed runs to max_tokens")


def test_streaming_is_incremental_and_requests_join_a_running_decode(server) -> None:
    """The first chunk arrives while the request still decodes, and a request sent meanwhile joins that decode
    and finishes first (the server's own counters, issue 15)."""
    image = render_sample(4, "eval", 6).image
    client = OpenAI(base_url=f"{server}/v1", api_key="unused")
    long = {"model": "visor", "messages": messages(image), "temperature": 2.0, "max_tokens": 32, "n": 8,
            "extra_body": {"visor_budget": 1}}
    seed = long_running_seed(client, long)
    with httpx.Client(base_url=server, timeout=120) as http:
        before = http.get("/admin/stats").json()
        chunks = iter(client.chat.completions.create(**long, seed=seed, stream=True))
        next(c for c in chunks if c.choices and c.choices[0].delta.content)
        during = http.get("/admin/stats").json()
        short = client.chat.completions.create(model="visor", messages=messages(image), temperature=0, max_tokens=2)
        rest = list(chunks)
        after = http.get("/admin/stats").json()
    assert during["decoding"] >= 1 and during["steps"] - before["steps"] < 32  # the first chunk came early
    assert short.choices[0].message.content is not None
    assert after["joined_running_decode"] > before.get("joined_running_decode", 0)
    assert any(c.choices and c.choices[0].finish_reason == "length" for c in rest)
    assert after["steps"] - before["steps"] >= 32


def test_a_full_queue_answers_429_and_the_server_keeps_serving(server) -> None:
    image = render_sample(4, "eval", 7).image
    client = OpenAI(base_url=f"{server}/tight/v1", api_key="unused", max_retries=0)
    long = {"messages": messages(image), "temperature": 2.0, "max_tokens": 32, "visor_budget": 1}
    seed = long_running_seed(client, {"model": "visor", **{k: v for k, v in long.items() if k != "visor_budget"}})
    with httpx.Client(base_url=f"{server}/tight", timeout=120) as http:
        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda _: http.post("/v1/chat/completions", json={**long, "seed": seed}),
                                      range(12)))
        statuses = [r.status_code for r in responses]
        refused = [r for r in responses if r.status_code == 429]
        assert refused and set(statuses) <= {200, 429}, statuses
        assert refused[0].headers["retry-after"] == "1" and refused[0].json()["error"]["code"] == "queue_full"
        assert http.post("/v1/chat/completions", json={"messages": messages(image), "max_tokens": 2}).status_code == 200
        assert http.get("/admin/stats").json()["refused"] == len(refused)


def test_token_guards_every_route_but_health(server) -> None:
    with httpx.Client(base_url=f"{server}/secured", timeout=60) as http:
        assert http.get("/health").status_code == 200
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/admin/reload")):
            response = http.request(method, path, json={"messages": messages(None)})
            assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
        good = http.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == 200
        wrong = http.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        secured = http.get("/admin/stats", headers={"Authorization": "Bearer s3cret"}).json()["placement"]
    assert secured == {"device": "cpu", "dtype": "float32", "ray_gpu_ids": []} or torch.cuda.is_available()
    with httpx.Client(base_url=server, timeout=60) as http:
        placement = http.get("/admin/stats").json()["placement"]
    # the main app's replica was given Ray's GPU; with no CUDA here, device "auto" fell back to the CPU in float32
    assert placement["ray_gpu_ids"] == ["0"]
    if not torch.cuda.is_available():
        assert placement["device"] == "cpu" and placement["dtype"] == "float32"


def test_reload_after_promotion_keeps_requests_in_flight(server, registry) -> None:
    client = MlflowClient(registry.uri)
    source = client.get_model_version("visor", "1").source
    mlflow.set_tracking_uri(registry.uri)
    new = str(mlflow.register_model(source, "visor").version)
    image = render_sample(4, "eval", 3).image
    results = []
    with httpx.Client(base_url=server, timeout=120) as http:
        def ask() -> None:
            results.append(http.post("/v1/chat/completions", json={"messages": messages(image), "max_tokens": 32,
                                                                   "temperature": 0}))
        threads = [threading.Thread(target=ask) for _ in range(4)]
        for thread in threads:
            thread.start()
        client.set_registered_model_alias("visor", "champion", new)
        reload = http.post("/admin/reload").json()
        for thread in threads:
            thread.join()
        assert reload == {"reloaded": True, "version": new}
        assert [r.status_code for r in results] == [200] * 4
        assert http.get("/v1/models").json()["data"][0]["version"] == new
        assert http.post("/admin/reload").json() == {"reloaded": False, "version": new}
        answer = http.post("/v1/chat/completions", json={"messages": messages(image), "max_tokens": 2}).json()
        assert answer["visor"]["model_version"] == new


def answers_alone_then_together(prefix: str, bodies: list[dict], faulty: list) -> tuple[list, list, list, dict, dict]:
    """``bodies`` sent one at a time, then all at once with the calls ``faulty`` (started 50 ms later, while the
    others prefill or decode): the answers alone, the answers together, what the faulty calls returned, and the
    app's stats before and after."""
    with httpx.Client(base_url=prefix, timeout=120) as http:
        alone = [http.post("/v1/chat/completions", json=body) for body in bodies]
        before = http.get("/admin/stats").json()
        with ThreadPoolExecutor(len(bodies) + len(faulty)) as pool:
            together = [pool.submit(http.post, "/v1/chat/completions", json=body) for body in bodies]
            time.sleep(0.05)
            failed = [pool.submit(call) for call in faulty]
            together, failed = [f.result() for f in together], [f.result() for f in failed]
        after = http.get("/admin/stats").json()
    return alone, together, failed, before, after


def completions(responses: list[httpx.Response]) -> list[tuple[str, str, list[str] | None]]:
    """Each response's answer, finish reason and tokens (from ``logprobs``, when asked); all must be 200s."""
    assert [r.status_code for r in responses] == [200] * len(responses), [r.text for r in responses]
    choices = [r.json()["choices"][0] for r in responses]
    return [(c["message"]["content"], c["finish_reason"],
             [entry["token"] for entry in c["logprobs"]["content"]] if c["logprobs"] else None) for c in choices]


def test_a_failure_in_a_decode_step_fails_only_its_request(server) -> None:
    """Issue 31: a request whose decode step raises inside the model (injected at the model call) while six others
    decode with it fails alone — a 500 in OpenAI's format, or, streamed, an error event after its 200 — and the
    others finish with the same tokens as when they ran alone; no row is left behind."""
    prefix = f"{server}/faulty-decode"
    images = [render_sample(4, "eval", 20 + i).image for i in range(6)]
    bodies = [{"messages": messages(image), "temperature": 2.0, "seed": i, "max_tokens": 16, "visor_budget": 1,
               "logprobs": True} for i, image in enumerate(images)]
    marked = {"messages": messages(images[0], f"{FAULT} {QUESTION}"), "temperature": 2.0, "seed": 0,
              "max_tokens": 16}
    client = OpenAI(base_url=f"{prefix}/v1", api_key="unused", max_retries=0)

    def streamed() -> list[str]:
        texts = []
        with pytest.raises(openai.APIError, match="injected fault") as raised:
            for chunk in client.chat.completions.create(model="visor", stream=True, **{
                    k: v for k, v in marked.items() if k != "model"}):
                texts.append(chunk.choices[0].delta.content if chunk.choices else "")
        texts.append(raised.value.message)
        return texts

    alone, together, (failed, stream), before, after = answers_alone_then_together(
        prefix, bodies, [lambda: httpx.post(f"{prefix}/v1/chat/completions", json=marked, timeout=120), streamed])
    assert completions(together) == completions(alone)
    assert failed.status_code == 500, failed.text
    error = failed.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "generation_failed"
    assert "injected fault" in error["message"] and "RuntimeError" in error["message"]
    assert "injected fault" in stream[-1]  # the stream had begun (200, a role chunk) when its error came
    assert after["retried_alone"] > before.get("retried_alone", 0)  # the fault struck a step shared with others
    assert after["failed"] - before.get("failed", 0) == 2
    assert after["decoding"] == 0 and after["waiting"] == 0  # no leaked rows
    assert completions([httpx.post(f"{prefix}/v1/chat/completions", json=bodies[1], timeout=120)]) == \
        completions(alone[1:2])  # and the replica serves on


def test_a_request_the_model_refuses_at_prefill_gets_a_400_alone(server) -> None:
    """Issue 31: a ValueError from the model (the input was the cause) in a prefill shared with four requests
    answers that request 400; the others are answered as when alone."""
    prefix = f"{server}/faulty-prefill"
    images = [render_sample(4, "eval", 30 + i).image for i in range(4)]
    bodies = [{"messages": messages(image), "temperature": 0, "max_tokens": 8, "visor_budget": i % 2, "logprobs": True}
              for i, image in enumerate(images)]
    marked = {"messages": messages(images[0], f"{QUESTION} {FAULT}"), "max_tokens": 8}
    alone, together, (failed,), before, after = answers_alone_then_together(
        prefix, bodies, [lambda: httpx.post(f"{prefix}/v1/chat/completions", json=marked, timeout=120)])
    assert completions(together) == completions(alone)
    assert failed.status_code == 400, failed.text
    error = failed.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_input"
    assert "ValueError: injected fault" in error["message"]
    assert after["retried_alone"] > before.get("retried_alone", 0)
    assert after["failed"] - before.get("failed", 0) == 1 and after["decoding"] == 0 and after["waiting"] == 0


def test_openai_surface_models_routes_roles_and_streamed_logprobs(server) -> None:
    """Issue 31: models.retrieve, OpenAI error objects on unknown routes and methods, the developer role, logprobs
    streamed with each token, and a 20 MB text body refused before anything tokenizes it."""
    image = render_sample(4, "eval", 8).image
    client = OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    version = client.models.list().data[0].model_extra["version"]
    assert client.models.retrieve("visor").id == "visor" and client.models.retrieve(f"visor/{version}").id == "visor"
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.models.retrieve("gpt-4")
    with httpx.Client(base_url=server, timeout=60) as http:
        for method, path, status in (("GET", "/v1/nothing", 404), ("GET", "/v1/chat/completions", 405),
                                     ("DELETE", "/v1/models", 405)):
            response = http.request(method, path)
            assert response.status_code == status and response.json()["error"]["type"] == "invalid_request_error"
            assert path in response.json()["error"]["message"]
        started = time.perf_counter()
        huge = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x " * 10_000_000}]})
        assert huge.status_code == 400 and "characters, more than" in huge.json()["error"]["message"]
        assert time.perf_counter() - started < 10  # refused on its length (tokenizing it took 31 s)

    developer = [{"role": "developer", "content": "answer briefly"}, *messages(image)]
    system = [{"role": "system", "content": "answer briefly"}, *messages(image)]
    ask = {"model": "visor", "temperature": 0, "max_tokens": 6, "extra_body": {"visor_budget": 1}}
    reply = client.chat.completions.create(messages=developer, logprobs=True, top_logprobs=2, **ask)
    assert reply.choices[0].message.content == client.chat.completions.create(messages=system, **ask).choices[
        0].message.content  # developer is OpenAI's newer name for system
    chunks = list(client.chat.completions.create(messages=developer, logprobs=True, top_logprobs=2, stream=True,
                                                 **ask))
    with_text = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert with_text and all(c.choices[0].logprobs and c.choices[0].logprobs.content for c in with_text)
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in reply.choices[0].logprobs.content]


def test_16_bit_pngs_are_answered_like_their_8_bit_images(server) -> None:
    """Issue 31: a 16-bit PNG (RGB or greyscale) reaches the model as the same pixels as its 8-bit version, not
    clipped to black and white: the same answer, the same log-probabilities."""
    import numpy as np

    from tests.pipelines.helpers import png16

    pixels = np.asarray(render_sample(4, "eval", 9).image).astype(np.uint16)
    grey = np.asarray(render_sample(4, "eval", 9).image.convert("L")).astype(np.uint16)
    client = OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)

    def answer(url: str) -> tuple[str, list[float]]:
        reply = client.chat.completions.create(
            model="visor", temperature=0, max_tokens=4, logprobs=True, extra_body={"visor_budget": 1},
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                   {"type": "text", "text": QUESTION}]}])
        return reply.choices[0].message.content, [round(e.logprob, 4) for e in reply.choices[0].logprobs.content]

    def png_url(data: bytes) -> str:
        return "data:image/png;base64," + base64.b64encode(data).decode()

    for eight, sixteen in ((pixels, pixels * 257), (grey, grey * 257)):
        eight_bit = image_data_url(Image.fromarray(eight.astype(np.uint8)))
        assert answer(png_url(png16(sixteen))) == answer(eight_bit)
    clipped = image_data_url(Image.fromarray(np.where(grey > 0, 255, 0).astype(np.uint8)))  # what it was before
    assert answer(png_url(png16(grey * 257)))[1] != answer(clipped)[1]


def test_a_text_only_chat_beside_image_chats(server) -> None:
    """Issue 31's report: eight image chats and a text-only chat 50 ms later — all nine are answered, each as when
    it ran alone."""
    images = [render_sample(4, "eval", 40 + i).image for i in range(8)]
    bodies = [{"messages": messages(image), "temperature": 0, "max_tokens": 6, "logprobs": True} for image in images]
    text_only = {"messages": messages(None, "how many shapes are there ?"), "temperature": 0, "max_tokens": 6,
                 "logprobs": True}
    with httpx.Client(base_url=server, timeout=120) as http:
        alone = http.post("/v1/chat/completions", json=text_only)
    others_alone, others, (together,), _, after = answers_alone_then_together(
        server, bodies, [lambda: httpx.post(f"{server}/v1/chat/completions", json=text_only, timeout=120)])
    assert completions(others) == completions(others_alone)
    assert completions([together]) == completions([alone])
    assert after["decoding"] == 0
