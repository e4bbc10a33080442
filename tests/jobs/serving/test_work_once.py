"""Work a serving replica does once (issue 26), in-process on the engine with a tiny model: one prefill for an
``auto`` request of ``n`` choices, the vision tower once per image across turns (the image-feature cache, counted
with a forward hook), answers equal token for token whether the cache hit or missed, the cache bounded by bytes."""

from __future__ import annotations

import asyncio
import json

import torch

from jobs.inputs import Limits
from jobs.serving.engine import Engine, Job
from jobs.serving.image_cache import ImageFeatureCache
from jobs.serving.openai_protocol import image_data_url, parse_chat_request
from jobs.serving.serve import Loaded, _finished, prepare
from tests.conftest import random_image
from tests.visor_model.test_budgets import build_model
from tests.visor_model.test_work_done_once import TowerCalls


def ask(engine: Engine, loaded: Loaded, body: dict) -> Job:
    """Run one request on ``engine`` to the end; returns its finished job."""
    async def run() -> Job:
        request = parse_chat_request(json.dumps(body).encode(), Limits(), loaded.model.plan.num_budgets)
        job = Job(request, loaded, prepare(request, loaded), asyncio.get_running_loop())
        engine.submit(job)
        await _finished(job)
        return job

    return asyncio.run(run())


def turn(image, question: str, **extra) -> dict:
    content = [{"type": "image_url", "image_url": {"url": image_data_url(image)}}, {"type": "text", "text": question}]
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0, **extra}


def test_one_prefill_per_request_and_one_tower_run_per_image(tokenizer, processor) -> None:
    model = build_model(tokenizer)
    loaded = Loaded(model, processor, "visor", "1")
    cached = Engine(8, 8, image_cache=ImageFeatureCache(64 * 2**20))
    uncached = Engine(8, 8, image_cache=ImageFeatureCache(0))
    image = random_image(70, 50, 3)
    first = turn(image, "what colour is the box ?", n=3, visor_budget="auto")
    follow_up = turn(image, "how many ?", visor_budget=1, logprobs=True, top_logprobs=2)
    with TowerCalls(model) as counted:
        job = ask(cached, loaded, first)
    assert counted.calls == 1  # auto (the policy inside the prefill) and n=3 (rows copied) share one tower run
    assert len({tuple(c.tokens) for c in job.choices}) == 1 and len(job.choices) == 3  # greedy: the same choices
    with TowerCalls(model) as counted:
        hit = ask(cached, loaded, follow_up)
    assert counted.calls == 0
    stats = cached.snapshot()
    assert stats["image_cache"]["hits"] == 1 and stats["image_cache"]["misses"] == 1
    assert stats["vision_tower_images"] == 1 and stats["image_cache"]["bytes"] > 0
    with TowerCalls(model) as counted:
        miss = ask(uncached, loaded, follow_up)
    assert counted.calls == 1 and uncached.snapshot()["image_cache"]["entries"] == 0
    assert hit.choices[0].tokens == miss.choices[0].tokens and hit.choices[0].logprobs == miss.choices[0].logprobs
    assert hit.visor == miss.visor
    # the same request through generate (no engine, no cache): the same tokens
    inputs = dict(processor(text=[processor.prompt("how many ?")], images=[image], return_tensors="pt"))
    inputs.pop("batch_num_images", None)
    out = model.generate(**inputs, budget=1, max_new_tokens=4)[0, inputs["input_ids"].shape[1]:].tolist()
    eos = processor.tokenizer.eos_token_id
    assert hit.choices[0].tokens == (out[: out.index(eos)] if eos in out else out)


def test_the_cache_is_bounded_by_bytes_and_evicts_the_least_recently_used() -> None:
    lookups: list[bool] = []
    entry = torch.zeros(10, 4)  # 160 bytes
    cache = ImageFeatureCache(400, lookups.append)
    cache.put("a", entry, 10)
    cache.put("b", entry.clone(), 10)
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("c", entry.clone(), 10)  # 480 > 400: "b" goes
    assert cache.get("b") is None and cache.get("c") is not None and cache.get("a") is not None
    cache.put("huge", torch.zeros(100, 4), 100)  # larger than the bound: not kept, nothing evicted
    assert cache.get("huge") is None
    assert cache.snapshot() == {"hits": 3, "misses": 2, "evictions": 1, "entries": 2, "bytes": 320, "max_bytes": 400}
    assert lookups == [True, False, True, True, False]
