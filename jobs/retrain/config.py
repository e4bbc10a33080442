"""Settings of the retrain job (:class:`RetrainConfig`, ``visor retrain --config FILE|PRESET``), as
:class:`jobs.config.Section` schemas."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from jobs.config import LOCAL_PATH, Section
from jobs.evaluation.config import PolicyTraining, ScoreOptions
from jobs.registry.config import PromotionRule


class RetrainPolicy(PolicyTraining):
    """The policy stage of a retrain: its data and how the head is trained."""

    data: Annotated[list[str], LOCAL_PATH] = Field(min_length=1)


class RetrainConfig(Section):
    """A retrain (see :mod:`jobs.retrain.retrain`). ``train_config`` is a training config file or preset and
    ``train_overrides`` its ``--set`` items; the registered model is the training config's
    ``mlflow.registered_model``; ``score`` is used by the policy and the evaluation stages. ``warm_start``:
    when a champion exists, train only the training config's last stage, starting from the champion,
    instead of the whole recipe from its first model (see :meth:`jobs.train.config.TrainConfig.warm_started`)."""

    renamed = {"score_batch_size": "score.batch_size"}

    train_config: str
    train_overrides: list[str] = []
    policy: RetrainPolicy
    eval_data: Annotated[list[str], LOCAL_PATH] = Field(min_length=1)
    promote: PromotionRule = Field(default_factory=PromotionRule)
    score: ScoreOptions = Field(default_factory=ScoreOptions)
    lock_dir: Annotated[str, LOCAL_PATH] = Field("runs", description="Where the lock file that keeps a second "
                                                  "retrain from starting is written.")
    warm_start: bool = Field(True, description="Continue from the champion (when there is one) instead of "
                             "training from the recipe's start.")
