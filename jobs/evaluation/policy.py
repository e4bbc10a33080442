"""``visor train-policy``: label budget sufficiency with the frozen universal model, train the policy, pick τ.

1. Labels (:func:`jobs.evaluation.scoring.score_split`, Ray Data actors holding the model):
   every budget on every sample; budget ``b`` is *sufficient* for a sample when its
   answer scores the sample's best score above zero (for exact match: it is correct;
   for a sample that names a benchmark metric, its greedy answer by that metric), or its
   answer loss is within ``loss_tolerance`` of the sample's best budget (so samples no
   budget answers still prefer the budgets that come closest).
2. Samples are split by a hash of their key into training and held-out parts
   (``heldout_fraction``); the policy head (``BudgetPolicy``: LayerNorm + MLP on
   the prompt's features) is trained with a sigmoid cross-entropy per budget.
3. τ: on the held-out part, the policy runs the cheapest budget whose predicted
   sufficiency is ≥ τ; the chosen τ is the one with the lowest mean FLOPs whose
   accuracy is at least ``accuracy_target`` × the largest budget's accuracy.
4. The universal weights + the trained head + τ are logged and registered as a
   new version with alias ``challenger`` (tags: the parent version, τ, held-out numbers).
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel

from jobs.evaluation.config import PolicyConfig, PolicyTraining, ScoreOptions
from jobs.evaluation.scoring import Scores, score_split
from jobs.sections import CHALLENGER, REGISTERED_MODEL
from pipelines.shards import ShardSet

EXPERIMENT = "visor-policy"
TAU_GRID = tuple(round(t, 2) for t in np.arange(0.05, 1.0, 0.05))


class TauChoice(BaseModel):
    """The held-out figures at the chosen τ (:func:`choose_tau`): accuracy and mean FLOPs under the policy, the
    largest budget's, whether the target was met, and how many samples each budget got."""

    accuracy: float
    mean_flops: float
    largest_budget_accuracy: float
    largest_budget_flops: float
    target_met: bool
    budget_counts: list[int]


class HeldoutSummary(TauChoice):
    """:class:`TauChoice` plus how the head was trained (logged as ``policy_summary.json``)."""

    train_samples: int
    heldout_samples: int
    final_bce: float
    label_rate_per_budget: list[float]  # the share of samples for which each budget is sufficient


@dataclass
class PolicyOutcome:
    run_id: str
    model_uri: str
    registered_version: str | None
    tau: float
    heldout: HeldoutSummary


def sufficiency(loss: np.ndarray, score: np.ndarray, tolerance: float) -> np.ndarray:
    """``[N, K]`` 0/1 labels: the budget's ``score`` (``[N, K]`` in ``[0, 1]``: exact match, or the sample's
    metric) is the sample's best and above zero, or its loss is within ``tolerance`` of the sample's lowest loss."""
    score = np.asarray(score, dtype=np.float64)
    top = (score >= score.max(axis=1, keepdims=True) - 1e-9) & (score > 0)
    best = loss.min(axis=1, keepdims=True)
    return (top | (loss <= best + tolerance)).astype(np.float32)


def heldout_mask(keys: np.ndarray, urls: np.ndarray, fraction: float) -> np.ndarray:
    """A stable split: True for samples whose ``url#key`` hashes into the held-out ``fraction``."""
    def bucket(url: str, key: str) -> float:
        return int(hashlib.sha1(f"{url}#{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

    return np.array([bucket(str(u), str(k)) < fraction for u, k in zip(urls, keys, strict=True)])


def train_head(head: torch.nn.Module, features: np.ndarray, labels: np.ndarray, options: PolicyTraining) -> list[float]:
    """Full-batch AdamW on BCE-with-logits per budget; returns the loss per epoch."""
    x, y = torch.as_tensor(features, dtype=torch.float32), torch.as_tensor(labels)
    optimizer = torch.optim.AdamW(head.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    history = []
    head.train()
    for _ in range(options.epochs):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    head.eval()
    return history


def choose_tau(probs: np.ndarray, correct: np.ndarray, flops: np.ndarray, target: float) -> tuple[float, TauChoice]:
    """The τ of :data:`TAU_GRID` with the lowest mean FLOPs whose accuracy (mean of ``correct`` ``[N, K]``: 0/1, or
    a metric's score in ``[0, 1]``) ≥ ``target`` × the largest budget's (the largest τ when none reaches it);
    returns it with its accuracy and FLOPs."""
    rows = np.arange(len(probs))
    goal = target * correct[:, -1].mean()
    candidates = []
    for tau in TAU_GRID:
        sufficient = probs >= tau
        chosen = np.where(sufficient.any(1), sufficient.argmax(1), probs.shape[1] - 1)
        accuracy, mean_flops = correct[rows, chosen].mean(), flops[rows, chosen].mean()
        candidates.append((tau, float(accuracy), float(mean_flops), np.bincount(chosen, minlength=probs.shape[1])))
    meeting = [c for c in candidates if c[1] >= goal - 1e-12]
    tau, accuracy, mean_flops, counts = min(meeting, key=lambda c: (c[2], c[0])) if meeting else candidates[-1]
    return tau, TauChoice(accuracy=accuracy, mean_flops=mean_flops,
                          largest_budget_accuracy=float(correct[:, -1].mean()),
                          largest_budget_flops=float(flops[:, -1].mean()), target_met=bool(meeting),
                          budget_counts=counts.tolist())


def fit_policy(scores: Scores, hidden_size: int, policy_hidden_size: int, options: PolicyTraining):
    """Train a ``BudgetPolicy`` on ``scores`` and pick τ; returns (head, τ, held-out summary, labels)."""
    from visor_model.policy import BudgetPolicy

    c = scores.columns
    quality = c.get("score", c["correct"])  # the benchmark metric where a sample names one (Scorer adds it)
    labels = sufficiency(c["loss"], quality, options.loss_tolerance)
    heldout = heldout_mask(c["key"], c["url"], options.heldout_fraction)
    if heldout.all() or not heldout.any():
        raise ValueError(f"{scores.num_samples} samples are too few to hold out {options.heldout_fraction:.0%}")
    torch.manual_seed(options.seed)  # the head's initialisation, then its training, depend on the seed only
    head = BudgetPolicy(hidden_size, policy_hidden_size, labels.shape[1])
    history = train_head(head, c["features"][~heldout], labels[~heldout], options)
    with torch.no_grad():
        probs = torch.sigmoid(head(torch.as_tensor(c["features"][heldout], dtype=torch.float32))).numpy()
    tau, choice = choose_tau(probs, quality[heldout], c["flops"][heldout], options.accuracy_target)
    summary = HeldoutSummary(**choice.model_dump(), train_samples=int((~heldout).sum()),
                             heldout_samples=int(heldout.sum()), final_bce=history[-1],
                             label_rate_per_budget=labels.mean(0).round(4).tolist())
    return head, tau, summary, labels


def run_policy_job(
    model_uri: str, spec: ShardSet | str | list[str], tracking_uri: str, options: PolicyTraining | None = None,
    score: ScoreOptions | None = None, registered_model: str = REGISTERED_MODEL, parent_run_id: str | None = None,
) -> PolicyOutcome:
    """The whole job (see the module docstring): label ``spec`` with ``model_uri`` (scored as ``score`` says),
    train the head as ``options`` says (any :class:`PolicyTraining`: a policy or a retrain config), register the
    result as a new version of ``registered_model``; nested under ``parent_run_id`` when given."""
    import mlflow

    from jobs.ray_env import init_ray
    from jobs.registry.model_format import load_visor, log_visor_model, save_model_dir
    from jobs.registry.tracking import git_commit, register, registered_version, start_job_run

    options = options or PolicyTraining()
    init_ray()
    scores = score_split(model_uri, ShardSet.of(spec), tracking_uri, score)
    mlflow.set_tracking_uri(tracking_uri)
    model, processor = load_visor(model_uri)
    text = model.config.text_config
    head, tau, summary, labels = fit_policy(scores, text.hidden_size, model.config.policy_hidden_size, options)
    model.policy.load_state_dict(head.state_dict())
    model.config.policy_tau = tau
    model.config.policy_trained = True

    parent = registered_version(model_uri, tracking_uri)
    tags = {"job": "train-policy", "model_uri": model_uri, "policy_data_version": scores.data_version,
            "git_commit": git_commit()}
    with start_job_run(tracking_uri, EXPERIMENT, "train-policy", tags, parent_run_id) as run:
        mlflow.log_params(options.model_dump(include=set(PolicyTraining.model_fields)))
        mlflow.log_metrics({"tau": tau, "heldout_accuracy": summary.accuracy,
                            "heldout_mean_gflops": summary.mean_flops / 1e9, "final_bce": summary.final_bce,
                            **{f"label_rate/budget_{b}": r for b, r in enumerate(summary.label_rate_per_budget)}})
        mlflow.log_dict(summary.model_dump(), "policy_summary.json")
        with tempfile.TemporaryDirectory() as tmp:
            info = log_visor_model(save_model_dir(model, processor, Path(tmp) / "model"))
        run_id = run.info.run_id

    version = None
    if parent is not None:
        from mlflow.tracking import MlflowClient

        inherited = MlflowClient(tracking_uri).get_model_version(*parent).tags
        version = register(tracking_uri, info.model_uri, registered_model, CHALLENGER, {
            "data_version": inherited.get("data_version", ""), "plan": inherited.get("plan", ""),
            "parent_version": parent[1], "policy.tau": str(tau), "policy.run_id": run_id,
            "policy.heldout": summary.model_dump_json(include={"accuracy", "mean_flops", "target_met"}),
            "job": "train-policy",
        })
    return PolicyOutcome(run_id, info.model_uri, version, tau, summary)


def run(config: PolicyConfig) -> PolicyOutcome:
    """``visor train-policy``: the whole job on ``config``'s model and data, in its tracking store."""
    from jobs.registry.tracking import tracking_uri

    return run_policy_job(config.model, config.data, tracking_uri(config.tracking_uri), config, config.score,
                          config.registered_model)
