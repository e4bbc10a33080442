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

Admission is bounded: at most ``max_rows`` rows decode together (a request of ``n`` choices takes
``n``) and at most ``max_queued`` requests wait; beyond that :meth:`Engine.submit` raises
:class:`QueueFull` (the handler answers 429 with ``Retry-After``). A request's sampled choices come
from its own generator (seeded by ``seed``), so they do not depend on what else is decoding.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import torch

from jobs.serving.openai_protocol import ChatRequest


class QueueFull(Exception):
    """The replica's waiting queue is full."""


@dataclass
class Choice:
    """One choice of a request as it decodes."""

    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: str = ""  # the part of ``text`` already sent to the client
    logprobs: list[dict] | None = None
    finish: str | None = None


class Job:
    """One request on the engine. Events on :attr:`events` (put from the engine's thread):
    ``("delta", choice, text)``, ``("finish", choice)``, ``("end", None)`` and ``("error", message)``."""

    def __init__(self, request: ChatRequest, loaded: Any, inputs: dict, loop: asyncio.AbstractEventLoop):
        self.request, self.loaded, self.inputs, self.loop = request, loaded, inputs, loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.generator = None if request.seed is None else torch.Generator().manual_seed(request.seed)
        self.choices = [Choice(logprobs=[] if request.logprobs else None) for _ in range(request.n)]
        self.visor: dict = {}
        self.prompt_tokens = 0

    def emit(self, *event: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    @property
    def done(self) -> bool:
        return all(choice.finish is not None for choice in self.choices)


def logprob_entries(token: int, logprobs: torch.Tensor, top: int, tokenizer) -> dict:
    """OpenAI's ``logprobs.content`` entry of ``token`` given the step's ``log_softmax`` ``[V]``."""
    def entry(index: int, value: float) -> dict:
        text = tokenizer.decode([index])
        return {"token": text, "logprob": value, "bytes": list(text.encode())}

    item = entry(token, float(logprobs[token]))
    values, ids = logprobs.topk(top) if top else (logprobs[:0], logprobs[:0].long())
    item["top_logprobs"] = [entry(int(i), float(v)) for v, i in zip(values, ids, strict=True)]
    return item


class Engine:
    """The decode loop of one replica (module docstring). ``wait_s``: how long an idle engine waits for more
    requests to arrive before prefilling the first ones."""

    def __init__(self, max_rows: int, max_queued: int, wait_s: float = 0.0):
        self.max_rows, self.max_queued, self.wait_s = max_rows, max_queued, wait_s
        self.waiting: deque[Job] = deque()
        self.condition = threading.Condition()
        self.state = None
        self.rows: list[tuple[Job, int]] = []  # (job, choice index) of each row of ``state``
        self.stats: Counter[str] = Counter()
        self.rows_per_step: Counter[int] = Counter()
        self.thread = threading.Thread(target=self._loop, name="visor-engine", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises :class:`QueueFull` when ``max_queued`` requests already wait."""
        with self.condition:
            if len(self.waiting) >= self.max_queued:
                self.stats["refused"] += 1
                raise QueueFull(f"{len(self.waiting)} requests are waiting")
            self.waiting.append(job)
            self.condition.notify()

    # ---------------------------------------------------------------- the loop
    def _loop(self) -> None:
        while True:
            jobs = self._admit()
            try:
                with torch.no_grad():
                    if jobs:
                        self._join(jobs)
                    if self.rows:
                        self._step()
            except Exception as err:  # noqa: BLE001 (a failing batch fails its requests, never the loop)
                for job in {job for job, _ in self.rows} | set(jobs):
                    job.emit("error", f"{type(err).__name__}: {err}")
                self.state, self.rows = None, []

    def _admit(self) -> list[Job]:
        """Waiting jobs that fit beside the running rows (same model version); blocks while idle."""
        with self.condition:
            if not self.rows:
                while not self.waiting:
                    self.condition.wait()
                if self.wait_s and len(self.waiting) < self.max_rows:
                    self.condition.wait(self.wait_s)
            loaded = self.rows[0][0].loaded if self.rows else None
            free, jobs = self.max_rows - len(self.rows), []
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
        """Prefill ``jobs`` (``n`` rows each) and add their rows to the running state."""
        from pipelines.dataset import Collator, object_column
        from visor_model.cache import DecodeState
        from visor_model.flops import baseline_flops, visor_flops
        from visor_model.policy import choose_budget

        loaded = jobs[0].loaded
        model = loaded.model
        rows = [(job, c) for job in jobs for c in range(job.request.n)]
        batch = Collator(loaded.processor.tokenizer.pad_token_id, padding_side="left")(
            {name: object_column([job.inputs[name] for job, _ in rows])
             for name in ("input_ids", "pixel_values", "image_sizes")}
        )
        budgets = torch.tensor([0 if job.request.budget == "auto" else int(job.request.budget) for job, _ in rows])
        auto = [i for i, (job, _) in enumerate(rows) if job.request.budget == "auto"]
        if auto:
            logits = model.policy(model.policy_features(**batch))
            for i in auto:
                tau = rows[i][0].request.tau
                budgets[i] = choose_budget(logits[i : i + 1], model.config.policy_tau if tau is None else tau)[0]
        state = model.start_decoding(**batch, budget=budgets,
                                     capacity=max(job.request.max_tokens for job in jobs))
        for i, (job, choice) in enumerate(rows):
            if choice == 0:
                nv, nt, tiles = int(state.num_visual[i]), int(state.num_text[i]), len(job.inputs["pixel_values"])
                cost = visor_flops(model.config, int(budgets[i]), nv, nt, tiles)
                full = baseline_flops(model.config, nv, nt, tiles)
                job.prompt_tokens = int(batch["attention_mask"][i].sum())
                job.visor = {"budget": int(budgets[i]), "flops": cost["total"], "language_flops": cost["language"],
                             "full_attention_flops": full["total"],
                             "saving_vs_full_attention": full["total"] / cost["total"],
                             "model_version": loaded.version}
        self.stats["requests"] += len(jobs)
        if self.rows:
            self.stats["joined_running_decode"] += len(jobs)
        self.state = state if self.state is None else DecodeState.concat([self.state, state])
        self.rows += rows

    def _step(self) -> None:
        """Sample one token for every row, send it, retire finished rows, feed the rest through the model."""
        model = self.rows[0][0].loaded.model
        tokens = [self._sample(job, c, self.state.logits[i], model) for i, (job, c) in enumerate(self.rows)]
        self.stats["steps"] += 1
        self.rows_per_step[len(self.rows)] += 1
        keep = [i for i, (job, c) in enumerate(self.rows) if job.choices[c].finish is None and not job.cancelled]
        for job in {job for job, _ in self.rows}:
            if job.done and not job.cancelled:
                job.emit("end", None)
        if not keep:
            self.state, self.rows = None, []
            return
        if len(keep) < len(self.rows):
            index = torch.tensor(keep)
            self.state = self.state.select(index)
            self.state.cache.compact()
            self.rows = [self.rows[i] for i in keep]
        model.decode_step(self.state, torch.tensor([tokens[i] for i in keep]))

    def _sample(self, job: Job, index: int, logits: torch.Tensor, model) -> int:
        """Pick the next token of ``job``'s choice ``index``, record it and send the new text; sets the choice's
        ``finish`` when it is done."""
        from visor_model.modeling import next_token

        request, tokenizer, choice = job.request, job.loaded.processor.tokenizer, job.choices[index]
        if choice.finish is not None or job.cancelled:
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
            elif len(choice.tokens) >= request.max_tokens:
                choice.finish = "length"
        held = max((len(stop) for stop in request.stop), default=1) - 1 if choice.finish is None else 0
        ready = choice.text[: len(choice.text) - held] if held else choice.text
        if len(ready) > len(choice.sent) and ready.startswith(choice.sent):
            job.emit("delta", index, ready[len(choice.sent):])
            choice.sent = ready
        if choice.finish is not None:
            job.emit("finish", index)
        return token

    def snapshot(self) -> dict:
        """Counters for ``GET /admin/stats``."""
        with self.condition:
            waiting = len(self.waiting)
        return {**self.stats, "waiting": waiting, "decoding": len(self.rows),
                "rows_per_step": {str(k): v for k, v in sorted(self.rows_per_step.items())}}
