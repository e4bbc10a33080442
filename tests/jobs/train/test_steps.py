"""Training mechanics without Ray: overfitting every budget, budget draws, schedule, freezing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jobs.train.config import ModelConfig, OptimConfig
from jobs.train.model_setup import build_model, freeze
from jobs.train.steps import budgets_for_step, lr_factor, make_optimizer, optimizer_step
from pipelines.synth import write_synth
from visor_model.processing import VisorProcessor

from ..batches import fixed_batch


@pytest.fixture(scope="module")
def synth_processor(tmp_path_factory) -> VisorProcessor:
    out = tmp_path_factory.mktemp("synth")
    write_synth(out, 0, 0, 1, seed=0)
    return VisorProcessor.from_pretrained(out / "processor")


def per_budget_loss(model, batch) -> list[float]:
    model.eval()
    with torch.no_grad():
        return [float(model(**batch, budget=b).loss) for b in range(model.plan.num_budgets)]


@pytest.mark.parametrize("strategy, cross_attention", [("uniform", "joint"), ("sandwich", "gated")])
def test_overfitting_a_fixed_batch_lowers_every_budget_5x(synth_processor, strategy, cross_attention) -> None:
    batch = fixed_batch(synth_processor)
    model = build_model(ModelConfig(cross_attention=cross_attention), len(synth_processor.tokenizer), seed=0)
    freeze(model, [])
    optim = OptimConfig(lr=3e-3, warmup_steps=5, max_steps=60, min_lr_ratio=0.5)
    optimizer, scheduler = make_optimizer(model, optim)
    before = per_budget_loss(model, batch)
    for step in range(optim.max_steps):
        budgets = budgets_for_step(strategy, model.plan.num_budgets, 0, step)
        optimizer_step(model, [batch], budgets, optimizer, scheduler, grad_clip=1.0)
    after = per_budget_loss(model, batch)
    assert len(before) == model.plan.num_budgets >= 3
    for b, (first, last) in enumerate(zip(before, after, strict=True)):
        assert last * 5 <= first, f"budget {b}: {first:.3f} -> {last:.3f}"


def test_budget_draws_are_deterministic_and_cover_every_budget() -> None:
    uniform = [budgets_for_step("uniform", 4, 7, s) for s in range(200)]
    assert uniform == [budgets_for_step("uniform", 4, 7, s) for s in range(200)]
    assert {b for (b,) in uniform} == {0, 1, 2, 3} and uniform != [budgets_for_step("uniform", 4, 8, s)
                                                                 for s in range(200)]
    sandwich = [budgets_for_step("sandwich", 4, 0, s) for s in range(50)]
    assert all(s[:2] == [3, 0] and s[2] in (1, 2) for s in sandwich)
    assert budgets_for_step("sandwich", 2, 0, 0) == [1, 0] and budgets_for_step("sandwich", 1, 0, 0) == [0]
    with pytest.raises(ValueError, match="unknown budget strategy"):
        budgets_for_step("greedy", 4, 0, 0)


def test_learning_rate_schedule_warms_up_then_decays() -> None:
    factor = lr_factor(OptimConfig(warmup_steps=10, max_steps=110, min_lr_ratio=0.1))
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.55) and factor(110) == pytest.approx(0.1) and factor(500) == 0.1


def test_freeze_groups(synth_processor, tmp_path: Path) -> None:
    model = build_model(ModelConfig(cross_attention="gated"), len(synth_processor.tokenizer), seed=0)
    total = sum(p.numel() for p in model.parameters())
    only_cross = freeze(model, ["vision_tower", "projector", "language_model", "lm_head"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("gated.") for n in trainable)
    assert only_cross == sum(p.numel() for n, p in model.named_parameters() if n.startswith("gated."))
    assert freeze(model, []) == total - sum(p.numel() for p in model.policy.parameters())
    with pytest.raises(ValueError, match="no trainable parameters"):
        freeze(build_model(ModelConfig(), len(synth_processor.tokenizer), 0),
               ["vision_tower", "projector", "language_model", "lm_head"])
