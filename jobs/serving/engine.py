"""Continuous (iteration-level) batching in a serving replica.

One thread per replica runs the decode loop (:class:`Engine`). Between two decode steps it
admits waiting requests — their prompts are prefilled together (one
:meth:`~visor_model.VisorForConditionalGeneration.start_decoding`) and their rows join the
running :class:`~visor_model.cache.DecodeState`, each row keeping its own budget and its own
reduced KV cache — and it retires the rows that finished (EOS, ``max_tokens``, a stop string, or
a client that went away). Every new token goes to its request at once (:attr:`Job.events`), so a
streaming client gets its first chunk as soon as the first token exists.

``@serve.batch`` is not used: it forms a batch once and holds every request in it until the whole
batch has generated — the static batching this replaces.

Admission is bounded: at most ``max_batch_size`` rows decode together (a request of ``n`` choices takes
``n``) and at most ``max_queued_requests`` requests wait (the :class:`~jobs.serving.config.ServeConfig` fields of
the same names); beyond that :meth:`Engine.submit` raises
:class:`QueueFull` (the handler answers 429 with ``Retry-After``). A request's sampled choices come
from its own generator (seeded by ``seed``), so they do not depend on what else is decoding.

A failure fails only the request that caused it. When a batched model call (the prefill of the admitted
requests, or a decode step of the running rows) raises, the engine runs it again row by row (prefill: request by
request) on copies of the state, fails the requests whose own call raises and carries on with the others, whose
states it joins back together; the failed call leaves nothing behind (the cache slot a decode step writes is only
claimed once the step completes). A failure in sampling fails only its request. A failed request gets an
``("error", status, message)`` event: 400 when the model refused the input (``ValueError``/``TypeError``), 500
otherwise. ``fault`` (:class:`~jobs.faults.ServeFault`, tests only) makes the model calls raise for chosen requests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import torch

from jobs.faults import ServeFault
from jobs.serving.image_cache import ImageFeatureCache
from jobs.serving.openai_protocol import ChatCompletionRequest
from jobs.serving.openai_responses import TokenLogprob, TopLogprob, VisorStats

INPUT_ERRORS = (ValueError, TypeError)  # raised by the model about its input: the request's fault (400)


class QueueFull(Exception):
    """The replica's waiting queue is full."""


@dataclass
class Choice:
    """One choice of a request as it decodes."""

    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: str = ""  # the part of ``text`` already sent to the client
    logprobs: list[TokenLogprob] | None = None
    logprobs_sent: int = 0  # entries of ``logprobs`` already streamed
    finish: str | None = None


class Job:
    """One request on the engine. Events on :attr:`events` (put from the engine's thread):
    ``("delta", choice, text, logprobs)`` (the entries of the tokens not sent yet, or None),
    ``("finish", choice, logprobs)``, ``("end", None)`` and ``("error", status, message)``."""

    def __init__(self, request: ChatCompletionRequest, loaded: Any, inputs: dict, loop: asyncio.AbstractEventLoop):
        self.request, self.loaded, self.inputs, self.loop = request, loaded, inputs, loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.generator = None if request.seed is None else torch.Generator().manual_seed(request.seed)
        self.choices = [Choice(logprobs=[] if request.logprobs else None) for _ in range(request.n)]
        self.visor: VisorStats | None = None  # set by the prefill
        self.prompt_tokens = 0
        self.failed = False
        self.text = " ".join(request.texts)

    def emit(self, *event: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    @property
    def done(self) -> bool:
        return all(choice.finish is not None for choice in self.choices)

    @property
    def gone(self) -> bool:
        """Its rows leave the running batch: failed, or cancelled (client gone or answered)."""
        return self.failed or self.cancelled


def logprob_entries(token: int, logprobs: torch.Tensor, top: int, tokenizer) -> TokenLogprob:
    """OpenAI's ``logprobs.content`` entry of ``token`` given the step's ``log_softmax`` ``[V]``."""
    def entry(index: int) -> dict:
        text = tokenizer.decode([index])
        return {"token": text, "logprob": float(logprobs[index]), "bytes": list(text.encode())}

    ids = logprobs.topk(top).indices.tolist() if top else []
    return TokenLogprob(**entry(token), top_logprobs=[TopLogprob(**entry(i)) for i in ids])


class Engine:
    """The decode loop of one replica (module docstring). ``batch_wait_timeout_s``: how long an idle engine waits for
    more requests to arrive before prefilling the first ones."""

    def __init__(self, max_batch_size: int, max_queued_requests: int, batch_wait_timeout_s: float = 0.0,
                 fault: ServeFault | None = None, image_cache: ImageFeatureCache | None = None):
        self.max_batch_size, self.max_queued_requests = max_batch_size, max_queued_requests
        self.batch_wait_timeout_s, self.fault = batch_wait_timeout_s, fault
        self.image_cache = image_cache or ImageFeatureCache(0)
        self.waiting: deque[Job] = deque()
        self.condition = threading.Condition()
        self.state = None
        self.rows: list[tuple[Job, int]] = []  # (job, choice index) of each row of ``state``
        self.stats: Counter[str] = Counter()
        self.rows_per_step: Counter[int] = Counter()
        self.thread = threading.Thread(target=self._loop, name="visor-engine", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises :class:`QueueFull` when ``max_queued_requests`` requests already wait."""
        with self.condition:
            if len(self.waiting) >= self.max_queued_requests:
                self.stats["refused"] += 1
                raise QueueFull(f"{len(self.waiting)} requests are waiting")
            self.waiting.append(job)
            self.condition.notify()

    # ---------------------------------------------------------------- the loop
    def _loop(self) -> None:
        while True:
            jobs = self._admit()
            try:
                with torch.inference_mode():
                    if jobs:
                        self._join(jobs)
                    if self.rows:
                        self._step()
            except Exception as err:  # noqa: BLE001 (a bug of the engine itself: its requests fail, never the loop)
                for job in {job for job, _ in self.rows} | set(jobs):
                    self._fail(job, err)
                self.state, self.rows = None, []

    def _fail(self, job: Job, err: BaseException) -> None:
        """Answer ``job`` with ``err`` (once); its rows leave at the next step."""
        if job.failed:
            return
        job.failed = True
        self.stats["failed"] += 1
        status = 400 if isinstance(err, INPUT_ERRORS) else 500
        job.emit("error", status, f"{type(err).__name__}: {err}")

    def _call(self, at: str, jobs: list[Job], call: Any, *args: Any) -> Any:
        """``call(*args)``, a model call for ``jobs`` (where a test's :class:`ServeFault` strikes)."""
        if self.fault is not None:
            self.fault.maybe_fail(at, [job.text for job in jobs])
        return call(*args)

    def _admit(self) -> list[Job]:
        """Waiting jobs that fit beside the running rows (same model version); blocks while idle."""
        with self.condition:
            if not self.rows:
                while not self.waiting:
                    self.condition.wait()
                deadline = time.monotonic() + self.batch_wait_timeout_s  # each arrival wakes the wait: wait it out
                while len(self.waiting) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                    self.condition.wait(left)
            loaded = self.rows[0][0].loaded if self.rows else None
            free, jobs = self.max_batch_size - len(self.rows), []
            while self.waiting:
                job = self.waiting[0]
                if job.cancelled:
                    self.waiting.popleft()
                    continue
                if job.request.n > free or (loaded is not None and job.loaded is not loaded):
                    break
                loaded = job.loaded
                jobs.append(self.waiting.popleft())
                free -= job.request.n
            return jobs

    def _join(self, jobs: list[Job]) -> None:
        """Prefill ``jobs`` (``n`` rows each) and add their rows to the running state; when the batched prefill
        raises, each job is prefilled alone and only those that fail alone are failed."""
        from visor_model.cache import DecodeState

        self.stats["requests"] += len(jobs)
        try:
            parts = [self._prefill(jobs)]
        except Exception as err:  # noqa: BLE001 (find the culprits below)
            if len(jobs) == 1:
                self._fail(jobs[0], err)
                return
            self.stats["retried_alone"] += 1
            parts = []
            for job in jobs:
                try:
                    parts.append(self._prefill([job]))
                except Exception as alone:  # noqa: BLE001 (this request's own failure)
                    self._fail(job, alone)
        for state, rows in parts:
            if self.rows:
                self.stats["joined_running_decode"] += len({job for job, _ in rows})
            self.state = state if self.state is None else DecodeState.concat([self.state, state])
            self.rows += rows

    def _prefill(self, jobs: list[Job]) -> tuple[Any, list[tuple[Job, int]]]:
        """The decode state of ``jobs``' rows after their prompts, and those rows (``n`` per job).

        One model call: each prompt is prefilled once — the policy decides the ``"auto"`` rows inside that prefill,
        each with its request's τ — and a request of ``n`` choices then has its row copied ``n`` times
        (:meth:`~visor_model.cache.DecodeState.select`). Visual tokens come from the image-feature cache; the vision
        tower runs only for the images it misses, together.
        """
        from jobs.inference_device import to_device
        from pipelines.dataset import Collator, object_column
        from visor_model.flops import baseline_flops, visor_flops
        from visor_model.modeling import AUTO_BUDGET

        loaded = jobs[0].loaded
        model = loaded.model
        device = model.device
        batch = to_device(Collator(loaded.processor.tokenizer.pad_token_id, padding_side="left")(
            {name: object_column([job.inputs[name] for job in jobs]) for name in ("input_ids", "pixel_values",
                                                                                  "image_sizes")}
        ), device)
        budgets = torch.tensor([AUTO_BUDGET if job.request.visor_budget == "auto" else int(job.request.visor_budget)
                                for job in jobs], device=device)
        taus = torch.tensor([model.config.policy_tau if job.request.visor_tau is None else job.request.visor_tau
                             for job in jobs], device=device)

        def prefill() -> Any:
            features = self._image_features(model, [job for job in jobs if len(job.inputs["pixel_values"])],
                                            batch.get("pixel_values"), batch.get("image_sizes"))
            return model.start_decoding(**batch, budget=budgets, tau=taus, image_features=features,
                                        capacity=max(job.request.max_completion_tokens for job in jobs))

        state = self._call("prefill", jobs, prefill)
        used = state.budget.tolist()
        for i, job in enumerate(jobs):
            nv, nt, tiles = int(state.num_visual[i]), int(state.num_text[i]), len(job.inputs["pixel_values"])
            cost = visor_flops(model.config, used[i], nv, nt, tiles)
            full = baseline_flops(model.config, nv, nt, tiles)
            job.prompt_tokens = int(batch["attention_mask"][i].sum())
            job.visor = VisorStats(budget=used[i], flops=cost["total"], language_flops=cost["language"],
                                   full_attention_flops=full["total"],
                                   saving_vs_full_attention=full["total"] / cost["total"],
                                   model_version=loaded.version)
        copies = [i for i, job in enumerate(jobs) for _ in range(job.request.n)]
        if len(copies) > len(jobs):
            state = state.select(torch.tensor(copies, device=device))
        return state, [(job, c) for job in jobs for c in range(job.request.n)]

    def _image_features(self, model: Any, jobs: list[Job], pixels: torch.Tensor | None,
                        sizes: torch.Tensor | None) -> Any:
        """Visual tokens and slots of the images of ``jobs`` (collated as ``pixels [images, tiles, 3, H, W]`` and
        ``sizes [images, 2]``, in order), as the model's ``image_features=``: from the cache where it has them,
        the rest from one vision-tower call, then cached. None without images."""
        if not jobs:
            return None
        found = [self.image_cache.get(job.inputs["image_key"]) for job in jobs]
        missing = [i for i, entry in enumerate(found) if entry is None]
        if missing:
            index = torch.tensor(missing, device=pixels.device)
            features, slots = model.image_features(pixels.index_select(0, index), sizes.index_select(0, index))
            self.stats["vision_tower_images"] += len(missing)
            for i, tokens, count in zip(missing, features, slots, strict=True):
                found[i] = (tokens, count)
                self.image_cache.put(jobs[i].inputs["image_key"], tokens, count)
        return [tokens for tokens, _ in found], [count for _, count in found]

    def _step(self) -> None:
        """Sample one token for every row, send it, retire finished rows, feed the rest through the model."""
        model = self.rows[0][0].loaded.model
        logits = self.state.logits.float().cpu()  # sampling runs on the host: each request's generator is there
        tokens = []
        for i, (job, c) in enumerate(self.rows):
            try:
                tokens.append(self._sample(job, c, logits[i], model))
            except Exception as err:  # noqa: BLE001 (fails this request only)
                self._fail(job, err)
                tokens.append(0)
        self.stats["steps"] += 1
        self.rows_per_step[len(self.rows)] += 1
        for job in {job for job, _ in self.rows}:
            if job.done and not job.gone:
                job.emit("end", None)
        keep = [i for i, (job, c) in enumerate(self.rows) if job.choices[c].finish is None and not job.gone]
        self._keep(keep)
        if self.rows:
            self._decode(model, torch.tensor([tokens[i] for i in keep], device=model.device))

    def _keep(self, keep: list[int]) -> None:
        """Keep only the rows ``keep`` (indices into :attr:`rows`) in the running state."""
        if not keep:
            self.state, self.rows = None, []
        elif len(keep) < len(self.rows):
            self.state = self.state.select(torch.tensor(keep, device=self.state.logits.device))
            self.state.cache.compact()
            self.rows = [self.rows[i] for i in keep]

    def _decode(self, model: Any, tokens: torch.Tensor) -> None:
        """Feed ``tokens`` (one per row) through the model; when the batched step raises, each row steps alone
        on a copy of its state, the rows whose own step raises fail, and the others' states are joined back."""
        from visor_model.cache import DecodeState

        try:
            self._call("decode", [job for job, _ in self.rows], model.decode_step, self.state, tokens)
            return
        except Exception as err:  # noqa: BLE001 (find the culprits below)
            if len({job for job, _ in self.rows}) == 1:
                self._fail(self.rows[0][0], err)
                self.state, self.rows = None, []
                return
        self.stats["retried_alone"] += 1
        alone = []
        for i, (job, _) in enumerate(self.rows):
            if job.failed:
                continue
            # a copy: the failed step's writes are not kept
            state = self.state.select(torch.tensor([i], device=tokens.device))
            try:
                self._call("decode", [job], model.decode_step, state, tokens[i : i + 1])
                alone.append((i, state))
            except Exception as err:  # noqa: BLE001 (this request's own failure)
                self._fail(job, err)
        alone = [(i, state) for i, state in alone if not self.rows[i][0].failed]  # all choices of a failed job go
        self.rows = [self.rows[i] for i, _ in alone]
        self.state = DecodeState.concat([state for _, state in alone]) if alone else None

    def _sample(self, job: Job, index: int, logits: torch.Tensor, model) -> int:
        """Pick the next token of ``job``'s choice ``index``, record it and send the new text; sets the choice's
        ``finish`` when it is done."""
        from visor_model.modeling import next_token

        request, tokenizer, choice = job.request, job.loaded.processor.tokenizer, job.choices[index]
        if choice.finish is not None or job.gone:
            return 0
        if choice.logprobs is not None:
            logprobs = torch.log_softmax(logits.float(), -1)
        logits = logits.clone()
        logits[model.config.image_token_id] = float("-inf")
        token = int(next_token(logits[None], request.temperature > 0, request.temperature or 1.0, 0, request.top_p,
                               job.generator)[0])
        if token == tokenizer.eos_token_id:
            choice.finish = "stop"
        else:
            choice.tokens.append(token)
            if choice.logprobs is not None:
                choice.logprobs.append(logprob_entries(token, logprobs, request.top_logprobs, tokenizer))
            choice.text = tokenizer.decode(choice.tokens, skip_special_tokens=True).strip()
            hits = [choice.text.find(stop) for stop in request.stop if stop in choice.text]
            if hits:
                choice.text, choice.finish = choice.text[: min(hits)].rstrip(), "stop"
                if choice.logprobs is not None:
                    choice.logprobs.pop()  # the token that completed the stop text is not returned
            elif len(choice.tokens) >= request.max_completion_tokens:
                choice.finish = "length"
        held = max((len(stop) for stop in request.stop), default=1) - 1 if choice.finish is None else 0
        ready = choice.text[: len(choice.text) - held] if held else choice.text
        if len(ready) > len(choice.sent) and ready.startswith(choice.sent):
            job.emit("delta", index, ready[len(choice.sent):], self._unsent_logprobs(choice))
            choice.sent = ready
        if choice.finish is not None:
            job.emit("finish", index, self._unsent_logprobs(choice))
        return token

    @staticmethod
    def _unsent_logprobs(choice: Choice) -> list[TokenLogprob] | None:
        """The logprobs entries of ``choice`` not sent yet (marked sent), or None without logprobs."""
        if choice.logprobs is None:
            return None
        entries = choice.logprobs[choice.logprobs_sent:]
        choice.logprobs_sent = len(choice.logprobs)
        return entries

    def snapshot(self) -> dict:
        """Counters for ``GET /admin/stats``."""
        with self.condition:
            waiting = len(self.waiting)
        return {**self.stats, "waiting": waiting, "decoding": len(self.rows),
                "rows_per_step": {str(k): v for k, v in sorted(self.rows_per_step.items())},
                "image_cache": self.image_cache.snapshot()}
