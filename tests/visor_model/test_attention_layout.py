"""Attention by structure (visor_model/attention_layout.py): the mask-free paths compute what the masks did."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import make_batch, random_image
from tests.visor_model.test_budgets import build_model
from tests.visor_model.test_reference import full_attention_model, reference_text_logits
from visor_model import layers
from visor_model.attention_layout import AttentionLayout
from visor_model.streams import split_streams

SIZES = ((30, 50), (70, 20), (64, 64))
QUESTIONS = ["what colour is the box ?", "how many ?", "what is it ?"]


def unpadded(processor, rows: list[int], same_image: bool = False) -> dict:
    """The prompts of make_batch's ``rows`` (their images and questions) as a batch without padding."""
    texts = [processor.prompt(QUESTIONS[r]) for r in rows]
    size = SIZES[rows[0]]
    images = [random_image(*(size if same_image else SIZES[r]), r) for r in rows]
    batch = dict(processor(text=texts, images=images, return_tensors="pt", padding=True))
    batch.pop("batch_num_images", None)
    assert bool(batch["attention_mask"].all())
    return batch


def test_layout_segments_only_for_unpadded_uniform_batches(processor):
    def layout(batch):
        image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
        slots = (batch["input_ids"] == image_id).sum(1).tolist()
        streams = split_streams(batch["input_ids"], batch["attention_mask"], image_id, slots, slots)
        pe = (torch.zeros(1), torch.zeros(1))
        return AttentionLayout(streams, pe, pe)

    single = unpadded(processor, [0])
    segments = layout(single).segments
    num_text = int((single["input_ids"] != processor.tokenizer.convert_tokens_to_ids("<image>")).sum())
    # text before the image sees no visual token, text after it sees all of them
    assert [s[2] for s in segments] == [0, int(single["input_ids"].shape[1]) - num_text]
    assert segments[0][0] == 0 and segments[-1][1] == num_text
    assert layout(unpadded(processor, [1, 1], same_image=True)).segments == layout(unpadded(processor, [1])).segments
    assert layout(make_batch(processor)).segments is None  # padded: the masked path


@pytest.mark.parametrize("cross_attention", ["joint", "gated"])
def test_structural_attention_equals_masked_attention(tokenizer, processor, cross_attention):
    """Each sample alone (no padding: causal and segment attention, no masks) gives the logits and the greedy
    tokens it gets inside the padded batch (boolean masks over the text rows), at every budget."""
    model = build_model(tokenizer, cross_attention)
    padded = make_batch(processor)
    for budget in range(model.plan.num_budgets):
        with torch.no_grad():
            batch_out = model(**padded, budget=budget)
        batch_tokens = model.generate(**padded, budget=budget, max_new_tokens=4, eos_token_id=-1)
        for row in range(len(SIZES)):
            alone = unpadded(processor, [row])
            with torch.no_grad():
                out = model(**alone, budget=budget)
            expected = batch_out.logits[row][batch_out.text_mask[row]]
            assert torch.allclose(out.logits[0], expected, atol=1e-5), (budget, row)
            tokens = model.generate(**alone, budget=budget, max_new_tokens=4, eos_token_id=-1)
            assert torch.equal(tokens[0, -4:], batch_tokens[row, -4:]), (budget, row)


@pytest.mark.parametrize("cross_attention", ["joint", "gated"])
def test_full_attention_without_padding_matches_transformers(reference_model, processor, cross_attention):
    batch = unpadded(processor, [2, 2], same_image=True)
    model = full_attention_model(reference_model, cross_attention)
    with torch.no_grad():
        out = model(**batch)
    expected = reference_text_logits(reference_model, batch, out.text_index)
    assert (expected - out.logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize("cross_attention", ["joint", "gated"])
def test_no_sequence_square_mask_without_padding(tokenizer, processor, cross_attention, monkeypatch):
    """Unpadded: text-over-text and S-mode attention run as ``is_causal`` with no mask tensor; the only masks
    are the CPU form of a lower-right causal segment ([segment queries, keys], never over the visual rows)."""
    calls = []

    class Recorder(SimpleNamespace):  # the language model's attention entry point (the vision tower's is not)
        def scaled_dot_product_attention(self, q, k, v, attn_mask=None, is_causal=False, **kwargs):
            calls.append((q.shape[2], k.shape[2], None if attn_mask is None else tuple(attn_mask.shape), is_causal))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(layers, "F", Recorder(**{name: getattr(F, name) for name in ("linear",)}))
    model = build_model(tokenizer, cross_attention)
    batch = unpadded(processor, [0, 0], same_image=True)
    num_text = int((batch["input_ids"][0] != model.config.image_token_id).sum())
    text_config = model.config.text_config
    groups = text_config.num_attention_heads // text_config.num_key_value_heads
    for budget in range(model.plan.num_budgets):
        calls.clear()
        with torch.no_grad():
            model(**batch, budget=budget)
        assert len(calls) >= model.config.text_config.num_hidden_layers
        for queries, keys, mask, is_causal in calls:
            if mask is None:
                assert is_causal or cross_attention == "gated", (budget, queries, keys)
            else:
                # joint C layers, and (both variants) the text side of a final S layer (run mode "s"); the
                # query heads sharing a K/V head are folded into the query axis, the mask repeated per head
                assert mask[-2] == queries and queries % groups == 0 and queries // groups < num_text, (budget, mask)
                assert cross_attention == "joint" or "s" in model.plan.run_modes(budget), (budget, mask)
        s_mode = [c for c in calls if c[0] == c[1] > num_text]  # the whole sequence over itself
        assert (len(s_mode) > 0) == (budget > 0)
        assert all(mask is None and is_causal for _, _, mask, is_causal in s_mode)
