"""Analytic FLOPs against torch's FlopCounterMode on the real forward (within 2%)."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches
from typer.testing import CliRunner

from jobs.cli import app
from tests.conftest import make_batch, random_image
from tests.visor_model.test_budgets import build_model
from visor_model import VisorForConditionalGeneration, anyres, flops
from visor_model.presets import llava_ov_config, tiny_config


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
    tiles, visual = anyres.image_tokens(config, 1000, 1000)
    assert (tiles, visual) == (10, 7371)  # base + 3x3 grid
    table = flops.flops_table(config, visual, 64, tiles)
    languages = [row["language"] for row in table["budgets"]]
    assert languages == sorted(languages)
    assert all(row["saving_language"] > 1 for row in table["budgets"])
    assert table["baseline"]["vision"] == pytest.approx(6.42e12, rel=0.01)
    # layer 23's visual update is never read: budget 1 runs it as its text side (was 7.43x)
    assert table["budgets"][1]["text_side_only"] == [23] and table["budgets"][1]["saving_language"] >= 9.9


def test_image_tokens_follow_the_processor():
    """Tiles and visual tokens from the image size equal what the processor and the model produce."""
    from visor_model.presets import _grid_pinpoints, tiny_processor, word_tokenizer

    tokenizer = word_tokenizer(["what"])
    config = tiny_config(len(tokenizer), token_reduction=2)
    config.image_grid_pinpoints = _grid_pinpoints(32, 6)
    model = VisorForConditionalGeneration(config).eval()
    processor = tiny_processor(tokenizer, config)
    for height, width in [(128, 128), (40, 150), (190, 20), (16, 16)]:
        inputs = processor(text=[processor.prompt("what")], images=[random_image(height, width, 0)],
                           return_tensors="pt")
        with torch.no_grad():
            features, _ = model.image_features(inputs["pixel_values"], inputs["image_sizes"])
        expected_tiles = int(inputs["pixel_values"].shape[1])
        assert anyres.image_tokens(config, height, width) == (expected_tiles, features[0].shape[0])
    assert anyres.num_tiles(config, 128, 128) == 17  # a 4x4 grid and the base tile, as 1536² at 384-px tiles


def test_flops_of_a_1536px_image_match_flop_counter(tokenizer):
    """A 1536x1536 image at LLaVA-OneVision's tile geometry (384-px tiles, 6x6 pinpoints, anyres_max_9): 17 tiles,
    counted from its size — the FLOPs agree with the counter within 5% (the old estimate from the token count
    said 10 tiles)."""
    from visor_model.presets import _grid_pinpoints, tiny_processor

    config = tiny_config(len(tokenizer))
    config.vision_config.image_size, config.vision_config.patch_size = 384, 48
    config.image_grid_pinpoints = _grid_pinpoints(384, 6)
    torch.manual_seed(0)
    model = VisorForConditionalGeneration(config).eval()
    processor = tiny_processor(tokenizer, config)
    inputs = dict(processor(text=[processor.prompt("what colour is the box ?")],
                            images=[random_image(1536, 1536, 1)], return_tensors="pt"))
    inputs.pop("batch_num_images", None)
    tiles, visual = anyres.image_tokens(config, 1536, 1536)
    assert tiles == 17
    for budget in range(model.plan.num_budgets):
        measured, out = counted(lambda b=budget: model(**inputs, budget=b))
        assert int(out.num_visual_tokens[0]) == visual
        expected = flops.visor_flops(config, budget, visual, int(out.text_mask.sum()), tiles)
        assert measured == pytest.approx(expected["total"], rel=0.05)


def test_flops_cli_json():
    result = CliRunner().invoke(app, ["flops", "--preset", "llava-ov-0.5b", "--image-size", "1536x1536",
                                      "--text-tokens", "64", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data["baseline"]) == {"vision", "projector", "language", "total"}
    assert (data["config"]["num_tiles"], data["config"]["num_visual_tokens"]) == (17, 7371)
    row = data["budgets"][0]
    assert set(row) >= {"budget", "sa_layers", "language", "total", "saving_language", "saving_total"}
    assert row["sa_layers"] == [] and row["saving_language"] > 50


def test_flops_cli_table_and_bad_option():
    runner = CliRunner()
    table = runner.invoke(app, ["flops", "--preset", "llava-ov-7b"])
    assert table.exit_code == 0 and "| budget 0 |" in table.output
    bad = runner.invoke(app, ["flops", "--token-reduction", "3"])
    assert bad.exit_code != 0 and "token_reduction" in bad.output
    size = runner.invoke(app, ["flops", "--image-size", "1536"])
    assert size.exit_code != 0 and "HEIGHTxWIDTH" in size.output
