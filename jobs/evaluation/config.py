"""Settings of the scoring, policy and evaluation jobs (one :class:`jobs.config.Section` schema each):
``visor train-policy`` runs a :class:`PolicyConfig`, ``visor evaluate`` an :class:`EvaluateConfig`.

The command line reads its flags, defaults and help from these fields, and the retrain config reuses them
(``policy:`` is a :class:`PolicyTraining` plus its data, ``score:`` a :class:`ScoreOptions`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from jobs.config import LOCAL_PATH, Section, field_of
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


Model = Annotated[str, LOCAL_PATH]
Data = Annotated[list[str], LOCAL_PATH]


class PolicyConfig(PolicyTraining):
    """``visor train-policy``: how the head is trained, the universal model to label with, the data, how the
    sufficiency labels are scored, and where the runs and the registered result go."""

    model: Model = Field(description="The universal model, e.g. models:/visor/1.")
    data: Data = Field(min_length=1, description="Shard spec(s) to label and train the policy on.")
    score: ScoreOptions = Field(default_factory=ScoreOptions)
    registered_model: str = field_of(TrackingSection, "registered_model")
    tracking_uri: str | None = field_of(TrackingSection, "tracking_uri")


class EvaluateConfig(Section):
    """``visor evaluate``: the model, the data, the baselines to compare against and how samples are scored."""

    model: Model = Field(description="MLflow model URI, e.g. models:/visor@challenger or models:/visor/3.")
    data: Data = Field(min_length=1, description="Shard spec(s) of the evaluation data.")
    baselines: Annotated[dict[str, str], LOCAL_PATH] = Field({}, description="Models to compare against, "
                                                             "NAME=URI each.")
    out: Annotated[str | None, LOCAL_PATH] = Field(None, description="Also write the JSON report here.")
    tracking_uri: str | None = field_of(TrackingSection, "tracking_uri")
    score: ScoreOptions = Field(default_factory=ScoreOptions)

    @field_validator("baselines", mode="before")
    @classmethod
    def _name_equals_uri(cls, value: object) -> object:
        """``["NAME=URI", …]`` (the command line's form) as a mapping."""
        if not isinstance(value, list | tuple):
            return value
        pairs = [str(item).partition("=") for item in value]
        bad = [name for name, sep, uri in pairs if not (sep and name and uri)]
        if bad:
            raise ValueError(f"expected NAME=URI, got {bad[0]!r}")
        return {name: uri for name, _, uri in pairs}
