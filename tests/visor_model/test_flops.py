"""Analytic FLOPs against torch's FlopCounterMode on the real forward (within 2%)."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches
from typer.testing import CliRunner

from jobs.cli import app
from tests.conftest import make_batch
from tests.visor_model.test_budgets import build_model
from visor_model import flops
from visor_model.presets import llava_ov_config


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu, get_raw=True)
def _sdpa_cpu_flops(query, key, value, *args, out_val=None, **kwargs):
    """torch 2.13 counts zero for the CPU SDPA kernel: count the full q×k rectangle, 2·b·h·s_q·s_k·(d + d_v)."""
    batch, heads, s_q, d = query.shape
    return 2 * batch * heads * s_q * key.shape[2] * (d + value.shape[-1])


def counted(fn):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        result = fn()
    return counter.get_total_flops(), result


@pytest.mark.parametrize("cross_attention", ["joint", "gated"])
@pytest.mark.parametrize("token_reduction", [1, 2])
def test_visor_flops_match_flop_counter(tokenizer, processor, cross_attention, token_reduction):
    model = build_model(tokenizer, cross_attention, token_reduction)
    batch = make_batch(processor, sizes=((70, 50),))
    batch = {k: v[:1] for k, v in batch.items()}  # one sample, no padding
    tiles = image_size_to_num_patches(batch["image_sizes"][0], model.config.image_grid_pinpoints, 32)
    for budget in range(model.plan.num_budgets):
        measured, out = counted(lambda b=budget: model(**batch, budget=b))
        num_visual = model.image_features(batch["pixel_values"], batch["image_sizes"])[0][0].shape[0]
        expected = flops.visor_flops(model.config, budget, num_visual, int(out.text_mask.sum()), num_tiles=tiles)
        assert measured == pytest.approx(expected["total"], rel=0.02)


def test_baseline_flops_match_transformers_forward(tokenizer, processor, reference_model):
    """The baseline formula counts transformers' own LLaVA-OneVision (lm_head on text tokens only)."""
    from visor_model import VisorForConditionalGeneration
    batch = make_batch(processor, sizes=((70, 50),))
    batch = {k: v[:1] for k, v in batch.items()}
    measured, _ = counted(lambda: reference_model.model(**batch))
    visor = VisorForConditionalGeneration.from_llava_onevision(reference_model)
    num_visual = int((batch["input_ids"] == visor.config.image_token_id).sum())
    num_text = batch["input_ids"].shape[1] - num_visual
    text = visor.config.text_config
    tiles = image_size_to_num_patches(batch["image_sizes"][0], visor.config.image_grid_pinpoints, 32)
    expected = flops.baseline_flops(visor.config, num_visual, num_text, num_tiles=tiles)
    lm_head = 2 * num_text * text.hidden_size * text.vocab_size
    assert measured == pytest.approx(expected["total"] - lm_head, rel=0.02)


def test_budget_flops_grow_and_save_against_baseline():
    config = llava_ov_config("llava-ov-0.5b")
    table = flops.flops_table(config, 7371, 64)
    languages = [row["language"] for row in table["budgets"]]
    assert languages == sorted(languages)
    assert all(row["saving_language"] > 1 for row in table["budgets"])
    assert table["config"]["num_tiles"] == 10  # 1000x1000-class image: base + 3x3 grid
    assert table["baseline"]["vision"] == pytest.approx(6.42e12, rel=0.01)


def test_flops_cli_json():
    result = CliRunner().invoke(app, ["flops", "--preset", "llava-ov-0.5b", "--visual-tokens", "7371",
                                      "--text-tokens", "64", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data["baseline"]) == {"vision", "projector", "language", "total"}
    row = data["budgets"][0]
    assert set(row) >= {"budget", "sa_layers", "language", "total", "saving_language", "saving_total"}
    assert row["sa_layers"] == [] and row["saving_language"] > 50


def test_flops_cli_table_and_bad_option():
    runner = CliRunner()
    table = runner.invoke(app, ["flops", "--preset", "llava-ov-7b"])
    assert table.exit_code == 0 and "| budget 0 |" in table.output
    bad = runner.invoke(app, ["flops", "--token-reduction", "3"])
    assert bad.exit_code != 0 and "token_reduction" in bad.output
