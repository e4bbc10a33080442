"""Scoring every budget on every sample: the batch inference behind the policy and evaluation jobs.

:func:`score_batch` runs one collated batch (rows of :mod:`pipelines.dataset`)
through the model once per budget with the reference answer as labels and
returns, per sample (the vision tower runs once per batch: every budget and the policy's
features read the same visual tokens, ``image_features=``):

==================  ============================================================
``loss``            float ``[K]`` — mean answer-token loss at each budget
``correct``         bool ``[K]`` — every answer token is the argmax (= greedy decoding
                    reproduces the answer exactly)
``flops``           float ``[K]`` — total prefill FLOPs of the prompt at each budget
                    (``visor_model.flops`` with the sample's own visual and prompt-text
                    token counts); ``language_flops`` the language-model part
``baseline_flops``  float — LLaVA-OneVision's prefill FLOPs for the same sample (every layer
                    over all tokens; the denominator of the savings)
``latency``         float ``[K]`` — forward seconds per sample (batch time / batch size)
``features``        float ``[2D]`` — the policy's input, from the prompt alone (``[0]`` for a
                    one-budget plan, e.g. full attention)
``policy_prob``     float ``[K]`` — the policy's sufficiency probabilities (NaN if untrained)
``chosen``          int — the budget the policy picks at the model's τ (-1 if untrained)
==================  ============================================================

:class:`Scorer` adds ``score`` float ``[K]`` and ``prediction`` str (:mod:`jobs.evaluation.generation`): the
benchmark metric of a greedy answer for samples that name one, else ``correct``; accuracy and the policy's labels
read ``score``.

The answer never leaks into the policy's input: features are computed with the
attention mask cut at the first answer token. Correctness under the policy is
``correct[chosen]``: a batch with per-sample budgets computes exactly what each
sample would alone (tested in ``visor_model``).

:class:`Scorer` is the same as a Ray Data ``map_batches`` class: each actor loads
the model once from the MLflow URI; :func:`score_split` scores a whole shard set with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jobs.console import current
from jobs.evaluation.config import ScoreOptions
from jobs.evaluation.generation import answer_scores
from pipelines.dataset import Collator
from pipelines.shards import ShardSet
from visor_model import VisorForConditionalGeneration
from visor_model.flops import baseline_flops, visor_flops
from visor_model.policy import choose_budget
from visor_model.streams import prompt_columns

PASS_THROUGH = ("key", "url", "question_type", "data_source", "metric", "num_tiles")


def prompt_mask(attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``attention_mask`` with every column from the first labelled token on set to 0."""
    return attention_mask * prompt_columns(labels)


@torch.inference_mode()
def score_batch(
    model: VisorForConditionalGeneration, batch: dict[str, torch.Tensor], num_tiles: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-sample scores of a collated batch at every budget (see the module docstring); ``num_tiles`` (per
    sample, the dataset's ``num_tiles`` column) sizes the vision-tower FLOPs. The batch is moved to the model's
    device; the scores come back as host arrays."""
    from jobs.inference_device import to_device

    model.eval()
    batch = to_device(batch, model.device)
    config = model.config
    num_budgets = model.plan.num_budgets
    size = batch["input_ids"].shape[0]
    prompt = prompt_mask(batch["attention_mask"], batch["labels"])
    image = batch["input_ids"] == config.image_token_id
    prompt_text = ((prompt > 0) & ~image).sum(1)
    pixels, sizes = batch.get("pixel_values"), batch.get("image_sizes")
    # the vision tower runs once per batch: every budget and the policy read the same visual tokens
    visual = None if pixels is None else model.image_features(pixels, sizes, batch.get("batch_num_images"))
    features = (  # a one-budget plan (e.g. full attention) has nothing to choose: no policy input, [B, 0]
        model.policy_features(batch["input_ids"], prompt, pixels, sizes, batch.get("batch_num_images"),
                              image_features=visual)
        if model.plan.num_budgets > 1 else torch.zeros(size, 0)
    )
    loss = np.zeros((size, num_budgets), np.float32)
    correct = np.zeros((size, num_budgets), bool)
    latency = np.zeros((size, num_budgets), np.float32)
    flops = np.zeros((size, num_budgets), np.float64)
    language = np.zeros((size, num_budgets), np.float64)
    baseline = np.zeros(size, np.float64)
    for budget in range(num_budgets):
        started = time.perf_counter()  # the vision tower's time is not in any budget's latency
        out = model(**batch, budget=budget, image_features=visual)
        latency[:, budget] = (time.perf_counter() - started) / size
        loss[:, budget] = out.loss_per_sample.float().cpu().numpy()
        correct[:, budget] = out.correct_per_sample.cpu().numpy()
        for i in range(size):
            counts = (int(out.num_visual_tokens[i]), int(prompt_text[i]), int(num_tiles[i]))
            cost = visor_flops(config, budget, *counts)
            flops[i, budget], language[i, budget] = cost["total"], cost["language"]
            if budget == 0:
                baseline[i] = baseline_flops(config, *counts)["total"]
    if config.policy_trained:
        logits = model.policy(features)
        policy_prob = torch.sigmoid(logits.float()).cpu().numpy()
        chosen = choose_budget(logits, config.policy_tau).cpu().numpy()
    else:
        policy_prob = np.full((size, num_budgets), np.nan, np.float32)
        chosen = np.full(size, -1, np.int64)
    return {"loss": loss, "correct": correct, "flops": flops, "language_flops": language,
            "baseline_flops": baseline, "latency": latency,
            "features": features.float().cpu().numpy(), "policy_prob": policy_prob, "chosen": chosen}


class Scorer:
    """Ray Data ``map_batches`` class: loads ``model_uri`` (an MLflow URI) once per actor, scores batches.

    ``tracking_uri`` is passed explicitly: actors may run where ``MLFLOW_TRACKING_URI`` is unset. The model runs
    on ``device`` in ``dtype`` (:mod:`jobs.inference_device`; ``auto``: the GPU Ray gave the actor, in bfloat16,
    else the CPU in float32); every output row says where (``device``, ``dtype``, ``ray_gpu_ids``).
    """

    def __init__(self, model_uri: str, tracking_uri: str, tau: float | None = None, max_new_tokens: int = 32,
                 device: str = "auto", dtype: str = "auto"):
        import mlflow

        from jobs.inference_device import describe
        from jobs.registry.model_format import load_visor

        mlflow.set_tracking_uri(tracking_uri)
        self.model, processor = load_visor(model_uri, device, dtype)
        self.placement = describe(self.model)
        if tau is not None:
            self.model.config.policy_tau = tau
        self.collate = Collator(processor.tokenizer.pad_token_id)
        self.tokenizer, self.max_new_tokens = processor.tokenizer, max_new_tokens

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        scores = score_batch(self.model, self.collate(batch), batch["num_tiles"])
        # samples that name a metric: greedy answers scored by it (jobs/evaluation/generation.py)
        scores.update(answer_scores(self.model, self.tokenizer, batch, scores["correct"], self.max_new_tokens))
        size = len(batch["num_tiles"])
        where = {"device": self.placement["device"], "dtype": self.placement["dtype"],
                 "ray_gpu_ids": ",".join(self.placement["ray_gpu_ids"])}
        return {**{name: batch[name] for name in PASS_THROUGH}, **scores,
                **{name: np.full(size, value, dtype=object) for name, value in where.items()}}


@dataclass
class Scores:
    """Every column of :func:`score_batch` over a whole split (``N`` rows), plus where it came from."""

    columns: dict[str, np.ndarray]
    data_version: str
    quarantine: dict

    @property
    def num_samples(self) -> int:
        return len(self.columns["key"])

    @property
    def placement(self) -> list[dict]:
        """Where the samples were scored: each distinct (device, dtype, GPU ids Ray gave the actor)."""
        c = self.columns
        seen = sorted({(str(d), str(t), str(g)) for d, t, g in zip(c["device"], c["dtype"], c["ray_gpu_ids"],
                                                                    strict=True)})
        return [{"device": d, "dtype": t, "ray_gpu_ids": [i for i in g.split(",") if i]} for d, t, g in seen]


def model_dir(model_uri: str) -> Path:
    """The local model directory (weights, config, processor) of a logged VISOR model (downloaded once), or
    ``model_uri`` itself when it is one (a training checkpoint's ``model/``)."""
    import mlflow.artifacts

    from jobs.registry.model_format import MODEL_ARTIFACT, is_model_dir

    if is_model_dir(model_uri):
        return Path(model_uri)
    return Path(mlflow.artifacts.download_artifacts(model_uri)) / "artifacts" / MODEL_ARTIFACT


def score_split(model_uri: str, data: ShardSet, tracking_uri: str, options: ScoreOptions | None = None) -> Scores:
    """Score every valid sample of ``data`` at every budget with Ray Data actors (see :class:`Scorer`), each
    reserving ``options.cpus_per_actor`` CPUs and ``options.gpus_per_actor`` GPUs from Ray."""
    import mlflow
    import ray.data

    from pipelines.dataset import build_split
    from pipelines.quarantine import QuarantineLedger
    from visor_model.processing import VisorProcessor

    options = options or ScoreOptions()
    mlflow.set_tracking_uri(tracking_uri)
    processor = VisorProcessor.from_pretrained(model_dir(model_uri))
    ledger = QuarantineLedger.remote()
    split = build_split(data, processor, options.read.read_options(), ledger)
    scored = split.dataset.map_batches(
        Scorer, fn_constructor_kwargs={"model_uri": model_uri, "tracking_uri": tracking_uri, "tau": options.tau,
                                       "max_new_tokens": options.max_new_tokens, "device": options.device,
                                       "dtype": options.dtype},
        batch_size=options.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=options.actors),
        num_cpus=options.cpus_per_actor, num_gpus=options.gpus_per_actor,
    )
    parts: dict[str, list[np.ndarray]] = {}
    with current().stage(f"score {model_uri}", unit="samples") as stage:
        for batch in scored.iter_batches(batch_size=options.batch_size, batch_format="numpy"):
            for name, values in batch.items():
                parts.setdefault(name, []).append(values)
            stage.update(stage.done + len(next(iter(batch.values()))))
        report = ray.get(ledger.report.remote())
        stage.close(f"{report.summary().get('quarantined') or 'none'} quarantined")
    if not parts:
        raise ValueError(f"no valid sample to score in the {len(data)} shard(s) starting with {data.shards[0].url}")
    columns = {name: np.concatenate(values) for name, values in parts.items()}
    return Scores(columns, split.version, report.summary())
