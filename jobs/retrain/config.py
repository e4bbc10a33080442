"""Settings of the retrain job (:class:`RetrainConfig`, ``visor retrain --config FILE|PRESET``), as
:class:`jobs.config.Section` schemas: the training config nested whole, the policy and evaluation stages' own
sections beside it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, model_validator

from jobs.config import INCLUDE_KEY, LOCAL_PATH, Section, apply_override, warn_renamed
from jobs.evaluation.config import PolicyTraining, ScoreOptions
from jobs.registry.config import PromotionRule
from jobs.train.config import TrainConfig

OLD_TRAIN_KEYS = ("train_config", "train_overrides")  # before `train:` nested the config (deprecated)


class RetrainPolicy(PolicyTraining):
    """The policy stage of a retrain: its data and how the head is trained."""

    data: Annotated[list[str], LOCAL_PATH] = Field(min_length=1, description="Shard spec(s) the policy is "
                                                   "labelled and trained on.")


class RetrainEvaluation(Section):
    """The evaluation stage of a retrain: the data the challenger (and the champion) are scored on."""

    data: Annotated[list[str], LOCAL_PATH] = Field(min_length=1, description="Shard spec(s) of the evaluation "
                                                   "data.")


class RetrainConfig(Section):
    """A retrain (see :mod:`jobs.retrain.retrain`).

    ``train`` is the whole training config, written in place or named (``train: demo-recipe``, or
    ``train: {config: demo-recipe, optim: {max_steps: 50}}`` to change some keys; see :mod:`jobs.config`); the
    registered model is its ``mlflow.registered_model``. ``score`` is used by the policy and the evaluation
    stages. ``warm_start``: when a champion exists, train only the training config's last stage, starting from
    the champion, instead of the whole recipe from its first model (see
    :meth:`jobs.train.config.TrainConfig.warm_started`).

    Deprecated for one release: ``train_config: NAME`` + ``train_overrides: [key=value, …]`` (read as
    ``train: {config: NAME, …}``), ``eval_data`` (``evaluate.data``), ``score_batch_size`` (``score.batch_size``).
    """

    renamed = {"score_batch_size": "score.batch_size", "eval_data": "evaluate.data"}

    train: TrainConfig
    policy: RetrainPolicy
    evaluate: RetrainEvaluation
    promote: PromotionRule = Field(default_factory=PromotionRule)
    score: ScoreOptions = Field(default_factory=ScoreOptions)
    lock_dir: Annotated[str, LOCAL_PATH] = Field("runs", description="Where the lock file that keeps a second "
                                                  "retrain from starting is written.")
    warm_start: bool = Field(True, description="Continue from the champion (when there is one) instead of "
                             "training from the recipe's start.")

    @model_validator(mode="before")
    @classmethod
    def _old_train_keys(cls, data: Any) -> Any:
        """``train_config`` + ``train_overrides`` (deprecated) as ``train: {config: …, <overrides>}``."""
        if not isinstance(data, Mapping) or not set(OLD_TRAIN_KEYS) & set(data):
            return data
        warn_renamed("train_config/train_overrides", "train", cls.__name__)
        if "train" in data:
            raise ValueError("both 'train_config'/'train_overrides' (deprecated) and 'train' are given; keep 'train'")
        data = dict(data)
        train = {INCLUDE_KEY: data.pop("train_config", None)}
        for item in data.pop("train_overrides", None) or []:
            apply_override(train, item)
        data["train"] = train
        return data
