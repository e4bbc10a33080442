"""The training job's configuration: ``visor train --config FILE|PRESET [--set key.sub=value …]``.

:func:`load_train_config` is the one loader of :mod:`jobs.config` with this schema: ``demo-tiny``
names a shipped preset (``jobs/configs/<name>.yaml``), anything else a file. Every section rejects
unknown keys, so a typo fails before Ray starts, with the dotted name of the field in the message.
Relative local paths (shard specs, storage, processor) are resolved against the working directory of
the driver. The sections stand alone — where the weights come from (``model``), the data (``data``),
the optimizer (``optim``), the budget draws (``sampling``), the frozen groups (``freeze``), the workers
(``scaling``), checkpoints (``run``), tracking (``mlflow``) — so a recipe can combine them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

from jobs.config import LOCAL_PATH, Section, describe_errors, load_config, merge, partial
from jobs.sections import ReadSection, S3Section, TrackingSection
from visor_model.presets import TINY_VISION

FREEZABLE: dict[str, tuple[str, ...]] = {  # each freezable parameter group and its parameter-name prefixes
    "vision_tower": ("model.vision_tower.",),
    "projector": ("model.multi_modal_projector.", "model.image_newline"),
    "language_model": ("model.language_model.",),
    "lm_head": ("lm_head.",),
    "cross_attention": ("gated.",),
}


def _some_left_to_train(groups: list[str]) -> list[str]:
    if set(groups) >= set(FREEZABLE):
        raise ValueError("freeze lists every parameter group: nothing would be trained")
    return sorted(set(groups))


Freeze = Annotated[list[Literal[tuple(FREEZABLE)]], AfterValidator(_some_left_to_train)]  # type: ignore[valid-type]
"""Parameter groups to freeze (sorted, unique); the policy head is always frozen (it has its own job)."""


CrossAttention = Literal["joint", "gated"]
"""A cross-attention variant: ``visor_model.config.CROSS_ATTENTION_VARIANTS`` (tests/jobs/test_config.py keeps the
two equal; importing ``visor_model`` here would load torch into every command line)."""
TokenReduction = Literal[1, 2]
"""A visual-token pooling factor: ``visor_model.config.TOKEN_REDUCTIONS`` (kept equal the same way)."""


class TinyShape(Section):
    """Shape of a tiny model trained from scratch (``model.init: tiny``).

    ``attention_init_std``: the standard deviation of the decoder layers' query and key projections at
    initialisation (None: the model's ``initializer_range``, 0.02). A tiny model learns to look up one
    visual token among a hundred only after a plateau whose length varies widely with the seed; wider
    query/key weights make it short and reliable (measured in docs/BENCHMARKS.md).

    ``vision``: ``transformer`` (a 2-layer SigLIP tower) or ``patches`` (the patch embedding alone, without
    positions: the visual tokens see their own patch and nothing else, so every relation between them is
    learned in the language model; the run must freeze ``vision_tower``, or positions would be learned back —
    see :func:`visor_model.presets.tiny_config`). ``rope_theta``: the rotary base (Qwen2-0.5B's 1e6 by default;
    1e4 gives the 16-dim heads more frequencies that tell neighbouring positions apart, which a model needs to
    learn where one visual token sits relative to another — measured in docs/BENCHMARKS.md).
    """

    num_layers: int = Field(6, ge=1)
    hidden_size: int = Field(64, ge=8)
    attention_init_std: float | None = Field(None, gt=0)
    vision: Literal[TINY_VISION] = "transformer"  # type: ignore[valid-type]
    rope_theta: float = Field(1e6, gt=0)


class ModelConfig(Section):
    """Where the weights come from, and the layer plan they run with.

    ``init``: ``tiny`` (a random tiny model, vocabulary from ``processor``), ``llava`` (convert the
    LLaVA-OneVision checkpoint at ``path``) or ``visor`` (continue a VISOR model: ``path`` is a model
    directory, ``s3://…`` or a registry URI such as ``models:/visor@champion`` — a warm start).
    ``processor``: a saved ``VisorProcessor`` (default: ``path`` for llava/visor, ``<first train shard
    dir>/processor`` for tiny).

    The plan: ``plan: default`` (:meth:`LayerPlan.default`), ``plan: full_attention`` (every layer in mode S:
    LLaVA-OneVision itself), or ``cross_layers`` + ``budgets`` for any other plan; nothing keeps a VISOR
    model's own plan (``init: visor``) and gives the default plan otherwise. ``cross_attention`` and
    ``token_reduction`` likewise keep a VISOR model's own setting when unset (``VisorConfig``'s defaults
    otherwise: joint cross-attention, no token reduction).
    A VISOR model's plan or cross-attention variant can change only if it is a full-attention model: it is
    then exported to LLaVA-OneVision and converted, exactly as a real checkpoint is (the paper's recipe:
    pretrained full attention → VISOR). ``tiny.attention_init_std`` initialises a tiny model's query/key
    projections wider than the rest (see :class:`TinyShape`). ``gradient_checkpointing`` recomputes
    activations in backward.
    """

    init: Literal["tiny", "llava", "visor"] = "tiny"
    path: Annotated[str | None, LOCAL_PATH] = None
    processor: Annotated[str | None, LOCAL_PATH] = None
    tiny: TinyShape = TinyShape()
    plan: Literal["default", "full_attention"] | None = None
    cross_layers: list[int] | None = None
    budgets: list[list[int]] | None = None
    cross_attention: CrossAttention | None = None
    token_reduction: TokenReduction | None = None
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.init != "tiny" and not self.path:
            raise ValueError(f"model.path is required when model.init is {self.init!r}")
        if self.path and self.path.startswith("models:/") and self.init != "visor":
            raise ValueError(f"model.path {self.path!r} is a registry URI: it needs model.init 'visor'")
        if (self.cross_layers is None) != (self.budgets is None):
            raise ValueError("model.cross_layers and model.budgets must be given together")
        if self.plan is not None and self.cross_layers is not None:
            raise ValueError("give either model.plan or model.cross_layers + model.budgets, not both")
        return self


class DataSection(ReadSection):
    """Training shard specs (see ``pipelines.shards``), how they are read (:class:`jobs.sections.ReadSection`)
    and reached (``s3``). Held-out data is for ``visor evaluate`` / ``visor train-policy``.

    ``batch_size`` is per worker and per micro-step.
    """

    train: Annotated[list[str], LOCAL_PATH] = Field(min_length=1)
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


class SamplingConfig(Section):
    """``uniform``: one budget per step, drawn uniformly (the paper's universal fine-tuning); ``sandwich``: the
    largest, the smallest and one random budget in between every step, gradients accumulated; ``largest``:
    the largest budget only (the paper's first stage). Draws depend only on ``seed`` and the step, so every
    worker runs the same budget and a resumed run repeats the draws."""

    strategy: Literal["uniform", "sandwich", "largest"] = "uniform"
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

    storage_path: Annotated[str, LOCAL_PATH] = "runs"
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


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
STAGE_LOCKED = ("name", "stages", "mlflow")  # one recipe: one name, one tracking store and registered model
STAGE_START = ("init", "path", "processor", "tiny")  # a later stage starts from the stage before it


class TrainConfig(Section):
    """A training run (see the module docstring), or a recipe of several (``stages``).

    ``stages``: training stages run in order, each its own Ray Train run and MLflow run nested under the
    recipe's run. A stage is a :data:`TrainStage`: a ``name`` and a partial config of any keys of this one
    except ``name``, ``stages`` and ``mlflow``, merged over the rest of the config (sections key by key, lists
    replaced), so a stage states only what differs — its ``optim.max_steps``, ``freeze``, ``sampling``, its
    ``data.train``, its plan. The first stage starts from ``model`` as configured; every later one from
    the model the stage before it produced, so it may not set ``model.init``/``path``/``processor``/``tiny``
    (asking a full-attention model for a sparse plan converts it, see :class:`ModelConfig`). Only the last
    stage's model is logged and registered; a recipe run again after a failure skips its finished stages.

    Includable: a retrain names its training config (``train: demo-recipe``) or writes it in place.
    """

    includable = True
    renamed = {"budgets": "sampling"}  # the budget draws; `budgets` is the plan's (`model.budgets`)

    name: str = Field("visor", pattern=NAME_PATTERN, description="Name of the run (a run started again with "
                      "the same name resumes it).")
    seed: int = Field(0, description="Seed of the model's initialisation and of the data order.")
    model: ModelConfig = ModelConfig()
    data: DataSection
    optim: OptimConfig = OptimConfig()
    sampling: SamplingConfig = SamplingConfig()
    freeze: Freeze = []
    scaling: ScalingSection = ScalingSection()
    run: RunSection = RunSection()
    mlflow: MlflowSection = MlflowSection()
    stages: list[TrainStage] = []

    @field_validator("stages", mode="before")
    @classmethod
    def _typed_stages(cls, stages: Any) -> Any:
        """Each stage given as a mapping validated as a :data:`TrainStage`, its errors named by its place and name."""
        if not isinstance(stages, list):
            return stages
        return [_stage(index, stage) if isinstance(stage, Mapping) else stage for index, stage in enumerate(stages)]

    @model_validator(mode="after")
    def _patches_stay_frozen(self) -> TrainConfig:
        if self.model.init == "tiny" and self.model.tiny.vision == "patches" and "vision_tower" not in self.freeze:
            raise ValueError("model.tiny.vision: patches needs freeze: [vision_tower] (in every stage): a trained "
                             "tower would learn its position embedding back and the tokens would know where they are")
        return self

    @model_validator(mode="after")
    def _stages_valid(self) -> TrainConfig:
        for index, stage in enumerate(self.stages):
            where = f"stages[{index}] ({stage.name})"
            if stage.name in self.stage_names[:index]:
                raise ValueError(f"stages[{index}].name: stage name {stage.name!r} is used twice")
            started = sorted(stage.model.model_fields_set & set(STAGE_START)) if stage.model else []
            if index and started:
                raise ValueError(f"{where}: model.{started[0]} cannot be set after the first stage "
                                 "(a later stage starts from the model the stage before it produced)")
            try:
                self.stage(index)
            except ValidationError as err:
                raise ValueError(f"{where}: {describe_errors(err)}") from None
        return self

    @property
    def stage_names(self) -> list[str]:
        return [stage.name for stage in self.stages]

    def stage(self, index: int, start: str = "<the model of the stage before>") -> TrainConfig:
        """The single-run config of stage ``index``: its keys merged over this config, named
        ``<name>.<stage>``; from the second stage on it starts from ``start`` (the previous stage's model)."""
        stage = self.stages[index]
        data = merge(self.model_dump(mode="json", exclude={"stages"}), stage.model_dump(mode="json", exclude={"name"}))
        data["name"] = f"{self.name}.{stage.name}"
        if index:
            data["model"].update(init="visor", path=start, processor=None)
        return TrainConfig.model_validate(data)

    def final(self) -> TrainConfig:
        """The config of the run whose model the job registers: the last stage's, or this one."""
        return self.stage(len(self.stages) - 1) if self.stages else self

    def warm_started(self, model_uri: str) -> TrainConfig:
        """A warm start: only the last stage (or this run), continuing the VISOR model ``model_uri`` (e.g. the
        champion) with its own plan, variant, token reduction and processor."""
        final = self.final()
        model = final.model.model_copy(update={
            "init": "visor", "path": model_uri, "processor": None, "plan": None, "cross_layers": None,
            "budgets": None, "cross_attention": None, "token_reduction": None,
        })
        return final.model_copy(update={"model": model})


TrainStage = partial(TrainConfig, STAGE_LOCKED, "TrainStage", name=(str, Field(pattern=NAME_PATTERN, description="The "
                     "stage's name (its run is <recipe name>.<stage name>).")))
"""One stage of a recipe: a name and a partial :class:`TrainConfig` (all but ``name``, ``stages``, ``mlflow``)."""
TrainConfig.model_rebuild()


def _stage(index: int, stage: Mapping[str, Any]) -> Any:
    """``stage`` (a mapping) as a :data:`TrainStage`; a ``ValueError`` names the stage and the field."""
    name = stage.get("name")
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"stages[{index}].name: every stage needs a name matching {NAME_PATTERN} (got {name!r})")
    locked = sorted(set(stage) & set(STAGE_LOCKED) - {"name"})
    if locked:
        raise ValueError(f"stages[{index}] ({name}): {locked} cannot differ between the stages of one recipe")
    try:
        return TrainStage.model_validate(stage)
    except ValidationError as err:
        raise ValueError(f"stages[{index}] ({name}): {describe_errors(err)}") from None


def load_train_config(source: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A training config file or preset, with ``key.sub=value`` overrides, validated (see :mod:`jobs.config`)."""
    return load_config(TrainConfig, source, overrides)
