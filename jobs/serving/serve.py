"""``visor serve``: the champion model behind an OpenAI-compatible HTTP API on Ray Serve.

Routes (FastAPI ingress of one deployment, :class:`VisorServer`):

* ``POST /v1/chat/completions`` — the OpenAI chat format (see
  :mod:`jobs.serving.openai_protocol`: the whole conversation through the chat template, ``n``,
  ``stop``, ``seed``, ``top_p``, ``logprobs``/``top_logprobs``, ``stream_options``) plus
  ``visor_budget`` / ``visor_tau``; the response is a chat completion with one choice per ``n``,
  ``usage`` and a ``visor`` object (budget used, language-model and total FLOPs,
  LLaVA-OneVision's FLOPs for the same input and the saving, model version). ``stream: true``
  answers with server-sent events as the tokens are generated (the first chunk leaves with the
  first token), then a usage chunk with ``include_usage``; a client that disconnects frees its slot.
* ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``; ``POST /admin/reload`` (load the version the
  alias points at now, if it moved) and ``GET /admin/stats`` (the decode loop's counters:
  requests, decode steps, requests that joined a running decode, rows per step, refused, failed, batched
  model calls that failed and were retried row by row, rows decoding and requests waiting; and ``placement``:
  the model's device and dtype and the GPU ids Ray gave the replica).

Each replica asks Ray for ``cpus_per_replica`` CPUs and ``replica_gpus`` GPUs and loads the model on ``device`` in
``dtype`` (``auto``: the replica's GPU in bfloat16 when it has one, else its CPUs in float32; ``cuda`` on a replica
that sees no GPU fails at start, naming the setting).

Requests are tiled and tokenized in the handler, then decoded by the replica's
:class:`~jobs.serving.engine.Engine` with continuous batching: new requests join the running
batch between decode steps, each row with its own budget (``"auto"`` requests get the policy's
choice with their own τ) and reduced KV cache, finished rows leave; a full waiting queue is
answered with 429 and ``Retry-After``. A reload swaps the model for new requests; rows in flight
finish on the model they started with (the engine admits a new version once the old one's rows
are done). With ``api_token`` set, every route but ``/health`` needs ``Authorization: Bearer <token>``.
Every error is answered in OpenAI's format (``{"error": {"message", "type", "param", "code"}}``): unknown
routes and methods too, and an unexpected failure (500) — a failure in the model fails only its own request
(see :mod:`jobs.serving.engine`). Ray Serve's metrics endpoint exports ``visor_requests``,
``visor_request_latency_s``, ``visor_budget_chosen`` and ``visor_image_cache_lookups`` (by ``result``: hit or
miss).

Each replica keeps an image-feature cache (:mod:`jobs.serving.image_cache`, ``image_cache_mb``): a later turn
about the same image — every turn re-sends it — skips the vision tower; its hits, misses, evictions and bytes are
in ``/admin/stats`` (``image_cache``), beside ``vision_tower_images``, the images the tower encoded.
"""

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException

from jobs.faults import ServeFault, serve_fault
from jobs.inputs import check_context
from jobs.serving.config import ServeConfig
from jobs.serving.engine import Engine, Job, QueueFull
from jobs.serving.image_cache import ImageFeatureCache, image_key
from jobs.serving.openai_protocol import ApiError, ChatCompletionRequest, parse_chat_request
from jobs.serving.openai_responses import (
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChoiceLogprobs,
    DeltaMessage,
    ModelCard,
    ModelList,
    ResponseMessage,
    Usage,
)


@dataclass
class Loaded:
    """One loaded model version."""

    model: Any
    processor: Any
    name: str
    version: str


def _load(config: ServeConfig) -> Loaded:
    """The version ``config.model`` resolves to now, on ``config.device`` in ``config.dtype`` (``auto``: the GPU Ray
    gave this replica, in bfloat16, or the CPU in float32)."""
    import mlflow

    from jobs.registry.model_format import load_visor
    from jobs.registry.tracking import registered_version

    model_uri, tracking_uri = config.model, config.tracking_uri
    mlflow.set_tracking_uri(tracking_uri)
    resolved = registered_version(model_uri, tracking_uri)
    name, version = resolved if resolved else (model_uri, "")
    model, processor = load_visor(f"models:/{name}/{version}" if resolved else model_uri, config.device, config.dtype)
    return Loaded(model.eval(), processor, name, version)


def prepare(request: ChatCompletionRequest, loaded: Loaded) -> dict[str, Any]:
    """Tile and tokenize one request (``[T]`` ids, ``[tiles, 3, H, W]`` pixels, and ``image_key``, the image's
    key in the replica's feature cache); checks the context length. Raises :class:`ApiError` (400) when the
    processor refuses the input."""
    from jinja2 import TemplateError  # a chat template's raise_exception (e.g. roles out of order)

    processor = loaded.processor
    images = [request.image] if request.image is not None else None
    try:
        text = processor.apply_chat_template(request.conversation, add_generation_prompt=True, tokenize=False)
        out = processor(text=[text], images=images, return_tensors="np")
    except (ValueError, TypeError, TemplateError) as err:
        raise ApiError(400, f"the model's processor refused the input: {err}", "messages", "invalid_input") from err
    ids = out["input_ids"][0]
    check_context(len(ids), request.max_completion_tokens, loaded.model.config.text_config.max_position_embeddings)
    tile = processor.image_processor.size
    inputs = {
        "input_ids": ids,
        "pixel_values": out["pixel_values"][0] if images else np.zeros((0, 3, tile["height"], tile["width"]),
                                                                        np.float32),
        "image_sizes": out["image_sizes"][0] if images else np.zeros(2, np.int64),
    }
    inputs["image_key"] = image_key(loaded.version or loaded.name, inputs["pixel_values"], inputs["image_sizes"])
    return inputs


def _usage(job: Job) -> Usage:
    completion = sum(len(choice.tokens) for choice in job.choices)
    return Usage(prompt_tokens=job.prompt_tokens, completion_tokens=completion,
                 total_tokens=job.prompt_tokens + completion)


def _logprobs(entries: list | None) -> ChoiceLogprobs | None:
    return None if entries is None else ChoiceLogprobs(content=entries)


def generation_error(status: int, message: str) -> ApiError:
    """The error answered for a request the engine failed (``status`` 400: the model refused its input)."""
    if status == 400:
        return ApiError(400, f"the model refused the input: {message}", "messages", "invalid_input")
    return ApiError(status, f"generation failed: {message}", None, "generation_failed", kind="server_error")


async def _finished(job: Job) -> None:
    """Wait until the engine has finished ``job``; raises :class:`ApiError` when the engine failed it."""
    while True:
        kind, *value = await job.events.get()
        if kind == "end":
            return
        if kind == "error":
            raise generation_error(*value)


async def _sse(job: Job, model: str, completion_id: str, created: int):
    """Server-sent events as the engine produces tokens: a role chunk per choice, a chunk per piece of new text,
    a final chunk per choice (with the ``visor`` object), a usage chunk with ``stream_options.include_usage``.
    A client that disconnects cancels the request (its rows leave the running batch)."""
    def event(choices: list[ChatCompletionStreamChoice], **extra: Any) -> str:
        chunk = ChatCompletionChunk(id=completion_id, created=created, model=model, choices=choices, **extra)
        return f"data: {chunk.model_dump_json()}\n\n"

    try:
        for index in range(job.request.n):
            yield event([ChatCompletionStreamChoice(index=index, delta=DeltaMessage(role="assistant", content=""))])
        while True:
            kind, *value = await job.events.get()
            if kind == "delta":
                yield event([ChatCompletionStreamChoice(index=value[0], delta=DeltaMessage(content=value[1]),
                                                        logprobs=_logprobs(value[2]))])
            elif kind == "finish":
                yield event([ChatCompletionStreamChoice(index=value[0], delta=DeltaMessage(),
                                                        logprobs=_logprobs(value[1]),
                                                        finish_reason=job.choices[value[0]].finish)], visor=job.visor)
            elif kind == "error":
                yield event([], error=generation_error(*value).body.error)
                break
            else:
                if job.request.include_usage:
                    yield event([], usage=_usage(job))
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled = True  # a no-op once finished; frees the rows of a client that went away


app = FastAPI(title="VISOR", description="OpenAI-compatible chat completions with a per-request compute budget")


def _error(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body.model_dump(), status_code=err.status)


def _unexpected(err: Exception) -> ApiError:
    return ApiError(500, f"internal error: {type(err).__name__}: {err}", None, "internal_error", kind="server_error")


@app.exception_handler(HTTPException)
async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    """FastAPI's own errors (unknown route, wrong method) in OpenAI's format."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
    message = f"{request.method} {request.url.path}: {err.detail}"
    return _error(ApiError(err.status_code, message, None, code))


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    return _error(ApiError(400, f"invalid request: {err.errors()}", None, "invalid_request"))


@app.exception_handler(Exception)
async def _server_error(request: Request, err: Exception) -> JSONResponse:
    """Anything unexpected: a 500 in OpenAI's format, never a plain-text page."""
    return _error(_unexpected(err))


@serve.deployment
@serve.ingress(app)
class VisorServer:
    """The Serve deployment (see the module docstring), constructed with its :class:`ServeConfig`."""

    def __init__(self, config: ServeConfig, fault: ServeFault | None = None):
        from ray.serve import metrics

        self.config = config
        from jobs.inference_device import resolve

        resolve(config.device, config.dtype, "serve.")  # a setting this replica cannot honour fails here, by name
        self.current = _load(config)
        self.requests = metrics.Counter("visor_requests", "Chat requests by HTTP status", tag_keys=("status",))
        self.image_lookups = metrics.Counter("visor_image_cache_lookups", "Image-feature cache lookups by result",
                                             tag_keys=("result",))
        cache = ImageFeatureCache(int(config.image_cache_mb * 2**20),
                                  lambda hit: self.image_lookups.inc(tags={"result": "hit" if hit else "miss"}))
        self.engine = Engine(config.max_batch_size, config.max_queued_requests, config.batch_wait_timeout_s, fault,
                             cache)
        self.latency = metrics.Histogram("visor_request_latency_s", "Chat request latency (s)",
                                         boundaries=[0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30])
        self.budget_chosen = metrics.Counter("visor_budget_chosen", "Budget used per request", tag_keys=("budget",))
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
            self.current = await asyncio.to_thread(_load, self.config)
            return {"reloaded": True, "version": self.current.version}

    # ------------------------------------------------------------------ routes
    @app.get("/health")
    async def health(self) -> dict:
        return {"status": "ok", "model": self.current.name, "version": self.current.version}

    @app.get("/v1/models", response_model=ModelList)
    async def models(self, request: Request):
        if (denied := self._denied(request)) is not None:
            return denied
        return ModelList(data=[self._model_card()])

    def _model_card(self) -> ModelCard:
        loaded = self.current
        return ModelCard(id=loaded.name, version=loaded.version, budgets=loaded.model.plan.num_budgets)

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard)
    async def model(self, model_id: str, request: Request):
        """One model (``models.retrieve``): the served one, by name or ``name/version``."""
        if (denied := self._denied(request)) is not None:
            return denied
        loaded = self.current
        if model_id not in (loaded.name, f"{loaded.name}/{loaded.version}"):
            return _error(ApiError(404, f"model {model_id!r} is not served here (serving {loaded.name!r})", "model",
                                   "model_not_found"))
        return self._model_card()

    @app.post("/admin/reload")
    async def reload(self, request: Request):
        if (denied := self._denied(request)) is not None:
            return denied
        return await self.reload_if_moved()

    @app.get("/admin/stats")
    async def stats(self, request: Request):
        if (denied := self._denied(request)) is not None:
            return denied
        from jobs.inference_device import describe

        return {**self.engine.snapshot(), "placement": describe(self.current.model)}

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse)
    async def chat(self, request: Request):
        started = time.perf_counter()
        loaded = self.current
        try:
            self._authorized(request)
            parsed = parse_chat_request(await request.body(), self.config.limits, loaded.model.plan.num_budgets)
            if parsed.model not in (None, loaded.name, f"{loaded.name}/{loaded.version}"):
                raise ApiError(404, f"model {parsed.model!r} is not served here (serving {loaded.name!r})", "model",
                               "model_not_found")
            if parsed.n > self.config.max_batch_size:
                raise ApiError(400, f"n must be at most {self.config.max_batch_size} on this server", "n")
            job = Job(parsed, loaded, await asyncio.to_thread(prepare, parsed, loaded), asyncio.get_running_loop())
            self.engine.submit(job)
        except ApiError as err:
            self.requests.inc(tags={"status": str(err.status)})
            return _error(err)
        except QueueFull as err:
            self.requests.inc(tags={"status": "429"})
            return JSONResponse(ApiError(429, f"the server is busy ({err}); retry shortly", None, "queue_full",
                                         kind="rate_limit_error").body.model_dump(), status_code=429,
                                headers={"Retry-After": "1"})
        except Exception as err:  # noqa: BLE001 (a bug: this request gets a 500, in OpenAI's format)
            self.requests.inc(tags={"status": "500"})
            return _error(_unexpected(err))
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if parsed.stream:
            self.requests.inc(tags={"status": "200"})
            return StreamingResponse(_sse(job, loaded.name, completion_id, created), media_type="text/event-stream")
        try:
            await _finished(job)
        except ApiError as err:
            self.requests.inc(tags={"status": str(err.status)})
            return _error(err)
        finally:
            job.cancelled = True  # a client gone while waiting frees its rows; a no-op once finished
        self.requests.inc(tags={"status": "200"})
        self.budget_chosen.inc(tags={"budget": str(job.visor.budget)})
        self.latency.observe(time.perf_counter() - started)
        choices = [ChatCompletionChoice(index=index, message=ResponseMessage(content=choice.text),
                                        logprobs=_logprobs(choice.logprobs), finish_reason=choice.finish)
                   for index, choice in enumerate(job.choices)]
        return ChatCompletionResponse(id=completion_id, created=created, model=loaded.name, choices=choices,
                                      usage=_usage(job), visor=job.visor)


def build_app(config: ServeConfig):
    """The Serve application for ``config`` (``serve.run`` it), with the test fault ``$VISOR_TEST_FAULT`` asks for
    (:func:`jobs.faults.serve_fault`; read here, in the driver, and handed to the replicas)."""
    return VisorServer.options(
        num_replicas=config.replicas, max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.cpus_per_replica, "num_gpus": config.replica_gpus},
    ).bind(config, serve_fault())


def app_builder(args: dict):
    """Ray Serve application builder (``import_path: jobs.serving.serve:app_builder`` in a ``serveConfigV2``):
    ``args`` are :class:`ServeConfig` fields (``limits`` a mapping of :class:`~jobs.serving.config.Limits`
    fields), validated by :func:`jobs.config.load_config`. ``host`` and ``port`` are not used here: the HTTP proxy
    listens where the ``serveConfigV2``'s ``http_options`` say (``visor infra check`` refuses them in ``args``)."""
    from jobs.config import load_config
    from jobs.registry.tracking import tracking_uri

    config = load_config(ServeConfig, args)
    return build_app(config.model_copy(update={"tracking_uri": tracking_uri(config.tracking_uri)}))


def start(config: ServeConfig, name: str = "visor", route_prefix: str = "/") -> None:
    """Start Serve's HTTP proxy on ``config.host:port`` (first call only) and deploy the app."""
    from jobs.ray_env import init_ray
    from jobs.registry.tracking import tracking_uri

    init_ray()
    serve.start(http_options={"host": config.host, "port": config.port})
    app = build_app(config.model_copy(update={"tracking_uri": tracking_uri(config.tracking_uri)}))
    serve.run(app, name=name, route_prefix=route_prefix, blocking=False)
