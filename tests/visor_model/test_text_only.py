"""Text-only prompts (no image anywhere in the batch) at every budget, in both cross-attention variants.

With no visual token, every layer mode reduces to text over text, so VISOR computes exactly the language model
of LLaVA-OneVision on the text: the reference is ``transformers``' model called without pixel values."""

import pytest
import torch

from tests.visor_model.test_budgets import uncached_greedy
from tests.visor_model.test_reference import reference_text_logits
from visor_model import LayerPlan, VisorForConditionalGeneration


def text_batch(processor) -> dict:
    processor.tokenizer.padding_side = "left"
    texts = [processor.prompt("is it red ?", False), processor.prompt("what colour is the box ?", False)]
    batch = dict(processor(text=texts, return_tensors="pt", padding=True))
    batch.pop("batch_num_images", None)
    assert (batch["attention_mask"] == 0).any() and "pixel_values" not in batch
    return batch


def converted(reference_model, cross_attention: str) -> VisorForConditionalGeneration:
    layers = reference_model.config.text_config.num_hidden_layers
    model = VisorForConditionalGeneration.from_llava_onevision(
        reference_model, plan=LayerPlan.default(layers), cross_attention=cross_attention
    )
    torch.manual_seed(1)
    for gated in model.gated.values():  # open the gates: with an image they would change the output
        torch.nn.init.normal_(gated.gate, std=1.0)
        torch.nn.init.normal_(gated.cpe.weight, std=0.1)
    return model


@pytest.mark.parametrize("cross_attention", ["joint", "gated"])
def test_text_only_logits_match_the_language_model_at_every_budget(reference_model, processor, cross_attention):
    batch = text_batch(processor)
    model = converted(reference_model, cross_attention)
    for budget in [*range(model.plan.num_budgets), "auto"]:
        with torch.no_grad():
            out = model(**batch, budget=budget)
        expected = reference_text_logits(reference_model, batch, out.text_index)
        assert (expected - out.logits).abs()[out.text_mask].max().item() <= 1e-4, budget
        assert out.num_visual_tokens.tolist() == [0, 0]


@pytest.mark.parametrize("cross_attention", ["joint", "gated"])
def test_text_only_generation_and_policy(reference_model, processor, cross_attention):
    batch = text_batch(processor)
    model = converted(reference_model, cross_attention)
    for budget in range(model.plan.num_budgets):
        result = model.generate(**batch, budget=budget, max_new_tokens=4, eos_token_id=-1,
                                return_dict_in_generate=True)
        assert torch.equal(result.sequences, uncached_greedy(model, batch, budget, 4))
        assert result.cache_visual_entries.tolist() == [0, 0]
    features = model.policy_features(**batch)
    hidden = model.config.text_config.hidden_size
    assert features.shape == (2, 2 * hidden)
    assert bool((features[:, hidden:] == 0).all()) and bool(features[:, :hidden].abs().sum(1).gt(0).all())
    auto = model.generate(**batch, budget="auto", max_new_tokens=3, return_dict_in_generate=True)
    assert auto.sequences.shape == (2, batch["input_ids"].shape[1] + 3)
