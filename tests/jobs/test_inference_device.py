"""Device and dtype settings of every inference path (jobs/inference_device.py): CPU fallback, dtype honoured,
settings that cannot work here refused by name."""

from __future__ import annotations

import pytest
import torch

from jobs.inference_device import place, resolve, to_device
from jobs.serving.config import ServeConfig
from tests.conftest import make_batch
from tests.visor_model.test_budgets import build_model


def test_auto_picks_the_accelerator_or_the_cpu_and_refuses_what_cannot_work_here_by_name() -> None:
    """``auto`` is CUDA in bfloat16 where a GPU is visible, else the CPU in float32; without CUDA, asking for it
    (or for float16 on the CPU) is refused naming the setting. Settings that are wrong anywhere are refused too."""
    if torch.cuda.is_available():
        assert resolve() == (torch.device("cuda"), torch.bfloat16)
        assert resolve("cpu") == (torch.device("cpu"), torch.float32)
    else:
        assert resolve() == (torch.device("cpu"), torch.float32)
        with pytest.raises(ValueError, match=r"serve\.device is 'cuda' but this process sees no CUDA device"):
            resolve("cuda", setting="serve.")
        with pytest.raises(ValueError, match=r"score\.dtype float16 needs CUDA"):
            resolve("auto", "float16", setting="score.")
    assert resolve("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(ValueError, match=r"score\.dtype float16 needs CUDA"):
        resolve("cpu", "float16", setting="score.")
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
        resolve("tpu")
    with pytest.raises(ValueError, match="String should match pattern"):
        ServeConfig(device="gpu")


def test_the_dtype_asked_for_is_the_dtype_the_model_infers_in(tokenizer, processor) -> None:
    """bfloat16 weights give finite bfloat16 logits from float32 pixels (the model casts them itself)."""
    model = place(build_model(tokenizer), "cpu", "bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    batch = to_device(make_batch(processor), model.device)
    with torch.inference_mode():
        out = model(**batch, budget=1)
        state = model.start_decoding(capacity=2, **batch, budget=1)
    assert out.logits.dtype == torch.bfloat16 and state.logits.dtype == torch.bfloat16
    assert torch.isfinite(out.logits.float()).all()
