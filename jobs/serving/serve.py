"""``visor serve``: the champion model behind an OpenAI-compatible HTTP API on Ray Serve.

Routes (FastAPI ingress of one deployment, :class:`VisorServer`):

* ``POST /v1/chat/completions`` — the OpenAI chat format (see
  :mod:`jobs.serving.openai_protocol`) plus ``visor_budget`` / ``visor_tau``; the response is a
  chat completion with ``usage`` and a ``visor`` object (budget used, language-model and
  total FLOPs, LLaVA-OneVision's FLOPs for the same input and the saving, model
  version). ``stream: true`` answers with server-sent events, one chunk per token
  (sent once the batch has generated: decoding is not incremental yet).
* ``GET /v1/models``, ``GET /health``; ``POST /admin/reload`` (load the version the
  alias points at now, if it moved) and ``GET /admin/stats`` (batch sizes seen).

Requests are tiled and tokenized in the handler, then grouped by ``@serve.batch``:
one ``generate`` call per batch with a per-sample budget tensor (``"auto"`` requests
get the policy's choice with their own τ), split only by sampling temperature.
A reload swaps the model between batches; a request keeps the model it started with.
With ``api_token`` set, every route but ``/health`` needs ``Authorization: Bearer <token>``.
Ray Serve's metrics endpoint exports ``visor_requests``, ``visor_request_latency_s``,
``visor_budget_chosen`` and ``visor_batch_size``.
"""

import asyncio
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from jobs.serving.config import ServeConfig
from jobs.serving.openai_protocol import ApiError, ChatRequest, parse_chat_request


@dataclass
class Loaded:
    """One loaded model version."""

    model: Any
    processor: Any
    name: str
    version: str


@dataclass
class Item:
    """One request on its way through a batch: the request, the model it started with, its inputs."""

    request: ChatRequest
    loaded: Loaded
    inputs: dict[str, np.ndarray]


def _load(model_uri: str, tracking_uri: str) -> Loaded:
    import mlflow

    from jobs.registry.model_format import load_visor
    from jobs.registry.tracking import registered_version

    mlflow.set_tracking_uri(tracking_uri)
    resolved = registered_version(model_uri, tracking_uri)
    name, version = resolved if resolved else (model_uri, "")
    model, processor = load_visor(f"models:/{name}/{version}" if resolved else model_uri)
    return Loaded(model.eval(), processor, name, version)


def prepare(request: ChatRequest, loaded: Loaded) -> dict[str, np.ndarray]:
    """Tile and tokenize one request (``[T]`` ids, ``[tiles, 3, H, W]`` pixels); checks the context length."""
    processor = loaded.processor
    images = [request.image] if request.image is not None else None
    out = processor(text=[processor.prompt(request.question, request.image is not None)], images=images,
                    return_tensors="np")
    ids = out["input_ids"][0]
    limit = loaded.model.config.text_config.max_position_embeddings
    if len(ids) + request.max_tokens > limit:
        raise ApiError(400, f"prompt of {len(ids)} tokens + max_tokens {request.max_tokens} exceeds the model's "
                       f"context of {limit} tokens", "messages", "context_length_exceeded")
    tile = processor.image_processor.size
    return {
        "input_ids": ids,
        "pixel_values": out["pixel_values"][0] if images else np.zeros((0, 3, tile["height"], tile["width"]),
                                                                        np.float32),
        "image_sizes": out["image_sizes"][0] if images else np.zeros(2, np.int64),
    }


def run_batch(items: list[Item]) -> list[dict]:
    """Generate for a batch; one ``generate`` per (model, temperature) group, budgets per sample."""
    results: list[dict | None] = [None] * len(items)
    groups: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault((id(item.loaded), item.request.temperature), []).append(i)
    for indices in groups.values():
        for i, result in zip(indices, _generate([items[i] for i in indices]), strict=True):
            results[i] = result
    return results


@torch.no_grad()
def _generate(items: list[Item]) -> list[dict]:
    from pipelines.dataset import Collator, object_column
    from visor_model.flops import baseline_flops, visor_flops
    from visor_model.policy import choose_budget

    loaded = items[0].loaded
    model, tokenizer = loaded.model, loaded.processor.tokenizer
    batch = Collator(tokenizer.pad_token_id, padding_side="left")(
        {name: object_column([item.inputs[name] for item in items]) for name in ("input_ids", "pixel_values",
                                                                                  "image_sizes")}
    )
    budgets = torch.tensor([0 if item.request.budget == "auto" else int(item.request.budget) for item in items])
    auto = [i for i, item in enumerate(items) if item.request.budget == "auto"]
    if auto:
        logits = model.policy(model.policy_features(**batch))
        for i in auto:
            tau = items[i].request.tau if items[i].request.tau is not None else model.config.policy_tau
            budgets[i] = choose_budget(logits[i : i + 1], tau)[0]
    temperature = items[0].request.temperature
    out = model.generate(**batch, budget=budgets, max_new_tokens=max(item.request.max_tokens for item in items),
                         do_sample=temperature > 0, temperature=temperature or 1.0, return_dict_in_generate=True)
    prompt_len = batch["input_ids"].shape[1]
    eos = tokenizer.eos_token_id
    results = []
    for i, item in enumerate(items):
        tokens = out.sequences[i, prompt_len:prompt_len + item.request.max_tokens].tolist()
        stopped = eos in tokens
        tokens = tokens[: tokens.index(eos)] if stopped else tokens
        nv, nt = int(out.num_visual_tokens[i]), int(out.num_text_tokens[i])
        tiles = len(item.inputs["pixel_values"])
        cost = visor_flops(model.config, int(budgets[i]), nv, nt, tiles)
        full = baseline_flops(model.config, nv, nt, tiles)
        results.append({
            "tokens": tokens, "finish_reason": "stop" if stopped else "length",
            "prompt_tokens": int(batch["attention_mask"][i].sum()),
            "visor": {"budget": int(budgets[i]), "flops": cost["total"], "language_flops": cost["language"],
                      "full_attention_flops": full["total"], "saving_vs_full_attention": full["total"] / cost["total"],
                      "model_version": loaded.version},
        })
    return results


def _sse(result: dict, tokenizer, model: str, completion_id: str, created: int):
    """Server-sent events of a finished generation: a role chunk, one chunk per token, a final chunk."""
    def event(delta: dict, finish: str | None = None, extra: dict | None = None) -> str:
        chunk = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **(extra or {})}
        return f"data: {json.dumps(chunk)}\n\n"

    yield event({"role": "assistant", "content": ""})
    previous = ""
    for n in range(1, len(result["tokens"]) + 1):
        text = tokenizer.decode(result["tokens"][:n], skip_special_tokens=True).strip()
        if text != previous:
            yield event({"content": text[len(previous):] if text.startswith(previous) else text})
            previous = text
    yield event({}, result["finish_reason"], {"visor": result["visor"]})
    yield "data: [DONE]\n\n"


app = FastAPI(title="VISOR", description="OpenAI-compatible chat completions with a per-request compute budget")


def _error(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body, status_code=err.status)


@serve.deployment
@serve.ingress(app)
class VisorServer:
    """The Serve deployment (see the module docstring), constructed with its :class:`ServeConfig`."""

    def __init__(self, config: ServeConfig):
        from ray.serve import metrics

        self.config = config
        self.current = _load(config.model, config.tracking_uri)
        self.batch_sizes: Counter[int] = Counter()
        self.requests = metrics.Counter("visor_requests", "Chat requests by HTTP status", tag_keys=("status",))
        self.latency = metrics.Histogram("visor_request_latency_s", "Chat request latency (s)",
                                         boundaries=[0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30])
        self.budget_chosen = metrics.Counter("visor_budget_chosen", "Budget used per request", tag_keys=("budget",))
        self.batch_size = metrics.Histogram("visor_batch_size", "Requests per generate batch",
                                            boundaries=[1, 2, 4, 8, 16, 32, 64])
        self.generate_batch.set_max_batch_size(self.config.max_batch_size)
        self.generate_batch.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)
        self._reload_lock = asyncio.Lock()
        if self.config.reload_poll_seconds > 0:
            self._poller = asyncio.get_event_loop().create_task(self._poll())

    # ------------------------------------------------------------------ helpers
    def _authorized(self, request: Request) -> None:
        token = self.config.api_token
        if token and request.headers.get("authorization") != f"Bearer {token}":
            raise ApiError(401, "missing or wrong bearer token", None, "invalid_api_key",
                           kind="authentication_error")

    def _denied(self, request: Request) -> JSONResponse | None:
        """The 401 answer for a request without the token, or None when it may pass."""
        try:
            self._authorized(request)
        except ApiError as err:
            return _error(err)
        return None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.reload_poll_seconds)
            try:
                await self.reload_if_moved()
            except Exception as err:  # a registry hiccup must not stop the poller
                print(f"[visor serve] reload check failed: {err}")

    async def reload_if_moved(self) -> dict:
        """Load the version ``config.model`` resolves to now, if it differs; swap it in between batches."""
        from jobs.registry.tracking import registered_version

        async with self._reload_lock:
            resolved = await asyncio.to_thread(registered_version, self.config.model, self.config.tracking_uri)
            if resolved is None or resolved[1] == self.current.version:
                return {"reloaded": False, "version": self.current.version}
            self.current = await asyncio.to_thread(_load, self.config.model, self.config.tracking_uri)
            return {"reloaded": True, "version": self.current.version}

    @serve.batch
    async def generate_batch(self, items: list[Item]) -> list[dict]:
        self.batch_sizes[len(items)] += 1
        self.batch_size.observe(len(items))
        return await asyncio.to_thread(run_batch, items)

    # ------------------------------------------------------------------ routes
    @app.get("/health")
    async def health(self) -> dict:
        return {"status": "ok", "model": self.current.name, "version": self.current.version}

    @app.get("/v1/models")
    async def models(self, request: Request):
        if (denied := self._denied(request)) is not None:
            return denied
        loaded = self.current
        return {"object": "list", "data": [{"id": loaded.name, "object": "model", "owned_by": "visor",
                                            "version": loaded.version, "budgets": loaded.model.plan.num_budgets}]}

    @app.post("/admin/reload")
    async def reload(self, request: Request):
        if (denied := self._denied(request)) is not None:
            return denied
        return await self.reload_if_moved()

    @app.get("/admin/stats")
    async def stats(self, request: Request):
        if (denied := self._denied(request)) is not None:
            return denied
        sizes = dict(sorted(self.batch_sizes.items()))
        return {"batches": sum(sizes.values()), "requests": sum(k * v for k, v in sizes.items()),
                "batch_sizes": {str(k): v for k, v in sizes.items()}}

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request):
        started = time.perf_counter()
        loaded = self.current
        try:
            self._authorized(request)
            parsed = parse_chat_request(await request.body(), self.config.limits, loaded.model.plan.num_budgets)
            if parsed.model not in (None, loaded.name, f"{loaded.name}/{loaded.version}"):
                raise ApiError(404, f"model {parsed.model!r} is not served here (serving {loaded.name!r})", "model",
                               "model_not_found")
            inputs = await asyncio.to_thread(prepare, parsed, loaded)
        except ApiError as err:
            self.requests.inc(tags={"status": str(err.status)})
            return _error(err)
        result = await self.generate_batch(Item(parsed, loaded, inputs))
        self.requests.inc(tags={"status": "200"})
        self.budget_chosen.inc(tags={"budget": str(result["visor"]["budget"])})
        self.latency.observe(time.perf_counter() - started)
        tokenizer = loaded.processor.tokenizer
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if parsed.stream:
            return StreamingResponse(_sse(result, tokenizer, loaded.name, completion_id, created),
                                     media_type="text/event-stream")
        text = tokenizer.decode(result["tokens"], skip_special_tokens=True).strip()
        usage = {"prompt_tokens": result["prompt_tokens"], "completion_tokens": len(result["tokens"]),
                 "total_tokens": result["prompt_tokens"] + len(result["tokens"])}
        return {"id": completion_id, "object": "chat.completion", "created": created, "model": loaded.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": result["finish_reason"]}],
                "usage": usage, "visor": result["visor"]}


def build_app(config: ServeConfig):
    """The Serve application for ``config`` (``serve.run`` it)."""
    return VisorServer.options(
        num_replicas=config.replicas, max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.cpus_per_replica},
    ).bind(config)


def app_builder(args: dict):
    """Ray Serve application builder (``import_path: jobs.serving.serve:app_builder`` in a ``serveConfigV2``):
    ``args`` are :class:`ServeConfig` fields (``limits`` a mapping of :class:`~jobs.serving.config.Limits`
    fields), validated by :func:`jobs.config.load_config`."""
    from jobs.config import load_config
    from jobs.registry.tracking import tracking_uri

    config = load_config(ServeConfig, args)
    return build_app(config.model_copy(update={"tracking_uri": tracking_uri(config.tracking_uri)}))


def start(config: ServeConfig, name: str = "visor", route_prefix: str = "/") -> None:
    """Start Serve's HTTP proxy on ``config.host:port`` (first call only) and deploy the app."""
    from jobs.cluster.ray_env import init_ray
    from jobs.registry.tracking import tracking_uri

    init_ray()
    serve.start(http_options={"host": config.host, "port": config.port})
    app = build_app(config.model_copy(update={"tracking_uri": tracking_uri(config.tracking_uri)}))
    serve.run(app, name=name, route_prefix=route_prefix, blocking=False)
