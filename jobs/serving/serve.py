"""``visor serve``: the champion model behind an OpenAI-compatible HTTP API on Ray Serve.

Routes (FastAPI ingress of one deployment, :class:`VisorServer`):

* ``POST /v1/chat/completions`` — the OpenAI chat format (see
  :mod:`jobs.serving.openai_protocol`: the whole conversation through the chat template, ``n``,
  ``stop``, ``seed``, ``top_p``, ``logprobs``/``top_logprobs``, ``stream_options``) plus
  ``visor_budget`` / ``visor_tau``; the response is a chat completion with one choice per ``n``,
  ``usage`` and a ``visor`` object (budget used, language-model and total FLOPs,
  LLaVA-OneVision's FLOPs for the same input and the saving, model version). ``stream: true``
  answers with server-sent events, per choice one chunk per token, then a usage chunk with
  ``include_usage`` (sent once the batch has generated: decoding is not incremental yet).
* ``GET /v1/models``, ``GET /health``; ``POST /admin/reload`` (load the version the
  alias points at now, if it moved) and ``GET /admin/stats`` (batch sizes seen).

Requests are tiled and tokenized in the handler, then grouped by ``@serve.batch``:
one ``generate`` call per batch with a per-sample budget tensor (``"auto"`` requests
get the policy's choice with their own τ) and ``n`` rows per request, split only by sampling
settings (temperature, top-p, seed: a seeded request samples from its own generator).
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
    text = processor.apply_chat_template(request.conversation, add_generation_prompt=True, tokenize=False)
    out = processor(text=[text], images=images, return_tensors="np")
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
    """Generate for a batch; one ``generate`` per (model, sampling settings) group, budgets per sample."""
    results: list[dict | None] = [None] * len(items)
    groups: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault((id(item.loaded), item.request.sampling), []).append(i)
    for indices in groups.values():
        for i, result in zip(indices, _generate([items[i] for i in indices]), strict=True):
            results[i] = result
    return results


@torch.no_grad()
def _generate(items: list[Item]) -> list[dict]:
    """One ``generate`` over every choice of ``items`` (``n`` rows per request; one seeded generator when the
    requests carry a seed, so the same request and seed give the same choices)."""
    from pipelines.dataset import Collator, object_column
    from visor_model.flops import baseline_flops, visor_flops
    from visor_model.policy import choose_budget

    loaded = items[0].loaded
    model, tokenizer = loaded.model, loaded.processor.tokenizer
    rows = [i for i, item in enumerate(items) for _ in range(item.request.n)]
    batch = Collator(tokenizer.pad_token_id, padding_side="left")(
        {name: object_column([items[i].inputs[name] for i in rows]) for name in ("input_ids", "pixel_values",
                                                                                  "image_sizes")}
    )
    budgets = torch.tensor([0 if items[i].request.budget == "auto" else int(items[i].request.budget) for i in rows])
    auto = [row for row, i in enumerate(rows) if items[i].request.budget == "auto"]
    if auto:
        logits = model.policy(model.policy_features(**batch))
        for row in auto:
            tau = items[rows[row]].request.tau
            budgets[row] = choose_budget(logits[row : row + 1], model.config.policy_tau if tau is None else tau)[0]
    first = items[0].request
    generator = None if first.seed is None else torch.Generator().manual_seed(first.seed)
    out = model.generate(**batch, budget=budgets, max_new_tokens=max(item.request.max_tokens for item in items),
                         do_sample=first.temperature > 0, temperature=first.temperature or 1.0, top_p=first.top_p,
                         generator=generator, output_logits=any(item.request.logprobs for item in items),
                         return_dict_in_generate=True)
    prompt_len = batch["input_ids"].shape[1]
    results = []
    for i, item in enumerate(items):
        own = [row for row, of in enumerate(rows) if of == i]
        row = own[0]
        nv, nt = int(out.num_visual_tokens[row]), int(out.num_text_tokens[row])
        tiles = len(item.inputs["pixel_values"])
        cost = visor_flops(model.config, int(budgets[row]), nv, nt, tiles)
        full = baseline_flops(model.config, nv, nt, tiles)
        choices = [_choice(out.sequences[r, prompt_len:].tolist(), None if out.logits is None else out.logits[r],
                           item.request, tokenizer) for r in own]
        results.append({
            "choices": choices, "prompt_tokens": int(batch["attention_mask"][row].sum()),
            "visor": {"budget": int(budgets[row]), "flops": cost["total"], "language_flops": cost["language"],
                      "full_attention_flops": full["total"], "saving_vs_full_attention": full["total"] / cost["total"],
                      "model_version": loaded.version},
        })
    return results


def _choice(tokens: list[int], logits: torch.Tensor | None, request: ChatRequest, tokenizer) -> dict:
    """One choice from a row's new tokens: cut at EOS or at the first ``stop`` string (the stop text is not
    returned; ``finish_reason`` is ``"stop"``), else ``"length"``; its text, token count and logprobs."""
    tokens = tokens[: request.max_tokens]
    eos = tokenizer.eos_token_id
    finish = "length"
    if eos in tokens:
        tokens, finish = tokens[: tokens.index(eos)], "stop"
    text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    hits = [text.find(stop) for stop in request.stop if stop in text]
    kept = len(tokens)
    if hits:
        text, finish = text[: min(hits)].rstrip(), "stop"
        kept = next(k for k in range(1, len(tokens) + 1)
                    if any(stop in tokenizer.decode(tokens[:k], skip_special_tokens=True) for stop in request.stop))
        tokens = tokens[: kept - 1]  # the tokens before the one that completed the stop text
    entries = None
    if request.logprobs and logits is not None:
        entries = _logprobs(tokens, logits[: len(tokens)], request.top_logprobs, tokenizer)
    return {"text": text, "finish_reason": finish, "completion_tokens": kept, "logprobs": entries}


def _logprobs(tokens: list[int], logits: torch.Tensor, top: int, tokenizer) -> list[dict]:
    """OpenAI's ``logprobs.content``: each token's log-probability under the model (``log_softmax`` of its
    logits) and the ``top`` most likely alternatives."""
    def entry(token: int, logprob: float) -> dict:
        text = tokenizer.decode([token])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    logprobs = torch.log_softmax(logits.float(), dim=-1)
    content = []
    for step, token in enumerate(tokens):
        item = entry(token, float(logprobs[step, token]))
        values, ids = logprobs[step].topk(top) if top else (torch.empty(0), torch.empty(0, dtype=torch.long))
        item["top_logprobs"] = [entry(int(t), float(v)) for v, t in zip(values, ids, strict=True)]
        content.append(item)
    return content


def _usage(result: dict) -> dict:
    completion = sum(choice["completion_tokens"] for choice in result["choices"])
    return {"prompt_tokens": result["prompt_tokens"], "completion_tokens": completion,
            "total_tokens": result["prompt_tokens"] + completion}


def _sse(result: dict, request: ChatRequest, tokenizer, model: str, completion_id: str, created: int):
    """Server-sent events of a finished generation, per choice: a role chunk, one chunk per token, a final chunk
    (with the ``visor`` object); then a usage chunk when ``stream_options.include_usage``."""
    def event(choices: list[dict], extra: dict | None = None) -> str:
        chunk = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": choices, **(extra or {})}
        return f"data: {json.dumps(chunk)}\n\n"

    for index, choice in enumerate(result["choices"]):
        def delta(content: dict, finish: str | None = None, index: int = index) -> dict:
            return {"index": index, "delta": content, "finish_reason": finish}

        yield event([delta({"role": "assistant", "content": ""})])
        previous = ""
        tokens = tokenizer(choice["text"], add_special_tokens=False)["input_ids"]
        for n in range(1, len(tokens) + 1):
            text = tokenizer.decode(tokens[:n], skip_special_tokens=True).strip()
            if text != previous:
                yield event([delta({"content": text[len(previous):] if text.startswith(previous) else text})])
                previous = text
        yield event([delta({}, choice["finish_reason"])], {"visor": result["visor"]})
    if request.include_usage:
        yield event([], {"usage": _usage(result)})
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
            return StreamingResponse(_sse(result, parsed, tokenizer, loaded.name, completion_id, created),
                                     media_type="text/event-stream")
        choices = [{"index": index, "message": {"role": "assistant", "content": choice["text"]},
                    "logprobs": None if choice["logprobs"] is None else {"content": choice["logprobs"]},
                    "finish_reason": choice["finish_reason"]} for index, choice in enumerate(result["choices"])]
        return {"id": completion_id, "object": "chat.completion", "created": created, "model": loaded.name,
                "choices": choices, "usage": _usage(result), "visor": result["visor"]}


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
