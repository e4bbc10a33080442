"""Evaluation by generation: greedy answers at every budget, scored with each sample's own metric.

Samples that carry a ``metric`` (and ``answers``; see :mod:`pipelines.dataset`) are answered the way their
benchmark scores them: the prompt (the conversation up to its first answer) is decoded greedily for up to
``max_new_tokens`` tokens at each budget, the text is compared with the references by the metric of
:mod:`jobs.evaluation.metrics`. Samples without a metric keep the teacher-forced exact match of
:func:`jobs.evaluation.scoring.score_batch`.

:func:`answer_scores` returns, per sample, ``score`` float ``[K]`` in ``[0, 1]`` — the metric's score of the
generated answer, or the exact match (0/1) for samples without a metric — and ``prediction`` str, the answer
generated at the largest budget (``""`` without a metric). Accuracy, the policy's sufficiency labels and the
report all read ``score``. Kept apart from the teacher-forced scoring so that either can change alone.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from jobs.evaluation.metrics import score as metric_score
from jobs.inference_device import to_device
from pipelines.dataset import Collator, object_column
from visor_model import VisorForConditionalGeneration

PROMPT_COLUMNS = ("key", "url", "pixel_values", "image_sizes")


def prompt_ids(input_ids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The tokens before the first labelled one (``[T] → [t]``): the conversation up to where its first answer
    starts, i.e. the generation prompt."""
    labelled = np.flatnonzero(labels != -100)
    return input_ids[: labelled[0]] if len(labelled) else input_ids


def first_answer(tokenizer, labels: np.ndarray) -> str:
    """The conversation's first answer (the first run of labelled tokens, decoded): the reference of a sample that
    names a metric but no ``answers``."""
    labelled = labels != -100
    start = int(np.argmax(labelled))
    end = start + int(np.argmin(labelled[start:])) if not labelled[start:].all() else len(labels)
    return tokenizer.decode(labels[start:end], skip_special_tokens=True).strip()


@torch.no_grad()
def generate_answers(
    model: VisorForConditionalGeneration, tokenizer, rows: dict[str, np.ndarray], budget: int, max_new_tokens: int
) -> list[str]:
    """Greedy answers (decoded text, special tokens dropped, stripped) to the prompts of ``rows`` (dataset rows,
    see :mod:`pipelines.dataset`) at ``budget``."""
    prompts = {name: rows[name] for name in PROMPT_COLUMNS}
    prompts["input_ids"] = object_column([prompt_ids(ids, lab) for ids, lab in zip(rows["input_ids"], rows["labels"],
                                                                                    strict=True)])
    batch = to_device(Collator(tokenizer.pad_token_id, padding_side="left")(prompts), model.device)
    width = batch["input_ids"].shape[1]
    sequences = model.generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch.get("pixel_values"),
        image_sizes=batch.get("image_sizes"), budget=budget, max_new_tokens=max_new_tokens, do_sample=False,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in sequences]


def answer_scores(
    model: VisorForConditionalGeneration, tokenizer, rows: dict[str, np.ndarray], correct: np.ndarray,
    max_new_tokens: int,
) -> dict[str, np.ndarray]:
    """``score [B, K]`` and ``prediction [B]`` (see the module docstring); ``correct [B, K]`` is the
    teacher-forced exact match, used as the score of samples without a metric."""
    model.eval()
    scores = correct.astype(np.float32)
    predictions = [""] * len(correct)
    metrics = [str(m) for m in rows["metric"]]
    chosen = [i for i, metric in enumerate(metrics) if metric]
    if not chosen:
        return {"score": scores, "prediction": np.array(predictions, dtype=object)}
    subset = {name: rows[name][chosen] for name in ("input_ids", "labels", *PROMPT_COLUMNS)}
    references = [json.loads(str(rows["answers"][i])) or [first_answer(tokenizer, rows["labels"][i])] for i in chosen]
    for budget in range(correct.shape[1]):
        answers = generate_answers(model, tokenizer, subset, budget, max_new_tokens)
        for i, answer, refs in zip(chosen, answers, references, strict=True):
            scores[i, budget] = metric_score(metrics[i], answer, refs)
            if budget == correct.shape[1] - 1:
                predictions[i] = answer
    return {"score": scores, "prediction": np.array(predictions, dtype=object)}
