"""Shared fixtures: job logs in a temporary folder, a tiny word tokenizer, tiny LLaVA-OneVision reference models
and batches, a local Ray, and an S3-compatible moto server on 127.0.0.1 with the AWS_* variables for it."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

from visor_model import VisorConfig
from visor_model.presets import tiny_config, tiny_processor, word_tokenizer

WORDS = ["what", "colour", "is", "the", "box", "red", "blue", "green", "how", "many", "?", "it"]

# Two Ray Train settings for runs of a few steps, which would otherwise spend most of their time on fixed costs
# (measured on a 4-step `visor train`): the controller polls its workers every 2 s, so a run ends up to 2 s after
# its last step and its worker group is seen ready up to 2 s late — a quarter of a second saves about 5 s a run
# (59.7 -> 51-55 s); and every run starts a preemption watcher actor (one more process importing Ray Train) for
# spot nodes, which one machine does not have — without it, about 6 s less again (54 -> 48 s, mean of two).
# Set before any Ray starts, so that the instances the tests start (in process, `visor` subprocesses,
# `ray start --head`) all inherit them.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


# Tests that need a real Ray (in process or a `ray start --head` cluster) or an S3-compatible server, directly or
# through another fixture, are integration tests; so are the modules that mark themselves (they start `visor`
# jobs as subprocesses). `make test` runs everything; `make test-fast` (`pytest -m "not integration"`) the rest.
INTEGRATION_FIXTURES = {"ray_local", "ray_head", "moto_endpoint"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def job_logs(tmp_path_factory):
    """Job log files (jobs/console.py) of every command a test runs go to a temporary folder, never the checkout."""
    os.environ["VISOR_LOG_DIR"] = str(tmp_path_factory.mktemp("job-logs"))


@pytest.fixture(scope="session")
def tokenizer():
    return word_tokenizer(WORDS)


def reference_config(config: VisorConfig) -> LlavaOnevisionConfig:
    """The LlavaOnevisionConfig with the same shapes as ``config``."""
    return config.to_llava_onevision_config()


@pytest.fixture(scope="session")
def reference_model(tokenizer):
    """A tiny random ``transformers`` LLaVA-OneVision model (the reference implementation)."""
    torch.manual_seed(0)
    return LlavaOnevisionForConditionalGeneration(reference_config(tiny_config(len(tokenizer)))).eval()


@pytest.fixture(scope="session")
def processor(tokenizer):
    return tiny_processor(tokenizer, tiny_config(len(tokenizer)))


def random_image(height: int, width: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def make_batch(processor, padding_side: str = "left", sizes=((30, 50), (70, 20), (64, 64))) -> dict:
    """Prompts for len(sizes) images of different tile grids plus one text-only prompt."""
    processor.tokenizer.padding_side = padding_side
    questions = ["what colour is the box ?", "how many ?", "what is it ?", "what colour is it ?"]
    texts = [processor.prompt(q) for q in questions[: len(sizes)]] + [processor.prompt("is it red ?", False)]
    images = [random_image(h, w, i) for i, (h, w) in enumerate(sizes)]
    batch = dict(processor(text=texts, images=images, return_tensors="pt", padding=True))
    batch.pop("batch_num_images", None)
    return batch


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance (2 CPUs and one logical GPU — the machine has none: an actor that asks for it is
    placed, sees no CUDA and infers on the CPU; token auth off as on a laptop), shared by the session."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    return moto_endpoint
