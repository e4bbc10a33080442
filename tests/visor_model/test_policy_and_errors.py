"""budget='auto' through the policy head, and the errors users hit first."""

import pytest
import torch

from tests.conftest import make_batch, random_image
from tests.visor_model.test_budgets import build_model
from visor_model import LayerPlan, VisorForConditionalGeneration
from visor_model.policy import choose_budget
from visor_model.presets import tiny_config


def test_choose_budget_is_cheapest_sufficient():
    logits = torch.tensor([[3.0, 3.0, 3.0], [-3.0, 3.0, 3.0], [-3.0, -3.0, -3.0], [-3.0, 0.1, -3.0]])
    assert choose_budget(logits, 0.5).tolist() == [0, 1, 2, 1]
    assert choose_budget(logits, 0.0).tolist() == [0, 0, 0, 0]


def fixed_policy(model: VisorForConditionalGeneration) -> None:
    """Make the policy head answer p = 0.02, 0.5, 0.98 for budgets 0, 1, 2 whatever the input."""
    head = model.policy.mlp[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([-4.0, 0.0, 4.0]))


def test_auto_uses_the_policy_and_tau(tokenizer, processor):
    model = build_model(tokenizer)
    batch = make_batch(processor)
    fixed_policy(model)
    with torch.no_grad():
        low = model(**batch, budget="auto", tau=0.4)
        high = model(**batch, budget="auto", tau=0.9)
        fixed = model(**batch, budget=1)
    assert low.budget.tolist() == [1] * 4 and high.budget.tolist() == [2] * 4
    assert torch.allclose(low.logits, fixed.logits) and low.policy_logits.shape == (4, 3)
    generated = model.generate(**batch, budget="auto", tau=0.4, max_new_tokens=3, return_dict_in_generate=True)
    assert generated.budget.tolist() == [1] * 4


def test_policy_features_depend_on_the_input(tokenizer, processor):
    model = build_model(tokenizer)
    features = model.policy_features(**make_batch(processor))
    assert features.shape == (4, 2 * model.config.text_config.hidden_size)
    assert not torch.allclose(features[0], features[1])
    assert torch.equal(features[3, 64:], torch.zeros(64))  # the text-only sample has no visual summary


def test_errors(tokenizer, processor):
    model = build_model(tokenizer)
    batch = make_batch(processor)
    with pytest.raises(ValueError, match="out of range"):
        model(**batch, budget=7)
    with pytest.raises(ValueError, match="2 entries for a batch of 4"):
        model(**batch, budget=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="'auto'"):
        model(**batch, budget="cheap")
    with pytest.raises(ValueError, match="does not match the <image> placeholders"):
        model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"][:2], batch["image_sizes"][:2])
    with pytest.raises(ValueError, match="do not exist"):
        tiny_config(len(tokenizer), plan={"num_layers": 6, "cross_layers": [6], "budgets": [[]]})
    with pytest.raises(ValueError, match="decoder layers"):
        tiny_config(len(tokenizer), plan=LayerPlan.default(4))
    with pytest.raises(ValueError, match="cross_attention"):
        tiny_config(len(tokenizer), cross_attention="fancy")
    full = VisorForConditionalGeneration(tiny_config(len(tokenizer), plan=LayerPlan.full_attention(6)))
    with pytest.raises(ValueError, match="at least two budgets"):
        full(**batch, budget="auto")


def test_activation_checkpointing_gives_same_gradients(tokenizer, processor):
    example = processor.build_example(None, "what colour is the box ?", "red")
    grads = []
    for checkpointing in (False, True):
        model = build_model(tokenizer).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(**example, budget=2).loss.backward()
        grads.append(model.lm_head.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_correct_per_sample_is_greedy_exact_match(processor) -> None:
    torch.manual_seed(0)
    model = VisorForConditionalGeneration(tiny_config(len(processor.tokenizer))).eval()
    example = processor.build_example(random_image(40, 40, 3), "what colour is the box ?", "red")
    label_cols = [int(c) for c in (example["labels"][0] != -100).nonzero()[:, 0]]

    def next_token_predictions(batch) -> dict[int, int]:
        """Column c -> the token the model predicts for column c (from the text token at c - 1)."""
        with torch.no_grad():
            out = model(**batch, budget=1)
        cols, pred = out.text_index[0], out.logits[0].argmax(-1)
        return {int(cols[j]) + 1: int(pred[j]) for j in range(len(cols)) if out.text_mask[0, j]}, out

    predicted, out = next_token_predictions(example)
    assert bool(out.correct_per_sample[0]) == all(predicted[c] == int(example["labels"][0, c]) for c in label_cols)
    assert not out.correct_per_sample[0]  # random weights do not say "red <|im_end|>"
    greedy = {k: v.clone() for k, v in example.items()}
    for c in label_cols:  # write the greedy answer in place of the reference one, token by token
        token = next_token_predictions(greedy)[0][c]
        greedy["input_ids"][0, c] = greedy["labels"][0, c] = token
    assert bool(next_token_predictions(greedy)[1].correct_per_sample[0])
    assert int(out.num_visual_tokens[0]) == int((example["input_ids"] == 2).sum())


def prompt_only(processor, image, question: str) -> dict:
    inputs = dict(processor(text=[processor.prompt(question)], images=[image], return_tensors="pt"))
    inputs.pop("batch_num_images", None)
    return inputs


def test_auto_with_labels_reads_the_prompt_not_the_answer(tokenizer, processor):
    """forward(budget="auto", labels=…) decides from the prompt: the same choice and policy logits as the prompt
    alone, whatever the answer."""
    model = build_model(tokenizer)
    image = random_image(40, 40, 0)
    with torch.no_grad():
        alone = model.policy(model.policy_features(**prompt_only(processor, image, "what colour is the box ?")))
        for answer in ("red", "blue green blue"):
            example = processor.build_example(image, "what colour is the box ?", answer)
            out = model(**example, budget="auto")
            assert torch.allclose(out.policy_logits, alone, atol=1e-6), answer


def test_generate_refuses_what_it_does_not_implement(tokenizer, processor):
    model = build_model(tokenizer)
    batch = make_batch(processor)
    for name, value in [("num_beams", 4), ("no_repeat_ngram_size", 2), ("max_lenght", 5)]:
        with pytest.raises(TypeError, match=name):
            model.generate(**batch, **{name: value})
    with pytest.raises(TypeError, match="unexpected keyword"):
        model(**batch, max_new_tokens=3)
    with pytest.raises(ValueError, match="min_new_tokens"):
        model.generate(**batch, max_new_tokens=2, min_new_tokens=3)
    with pytest.raises(ValueError, match="repetition_penalty"):
        model.generate(**batch, repetition_penalty=0)


def test_min_new_tokens_holds_eos_back(tokenizer, processor):
    model = build_model(tokenizer)
    batch = make_batch(processor)
    first = model.generate(**batch, budget=1, max_new_tokens=1)[:, -1]
    eos = first.tolist()  # make every row's first greedy token its EOS
    free = model.generate(**batch, budget=1, max_new_tokens=4, eos_token_id=eos)
    held = model.generate(**batch, budget=1, max_new_tokens=4, eos_token_id=eos, min_new_tokens=3)
    new = held[:, batch["input_ids"].shape[1]:]
    assert not torch.isin(new[:, :3], torch.tensor(eos)).any()
    assert not torch.equal(free, held)


def test_repetition_penalty_matches_transformers(reference_model, processor):
    from tests.visor_model.test_reference import full_attention_model

    model = full_attention_model(reference_model, "joint")
    inputs = prompt_only(processor, random_image(40, 60, 2), "what colour is the box ?")
    ours = model.generate(**inputs, max_new_tokens=8, eos_token_id=-1, repetition_penalty=1.8)
    theirs = reference_model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=0,
                                      eos_token_id=None, repetition_penalty=1.8,
                                      suppress_tokens=[reference_model.config.image_token_id])
    plain = model.generate(**inputs, max_new_tokens=8, eos_token_id=-1)
    assert torch.equal(ours, theirs) and not torch.equal(ours, plain)


def test_auto_rows_beside_fixed_rows_decide_in_the_same_pass(tokenizer, processor):
    """A budget tensor with AUTO_BUDGET rows and a τ per row: the policy decides those rows inside the one prefill,
    each with its own τ, and every row computes what it computes with its budget given (serving's mixed batches)."""
    from visor_model.modeling import AUTO_BUDGET

    model = build_model(tokenizer)
    batch = make_batch(processor)
    fixed_policy(model)
    with torch.no_grad():
        mixed = model.start_decoding(capacity=2, **batch, budget=torch.tensor([AUTO_BUDGET, 0, AUTO_BUDGET, 2]),
                                     tau=torch.tensor([0.4, 0.5, 0.9, 0.5]))
        given = model.start_decoding(capacity=2, **batch, budget=torch.tensor([1, 0, 2, 2]))
    assert mixed.budget.tolist() == [1, 0, 2, 2]
    assert torch.allclose(mixed.logits, given.logits, atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        model(**batch, budget=torch.tensor([AUTO_BUDGET, 0, 5, 2]))


def test_a_prefilled_row_selected_twice_decodes_as_two_rows(tokenizer, processor):
    """DecodeState.select with a repeated row: n choices decode on from one prefill, each copy as the row alone."""
    model = build_model(tokenizer, "gated")
    batch = make_batch(processor)
    with torch.no_grad():
        state = model.start_decoding(capacity=3, **batch, budget=2)
        copies = state.select(torch.tensor([1, 1, 3, 1]))
        token = copies.logits.argmax(-1)
        model.decode_step(copies, token)
        alone = state.select(torch.tensor([1, 3]))
        model.decode_step(alone, token[1:3])
    assert torch.equal(copies.logits[0], copies.logits[1]) and torch.equal(copies.logits[0], copies.logits[3])
    assert torch.allclose(copies.logits[1:3], alone.logits, atol=1e-6)
    assert copies.cache.num_entries().tolist() == [int(alone.cache.num_entries()[0])] * 2 + [
        int(alone.cache.num_entries()[1]), int(alone.cache.num_entries()[0])]
