"""Rows joining and leaving a running decode (continuous batching): the same tokens as each prompt alone."""

import pytest
import torch

from tests.visor_model.test_attention_layout import unpadded
from tests.visor_model.test_budgets import build_model
from visor_model.cache import DecodeState


def greedy(model, state: DecodeState) -> torch.LongTensor:
    logits = state.logits.clone()
    logits[:, model.config.image_token_id] = float("-inf")
    return logits.argmax(-1)


@pytest.mark.parametrize("cross_attention", ["joint", "gated"])
def test_rows_that_join_and_leave_decode_as_if_alone(tokenizer, processor, cross_attention):
    model = build_model(tokenizer, cross_attention)
    prompts = [unpadded(processor, [row]) for row in range(3)]
    budgets = [2, 0, 1]
    alone = [model.generate(**p, budget=b, max_new_tokens=6, eos_token_id=-1)[0, -6:].tolist()
             for p, b in zip(prompts, budgets, strict=True)]

    produced: list[list[int]] = [[], [], []]
    state = model.start_decoding(**prompts[0], budget=budgets[0], capacity=6)
    rows = [0]  # which prompt each row of the state is
    for step in range(12):
        if step in (2, 4):  # a new prompt joins the running batch between decode steps
            joining = rows[-1] + 1
            state = DecodeState.concat([state, model.start_decoding(**prompts[joining], budget=budgets[joining],
                                                                    capacity=6)])
            rows.append(joining)
        tokens = greedy(model, state)
        for row, token in zip(rows, tokens.tolist(), strict=True):
            produced[row].append(token)
        done = [i for i, row in enumerate(rows) if len(produced[row]) == 6]
        if done:  # finished rows leave
            keep = [i for i in range(len(rows)) if i not in done]
            if not keep:
                break
            state, tokens = state.select(torch.tensor(keep)), tokens[keep]
            state.cache.compact()  # drop the text slots no row holds any more
            rows = [rows[i] for i in keep]
        model.decode_step(state, tokens)
    assert produced == alone
