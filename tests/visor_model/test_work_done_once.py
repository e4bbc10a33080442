"""The model does no work for nothing: the dead visual update of a final S layer is skipped with the same
logits, the decode cache holds no padding, row groups are decided on the host once per batch, and masked
attention never asks SDPA for GQA (the query groups are folded)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from tests.conftest import make_batch, random_image
from tests.visor_model.test_budgets import build_model
from visor_model import LayerPlan, VisorForConditionalGeneration, layers
from visor_model.cache import DecodeState
from visor_model.presets import tiny_config


@pytest.mark.parametrize("cross_attention", ["joint", "gated"])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
def test_skipping_the_dead_visual_update_changes_no_logit(tokenizer, processor, cross_attention, dtype, tolerance,
                                                          monkeypatch):
    """Same logits as running the full S layer (float64 agrees only to ~1e-8: the RMS norms run in float32)."""
    model = build_model(tokenizer, cross_attention).to(dtype)
    batch = make_batch(processor)
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    budget = model.plan.max_budget
    assert "s" in model.plan.run_modes(budget)
    with torch.no_grad():
        skipped = model(**batch, budget=budget)
        monkeypatch.setattr(LayerPlan, "run_modes", LayerPlan.modes)  # the full S layer, as before
        full = model(**batch, budget=budget)
    assert torch.equal(skipped.text_mask, full.text_mask)
    assert (skipped.logits - full.logits).abs()[full.text_mask].max().item() <= tolerance


def prompt(processor, question: str, size: tuple[int, int], seed: int) -> dict:
    processor.tokenizer.padding_side = "left"
    inputs = dict(processor(text=[processor.prompt(question)], images=[random_image(*size, seed)],
                            return_tensors="pt"))
    inputs.pop("batch_num_images", None)
    return inputs


def batched(processor, questions: list[str], sizes: list[tuple[int, int]]) -> dict:
    processor.tokenizer.padding_side = "left"
    images = [random_image(*size, i) for i, size in enumerate(sizes)]
    inputs = dict(processor(text=[processor.prompt(q) for q in questions], images=images, return_tensors="pt",
                            padding=True))
    inputs.pop("batch_num_images", None)
    return inputs


@pytest.mark.parametrize("cross_attention", ["joint", "gated"])
@pytest.mark.parametrize("sizes", [[(64, 64), (64, 64)], [(20, 20), (90, 90)]])
def test_a_batch_caches_what_its_rows_cache_alone(tokenizer, processor, cross_attention, sizes):
    """Prompts of different lengths, with images of the same size or of different sizes: padding takes no text
    slot and no image is padded to the widest (± 5%: a shorter row's text part is as wide as the longest's).
    Before, every pad column was a text slot in every layer and every visual part was as wide as the widest."""
    model = build_model(tokenizer, cross_attention)
    questions = ["what colour is the box ?", "how many ?"]
    batch = batched(processor, questions, sizes)
    assert (batch["attention_mask"] == 0).any()
    together = model.generate(**batch, budget=2, max_new_tokens=3, return_dict_in_generate=True)
    alone = [model.generate(**prompt(processor, q, s, i), budget=2, max_new_tokens=3, return_dict_in_generate=True)
             for i, (q, s) in enumerate(zip(questions, sizes, strict=True))]
    assert sum(a.cache_bytes for a in alone) <= together.cache_bytes <= 1.05 * sum(a.cache_bytes for a in alone)
    assert together.cache_visual_entries.tolist() == [int(a.cache_visual_entries[0]) for a in alone]


@pytest.mark.parametrize("cross_attention", ["joint", "gated"])
def test_a_row_left_behind_keeps_only_its_own_cache(tokenizer, processor, cross_attention):
    """After the large image's row leaves the decode, the remaining small-image row holds what it holds alone
    (its visual parts never were padded; compaction drops the text slots it does not use) and decodes on as
    alone."""
    model = build_model(tokenizer, cross_attention)
    small, large = prompt(processor, "how many ?", (20, 20), 0), prompt(processor, "what colour is the box ?",
                                                                        (90, 90), 1)
    alone = model.start_decoding(capacity=4, **small, budget=2)
    state = DecodeState.concat([model.start_decoding(capacity=4, **small, budget=2),
                                model.start_decoding(capacity=4, **large, budget=2)])
    assert state.cache.nbytes() > 2 * alone.cache.nbytes()
    left = state.select(torch.tensor([0]))
    left.cache.compact()
    assert left.cache.nbytes() == alone.cache.nbytes()
    for _ in range(3):
        token = alone.logits.argmax(-1)
        assert torch.equal(left.logits.argmax(-1), token)
        model.decode_step(alone, token)
        model.decode_step(left, token)


class HostSyncs(TorchFunctionMode):
    """Counts the tensor calls that copy a value from the device to the host."""

    NAMES = {"tolist", "item", "__bool__", "__int__", "__float__", "nonzero", "unique"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += getattr(func, "__name__", "") in self.NAMES
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("budget", [None, "mixed", "auto"])
def test_host_syncs_do_not_grow_with_depth(tokenizer, processor, budget):
    """Row groups are decided once per batch on the host: a 12-layer model makes as many device-to-host copies
    per forward as a 6-layer one (both plans have three budgets)."""
    batch = make_batch(processor)
    counts = []
    for num_layers in (6, 12):
        torch.manual_seed(0)
        config = tiny_config(len(tokenizer), num_layers=num_layers, plan=LayerPlan.default(num_layers, 3))
        model = VisorForConditionalGeneration(config).eval()
        chosen = torch.tensor([0, 1, 2, 2]) if budget == "mixed" else budget
        with torch.no_grad(), HostSyncs() as syncs:
            model(**batch, budget=chosen)
        counts.append(syncs.count)
    assert counts[0] == counts[1], counts


def test_masked_attention_folds_query_groups(tokenizer, processor, monkeypatch):
    """A padded batch (masks over the text rows) and decode steps (a mask over the cache): every call with a mask
    tensor runs plain multi-head attention — never SDPA's enable_gqa, which leaves a GPU's fused kernels."""
    calls = []

    class Recorder(SimpleNamespace):
        def scaled_dot_product_attention(self, q, k, v, attn_mask=None, **kwargs):
            calls.append((attn_mask is not None, q.shape[1] == k.shape[1], kwargs.get("enable_gqa", False)))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(layers, "F", Recorder(linear=F.linear))
    model = build_model(tokenizer, "gated")
    result = model.generate(**make_batch(processor), budget=torch.tensor([0, 1, 2, 2]), max_new_tokens=3)
    assert result.shape[0] == 4
    masked = [c for c in calls if c[0]]
    assert masked and all(same_heads and not gqa for _, same_heads, gqa in masked)


class TowerCalls:
    """Counts forward calls of ``model``'s vision tower (a forward hook) while in the ``with`` block."""

    def __init__(self, model: VisorForConditionalGeneration):
        self.tower, self.calls, self.handle = model.model.vision_tower, 0, None

    def __enter__(self) -> TowerCalls:
        self.handle = self.tower.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


@pytest.mark.parametrize("cross_attention", ["joint", "gated"])
def test_precomputed_image_features_give_the_same_results_without_the_tower(tokenizer, processor, cross_attention):
    """``image_features=`` (the output of ``image_features``) replaces ``pixel_values``: the same logits, loss, policy
    input and first decode logits at every budget, with the vision tower run once for all of them."""
    model = build_model(tokenizer, cross_attention)
    batch = make_batch(processor)
    labels = batch["input_ids"].masked_fill(batch["input_ids"] == model.config.image_token_id, -100)
    with torch.no_grad(), TowerCalls(model) as counted:
        shared = model.image_features(batch["pixel_values"], batch["image_sizes"])
        reused = [model(**batch, labels=labels, budget=b, image_features=shared) for b in range(model.plan.num_budgets)]
        features = model.policy_features(batch["input_ids"], batch["attention_mask"], image_features=shared)
        state = model.start_decoding(capacity=2, **batch, budget=1, image_features=shared)
    assert counted.calls == 1
    with torch.no_grad(), TowerCalls(model) as counted:
        fresh = [model(**batch, labels=labels, budget=b) for b in range(model.plan.num_budgets)]
        assert torch.equal(features, model.policy_features(batch["input_ids"], batch["attention_mask"],
                                                           batch["pixel_values"], batch["image_sizes"]))
        assert torch.equal(state.logits, model.start_decoding(capacity=2, **batch, budget=1).logits)
    assert counted.calls == model.plan.num_budgets + 2
    for a, b in zip(reused, fresh, strict=True):
        assert torch.equal(a.logits, b.logits) and torch.equal(a.loss_per_sample, b.loss_per_sample)
    with pytest.raises(ValueError, match="image_features has 1 feature tensors for 3 slot counts"):
        model(**batch, image_features=(shared[0][:1], shared[1]))
