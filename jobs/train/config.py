"""The training job's configuration: ``visor train --config FILE|PRESET [--set key.sub=value …]``.

:func:`load_train_config` is the one loader of :mod:`jobs.config` with this schema: ``demo-tiny``
names a shipped preset (``jobs/configs/<name>.yaml``), anything else a file. Every section rejects
unknown keys, so a typo fails before Ray starts, with the dotted name of the field in the message.
Relative local paths (shard specs, storage, processor) are resolved against the working directory of
the driver. The sections stand alone — where the weights come from (``model``), the data (``data``),
the optimizer (``optim``), the budget draws (``budgets``), the frozen groups (``freeze``), the workers
(``scaling``), checkpoints (``run``), tracking (``mlflow``) — so a recipe can combine them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from jobs.config import Section, load_config
from jobs.sections import ReadSection, S3Section, TrackingSection

FREEZABLE = ("vision_tower", "projector", "language_model", "lm_head", "cross_attention")


def _some_left_to_train(groups: list[str]) -> list[str]:
    if set(groups) >= set(FREEZABLE):
        raise ValueError("freeze lists every parameter group: nothing would be trained")
    return sorted(set(groups))


Freeze = Annotated[list[Literal[FREEZABLE]], AfterValidator(_some_left_to_train)]  # type: ignore[valid-type]
"""Parameter groups to freeze (sorted, unique); the policy head is always frozen (it has its own job)."""


class TinyShape(Section):
    """Shape of a tiny model trained from scratch (``model.init: tiny``)."""

    num_layers: int = Field(6, ge=1)
    hidden_size: int = Field(64, ge=8)


class ModelConfig(Section):
    """Where the weights come from.

    ``init``: ``tiny`` (random tiny model, vocabulary from ``processor``),
    ``llava`` (convert the LLaVA-OneVision checkpoint at ``path``) or ``visor``
    (continue from a VISOR model directory at ``path``). ``processor``: a saved
    ``VisorProcessor`` (default: ``path`` for llava/visor, ``<first train shard
    dir>/processor`` for tiny). ``cross_layers`` / ``budgets`` override the
    default plan; ``gradient_checkpointing`` recomputes activations in backward.
    """

    init: Literal["tiny", "llava", "visor"] = "tiny"
    path: str | None = None
    processor: str | None = None
    tiny: TinyShape = TinyShape()
    cross_attention: Literal["joint", "gated"] = "joint"
    token_reduction: Literal[1, 2] = 1
    cross_layers: list[int] | None = None
    budgets: list[list[int]] | None = None
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _path_needed(self) -> ModelConfig:
        if self.init != "tiny" and not self.path:
            raise ValueError(f"model.path is required when model.init is {self.init!r}")
        if (self.cross_layers is None) != (self.budgets is None):
            raise ValueError("model.cross_layers and model.budgets must be given together")
        if self.init == "visor" and self.cross_layers is not None:
            raise ValueError("model.cross_layers/budgets cannot change the plan of an existing VISOR model")
        return self


class DataSection(ReadSection):
    """Training shard specs (see ``pipelines.shards``), how they are read (:class:`jobs.sections.ReadSection`)
    and reached (``s3``). Held-out data is for ``visor evaluate`` / ``visor train-policy``.

    ``batch_size`` is per worker and per micro-step.
    """

    train: list[str] = Field(min_length=1)
    batch_size: int = Field(8, ge=1)
    shuffle_buffer: int = Field(0, ge=0)
    s3: S3Section = Field(default_factory=S3Section)


class OptimConfig(Section):
    """AdamW with linear warm-up then cosine decay to ``min_lr_ratio × lr`` at ``max_steps``."""

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(10, ge=0)
    max_steps: int = Field(100, ge=1)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    grad_accum: int = Field(1, ge=1)
    grad_clip: float | None = Field(1.0, gt=0)
    bf16: bool = True


class BudgetConfig(Section):
    """``uniform``: one budget per step, drawn uniformly (the paper's recipe); ``sandwich``: the largest,
    the smallest and one random budget in between every step, gradients accumulated. Draws depend only on
    ``seed`` and the step, so every worker runs the same budget and a resumed run repeats the draws."""

    strategy: Literal["uniform", "sandwich"] = "uniform"
    seed: int = 0


class ScalingSection(Section):
    """Ray Train workers. ``strategy: fsdp`` needs GPUs; CPU runs use DDP over gloo."""

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(0.5, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0)
    strategy: Literal["ddp", "fsdp"] = "ddp"
    find_unused_parameters: bool = True

    @model_validator(mode="after")
    def _fsdp_needs_gpu(self) -> ScalingSection:
        if self.strategy == "fsdp" and not self.use_gpu:
            raise ValueError("scaling.strategy 'fsdp' needs scaling.use_gpu: true (FSDP needs CUDA)")
        return self


class RunSection(Section):
    """Where checkpoints go (local directory or ``s3://bucket/prefix``) and how often.

    A new driver with the same ``name`` and ``storage_path`` resumes from the
    latest checkpoint. ``max_failures`` worker-group restarts are allowed.
    ``sample_log`` makes every worker append the keys it trained on to
    ``<local storage>/<name>/samples-rank<R>.jsonl`` (local storage only).
    """

    storage_path: str = "runs"
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=0)
    log_every: int = Field(10, ge=1)
    sample_log: bool = False


class MlflowSection(TrackingSection):
    """Tracking (default: ``MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db`` in the working directory),
    the experiment of the run, and whether the trained model joins ``registered_model`` as a new version
    with alias ``challenger``."""

    experiment: str = "visor-train"
    register_model: bool = True


class TrainConfig(Section):
    """A training run (see the module docstring)."""

    name: str = Field("visor", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    model: ModelConfig = ModelConfig()
    data: DataSection
    optim: OptimConfig = OptimConfig()
    budgets: BudgetConfig = BudgetConfig()
    freeze: Freeze = []
    scaling: ScalingSection = ScalingSection()
    run: RunSection = RunSection()
    mlflow: MlflowSection = MlflowSection()


def load_train_config(source: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A training config file or preset, with ``key.sub=value`` overrides, validated (see :mod:`jobs.config`)."""
    return load_config(TrainConfig, source, overrides)
