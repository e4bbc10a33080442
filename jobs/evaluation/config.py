"""Settings of the scoring, policy and evaluation jobs (one :class:`jobs.config.Section` schema each).

The command line reads its defaults and help from these fields, and the retrain config reuses them
(``policy:`` is a :class:`PolicyTraining` plus its data, ``score:`` a :class:`ScoreOptions`).
"""

from __future__ import annotations

from pydantic import Field

from jobs.config import Section, field_of
from jobs.sections import InferenceSection, ReadSection, TrackingSection


class ScoreOptions(Section):
    """How a split is scored (:func:`jobs.evaluation.scoring.score_split`)."""

    read: ReadSection = Field(default_factory=ReadSection)
    batch_size: int = Field(16, ge=1, description="Samples per model call.")
    actors: int = Field(1, ge=1, description="Scoring actors (each holds a copy of the model).")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved by each scoring actor.")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs Ray reserves for each scoring actor (a fraction "
                                  "shares one; 0: none, the actor scores on its CPUs).")
    device: str = field_of(InferenceSection, "device")
    dtype: str = field_of(InferenceSection, "dtype")
    tau: float | None = Field(None, ge=0, le=1, description="Score the policy at this τ (None: the model's).")
    max_new_tokens: int = Field(32, ge=1, description="Longest greedy answer generated for a sample that names a "
                                "metric (anls, relaxed, vqa, contains, exact).")


class PolicyTraining(Section):
    """How the policy head is trained and τ is picked (see :mod:`jobs.evaluation.policy`)."""

    loss_tolerance: float = Field(0.05, ge=0, description="A budget within this loss of the best is sufficient.")
    heldout_fraction: float = Field(0.25, gt=0, lt=1, description="Share of the samples held out to pick τ.")
    accuracy_target: float = Field(0.99, gt=0, le=1, description="τ keeps this share of the top accuracy.")
    epochs: int = Field(300, ge=1, description="Policy-head training epochs (full batch).")
    lr: float = Field(3e-3, gt=0, description="AdamW learning rate of the policy head.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay of the policy head.")
    seed: int = Field(0, description="Seed of the head's initialisation and training.")


class PolicyOptions(PolicyTraining):
    """The policy job's settings: how the head is trained, where the result is registered and how the
    sufficiency labels are scored."""

    registered_model: str = field_of(TrackingSection, "registered_model")
    score: ScoreOptions = Field(default_factory=ScoreOptions)
