"""Training mechanics without Ray: overfitting every budget, budget draws, schedule, freezing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jobs.train.config import ModelConfig, OptimConfig
from jobs.train.model_setup import build_model, freeze
from jobs.train.steps import budgets_for_step, lr_factor, make_optimizer, optimizer_step
from pipelines.synth import write_synth
from visor_model import LayerPlan
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
    assert {tuple(budgets_for_step("largest", 4, 0, s)) for s in range(20)} == {(3,)}
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


def test_a_full_attention_model_is_replanned_through_the_llava_conversion(synth_processor, tmp_path: Path) -> None:
    """The paper's recipe: a full-attention model (trained by the pipeline) becomes a sparse-plan VISOR model with
    exactly its weights; a sparse model keeps its plan and cannot be re-planned."""
    vocab = len(synth_processor.tokenizer)
    full = build_model(ModelConfig(plan="full_attention"), vocab, seed=1)
    assert full.is_full_attention
    full.save_pretrained(tmp_path / "full")
    visor = build_model(ModelConfig(init="visor", path=str(tmp_path / "full"), plan="default"), vocab, seed=2)
    assert visor.plan == LayerPlan.default(6) and visor.config.cross_attention == "joint"
    weights = full.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in visor.state_dict().items() if not k.startswith("policy."))
    gated = build_model(ModelConfig(init="visor", path=str(tmp_path / "full"), plan="default",
                                    cross_attention="gated"), vocab, seed=2)
    assert set(gated.gated) == {str(i) for i in gated.plan.cross_layers}
    assert all(g.gate.item() == 0.0 for g in gated.gated.values())  # gates closed: starts as the full model's layers

    pooled = build_model(ModelConfig(init="visor", path=str(tmp_path / "full"), token_reduction=2), vocab, seed=2)
    assert pooled.plan == full.plan and pooled.config.token_reduction == 2  # pooling has no weights

    visor.save_pretrained(tmp_path / "visor")
    kept = build_model(ModelConfig(init="visor", path=str(tmp_path / "visor")), vocab, seed=3)
    assert kept.plan == visor.plan
    with pytest.raises(ValueError, match="only a full-attention model can be converted"):
        build_model(ModelConfig(init="visor", path=str(tmp_path / "visor"), plan="full_attention"), vocab, seed=3)


def test_tiny_attention_init_widens_only_queries_and_keys(synth_processor) -> None:
    vocab = len(synth_processor.tokenizer)
    plain = build_model(ModelConfig(), vocab, seed=0)
    wide = build_model(ModelConfig(tiny={"attention_init_std": 0.2}), vocab, seed=0)
    for a, b in zip(plain.language_model.layers, wide.language_model.layers, strict=True):
        assert a.self_attn.q_proj.weight.std() < 0.03 and 0.15 < b.self_attn.q_proj.weight.std() < 0.25
        assert 0.15 < b.self_attn.k_proj.weight.std() < 0.25
        assert torch.equal(a.self_attn.v_proj.weight, b.self_attn.v_proj.weight)
