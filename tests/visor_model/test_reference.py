"""docs/DESIGN.md §3.3 invariant: with every layer in mode S, VISOR computes LLaVA-OneVision exactly."""

import pytest
import torch

from tests.conftest import make_batch
from visor_model import LayerPlan, VisorForConditionalGeneration


def full_attention_model(reference_model, cross_attention):
    layers = reference_model.config.text_config.num_hidden_layers
    return VisorForConditionalGeneration.from_llava_onevision(
        reference_model, plan=LayerPlan.full_attention(layers), cross_attention=cross_attention
    )


def reference_text_logits(reference_model, batch, text_index):
    with torch.no_grad():
        logits = reference_model(**batch).logits
    return logits.gather(1, text_index[..., None].expand(-1, -1, logits.shape[-1]))


@pytest.mark.parametrize("cross_attention", ["joint", "gated"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_full_attention_logits_match_transformers(reference_model, processor, cross_attention, padding_side):
    batch = make_batch(processor, padding_side)
    assert len(set(map(tuple, batch["image_sizes"].tolist()))) == 3  # three different tile grids
    assert (batch["attention_mask"] == 0).any()  # padding present
    model = full_attention_model(reference_model, cross_attention)
    with torch.no_grad():
        out = model(**batch)
    expected = reference_text_logits(reference_model, batch, out.text_index)
    diff = (expected - out.logits).abs()[out.text_mask]
    assert out.logits.shape[0] == 4
    assert diff.max().item() <= 1e-4


def test_full_attention_loss_matches_transformers(reference_model, processor):
    example = processor.build_example(None, "what colour is the box ?", "red")
    model = full_attention_model(reference_model, "joint")
    with torch.no_grad():
        ours = model(**example).loss
        theirs = reference_model(**example).loss
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_full_attention_greedy_generate_matches_transformers(reference_model, processor):
    batch = make_batch(processor, "left")
    model = full_attention_model(reference_model, "joint")
    ours = model.generate(**batch, max_new_tokens=6, eos_token_id=-1)
    theirs = reference_model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None,
                                      suppress_tokens=[reference_model.config.image_token_id])
    assert torch.equal(ours, theirs)


def test_full_attention_model_exports_to_transformers(tokenizer, processor, tmp_path):
    """A full-attention VISOR model trained by the pipeline becomes a ``transformers`` checkpoint that computes the
    same logits, so it can take the conversion path of a real LLaVA-OneVision checkpoint."""
    from transformers import LlavaOnevisionForConditionalGeneration

    from visor_model.presets import tiny_config

    torch.manual_seed(3)
    visor = VisorForConditionalGeneration(tiny_config(len(tokenizer), plan=LayerPlan.full_attention(6))).eval()
    assert visor.is_full_attention
    visor.to_llava_onevision().save_pretrained(tmp_path / "llava")
    exported = LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()
    batch = make_batch(processor, "right")
    with torch.no_grad():
        out = visor(**batch)
    expected = reference_text_logits(exported, batch, out.text_index)
    assert (expected - out.logits).abs()[out.text_mask].max().item() <= 1e-4


def test_only_full_attention_models_export(tokenizer):
    from visor_model.presets import tiny_config

    sparse = VisorForConditionalGeneration(tiny_config(len(tokenizer)))
    assert not sparse.is_full_attention
    with pytest.raises(ValueError, match="only a full-attention model"):
        sparse.to_llava_onevision()
    pooled = VisorForConditionalGeneration(tiny_config(len(tokenizer), plan=LayerPlan.full_attention(6),
                                                       token_reduction=2))
    with pytest.raises(ValueError, match="token_reduction 2"):
        pooled.to_llava_onevision()
