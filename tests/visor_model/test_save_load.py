"""save_pretrained/from_pretrained round trip and offline conversion from a LLaVA-OneVision checkpoint."""

import pytest
import torch
from typer.testing import CliRunner

from jobs.cli import app
from tests.conftest import make_batch
from tests.visor_model.test_budgets import build_model
from visor_model import LayerPlan, VisorForConditionalGeneration


@pytest.mark.parametrize("cross_attention", ["joint", "gated"])
def test_round_trip_is_exact(tokenizer, processor, tmp_path, cross_attention):
    model = build_model(tokenizer, cross_attention, token_reduction=2)
    torch.nn.init.normal_(model.policy.mlp[0].weight)
    model.save_pretrained(tmp_path)
    loaded = VisorForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.plan == model.config.plan
    assert loaded.config.cross_attention == cross_attention and loaded.config.token_reduction == 2
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    batch = make_batch(processor)
    with torch.no_grad():
        assert torch.equal(model(**batch, budget=1).logits, loaded(**batch, budget=1).logits)


def test_conversion_from_disk_offline(reference_model, processor, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reference_model.save_pretrained(tmp_path / "llava")
    processor.save_pretrained(tmp_path / "llava")
    plan = LayerPlan.default(reference_model.config.text_config.num_hidden_layers)
    model = VisorForConditionalGeneration.from_llava_onevision(tmp_path / "llava", plan=plan, cross_attention="gated")
    assert model.plan == plan
    source = reference_model.state_dict()
    for name, tensor in model.state_dict().items():
        if name in source:
            assert torch.equal(tensor, source[name]), name
    for idx, gated in model.gated.items():  # gated sublayers start from their layer's attention, gate closed
        attn = model.language_model.layers[int(idx)].self_attn
        assert torch.equal(gated.q_proj.weight, attn.q_proj.weight) and gated.gate.item() == 0.0
    # closed gates: identical to the joint-free text path, so budget-0 logits equal a model without sublayers
    batch = make_batch(processor)
    joint_free = VisorForConditionalGeneration.from_llava_onevision(
        reference_model, plan=LayerPlan(plan.num_layers, (), plan.budgets)
    )
    with torch.no_grad():
        assert torch.allclose(model(**batch, budget=0).logits, joint_free(**batch, budget=0).logits, atol=1e-6)


def test_conversion_rejects_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a local directory"):
        VisorForConditionalGeneration.from_llava_onevision(tmp_path / "nope")


def test_convert_cli(reference_model, processor, tmp_path):
    reference_model.save_pretrained(tmp_path / "llava")
    processor.save_pretrained(tmp_path / "llava")
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "llava"), "--out", str(tmp_path / "visor"),
                                      "--cross-attention", "gated"])
    assert result.exit_code == 0, result.output
    loaded = VisorForConditionalGeneration.from_pretrained(tmp_path / "visor")
    assert loaded.config.cross_attention == "gated" and (tmp_path / "visor" / "tokenizer.json").exists()
