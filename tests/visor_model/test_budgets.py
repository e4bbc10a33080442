"""Budgets: cached generation, mixed per-sample budgets, which layers see visual tokens, KV cache size."""

import pytest
import torch

from tests.conftest import make_batch
from visor_model import VisorForConditionalGeneration
from visor_model.policy import last_valid_index
from visor_model.presets import tiny_config


def build_model(tokenizer, cross_attention="joint", token_reduction=1, seed=0):
    torch.manual_seed(seed)
    model = VisorForConditionalGeneration(
        tiny_config(len(tokenizer), cross_attention=cross_attention, token_reduction=token_reduction)
    ).eval()
    for gated in model.gated.values():  # open the gates so the gated path really contributes
        torch.nn.init.normal_(gated.gate, std=1.0)
        torch.nn.init.normal_(gated.cpe.weight, std=0.1)
    return model


def uncached_greedy(model, batch, budget, steps):
    ids, mask = batch["input_ids"], batch["attention_mask"]
    image_id = model.config.image_token_id
    for _ in range(steps):
        with torch.no_grad():
            out = model(ids, mask, batch.get("pixel_values"), batch.get("image_sizes"), budget=budget)
        logits = out.logits[torch.arange(ids.shape[0]), last_valid_index(out.text_mask)]
        logits[:, image_id] = float("-inf")
        token = logits.argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
    return ids


@pytest.mark.parametrize("cross_attention", ["joint", "gated"])
@pytest.mark.parametrize("token_reduction", [1, 2])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_cached_generation_equals_recomputation(tokenizer, processor, cross_attention, token_reduction, padding_side):
    model = build_model(tokenizer, cross_attention, token_reduction)
    batch = make_batch(processor, padding_side)
    for budget in range(model.plan.num_budgets):
        cached = model.generate(**batch, budget=budget, max_new_tokens=5, eos_token_id=-1)
        assert torch.equal(cached, uncached_greedy(model, batch, budget, 5)), f"budget {budget}"


@pytest.mark.parametrize("cross_attention", ["joint", "gated"])
def test_mixed_budgets_equal_each_sample_alone(tokenizer, processor, cross_attention):
    model = build_model(tokenizer, cross_attention)
    batch = make_batch(processor)
    budgets = torch.tensor([2, 0, 1, 2])
    mixed = model.generate(**batch, budget=budgets, max_new_tokens=5, eos_token_id=-1)
    with torch.no_grad():
        mixed_logits = model(**batch, budget=budgets).logits
    for row, budget in enumerate(budgets.tolist()):
        alone = model.generate(**batch, budget=budget, max_new_tokens=5, eos_token_id=-1)
        assert torch.equal(mixed[row], alone[row])
        with torch.no_grad():
            alone_logits = model(**batch, budget=budget).logits
        assert torch.allclose(mixed_logits[row], alone_logits[row], atol=1e-5)


@pytest.mark.parametrize("cross_attention", ["joint", "gated"])
def test_only_s_layers_touch_visual_tokens(tokenizer, processor, cross_attention, monkeypatch):
    """Hooks: an S-candidate layer outside S_b sees only text tokens; h_v changes only at S layers (and not at
    the last one when no later layer reads it: run mode ``s``)."""
    model = build_model(tokenizer, cross_attention)
    batch = make_batch(processor)
    plan = model.plan
    seen: dict[int, int] = {}
    for idx, layer in enumerate(model.language_model.layers):
        layer.mlp.register_forward_hook(lambda mod, args, out, idx=idx: seen.__setitem__(idx, args[0].shape[1]))
    visual_changed: dict[int, bool] = {}
    original = model._run_layer

    def observed(layer_idx, layer, codes, h_t, h_v, *rest):
        new_t, new_v = original(layer_idx, layer, codes, h_t, h_v, *rest)
        visual_changed[layer_idx] = not torch.equal(new_v, h_v)
        return new_t, new_v

    monkeypatch.setattr(model, "_run_layer", observed)
    for budget in range(plan.num_budgets):
        seen.clear()
        with torch.no_grad():
            out = model(**batch, budget=budget)
        text_width = out.text_index.shape[1]
        for idx, mode in enumerate(plan.run_modes(budget)):
            assert visual_changed[idx] == (mode == "S"), (budget, idx, mode)  # "s": no visual update
            if mode != "S":
                assert seen[idx] == text_width, f"layer {idx} ({mode}) saw visual tokens under budget {budget}"
            else:
                assert seen[idx] > text_width


@pytest.mark.parametrize("cross_attention", ["joint", "gated"])
@pytest.mark.parametrize("token_reduction", [1, 2])
def test_kv_cache_holds_exactly_the_design_count(tokenizer, processor, cross_attention, token_reduction):
    """docs/DESIGN.md §3.5: L × text_len + |C ∪ S_b| × Nv entries per sample."""
    model = build_model(tokenizer, cross_attention, token_reduction)
    batch = make_batch(processor)
    layers = model.config.text_config.num_hidden_layers
    new = 4
    for budget in range(model.plan.num_budgets):
        result = model.generate(**batch, budget=budget, max_new_tokens=new, eos_token_id=-1,
                                return_dict_in_generate=True)
        text_len = result.num_text_tokens + (new - 1)  # the last sampled token is never fed back
        visual = len(model.plan.visual_layers(budget)) * result.num_visual_tokens
        assert torch.equal(result.cache_visual_entries, visual)
        assert torch.equal(result.cache_entries, layers * text_len + visual)
    assert result.num_visual_tokens[-1] == 0  # the text-only sample holds no visual entries


def test_token_reduction_quarters_visual_tokens(tokenizer, processor):
    batch = make_batch(processor, sizes=((32, 32),))  # one base tile + one grid tile of 4x4 patches
    full = build_model(tokenizer).generate(**batch, max_new_tokens=1, return_dict_in_generate=True)
    reduced = build_model(tokenizer, token_reduction=2).generate(**batch, max_new_tokens=1,
                                                                  return_dict_in_generate=True)
    # base 16 -> 4 tokens; the grid tile 4x4 + 4 newlines -> 2x2 + 2 newlines
    assert full.num_visual_tokens[0] == 16 + 16 + 4
    assert reduced.num_visual_tokens[0] == 4 + 4 + 2


def test_sampling_is_seeded_and_respects_eos(tokenizer, processor):
    model = build_model(tokenizer)
    batch = make_batch(processor)
    runs = [
        model.generate(**batch, do_sample=True, temperature=1.5, top_k=5, top_p=0.9, max_new_tokens=6,
                       generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])
    width = batch["input_ids"].shape[1]
    eos = int(runs[0][0, width])  # declare the first sampled token of row 0 to be EOS
    stopped = model.generate(**batch, do_sample=True, temperature=1.5, top_k=5, top_p=0.9, max_new_tokens=6,
                             generator=torch.Generator().manual_seed(7), eos_token_id=eos, pad_token_id=0)
    assert stopped.shape[1] > width + 1  # other rows kept going, so row 0 really was padded after EOS
    assert stopped[0, width] == eos and (stopped[0, width + 1 :] == 0).all()
