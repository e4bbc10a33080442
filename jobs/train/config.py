"""The training job's configuration: a YAML file validated by pydantic, with ``--set key=value`` overrides.

``load_train_config("demo-tiny")`` reads a shipped preset (``jobs/configs/<name>.yaml``);
any other argument is a path. Every section rejects unknown keys, so a typo
fails before Ray starts, with the dotted name of the field in the message.
Relative local paths (shard specs, storage, processor) are resolved against
the working directory of the driver.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CONFIG_DIR = Path(__file__).parent / "configs"
FREEZABLE = ("vision_tower", "projector", "language_model", "lm_head", "cross_attention")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class S3Config(Section):
    """An S3-compatible store; unset fields fall back to the ``AWS_*`` environment variables.
    Credentials are never read from the config (use the environment or an instance role)."""

    endpoint_url: str | None = None
    region: str | None = None


class DataSection(Section):
    """Training shard specs (see ``pipelines.shards``) and how they are read (see
    ``pipelines.dataset.ReadOptions``). Held-out data is for ``visor evaluate`` / ``visor train-policy``.

    ``batch_size`` is per worker and per micro-step.
    """

    train: list[str] = Field(min_length=1)
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(2048, ge=8)
    max_image_pixels: int = Field(50_000_000, ge=1)
    preprocess_batch_size: int = Field(16, ge=1)
    preprocess_cpus: float = Field(1.0, gt=0)
    preprocess_concurrency: int | None = Field(None, ge=1)
    shuffle_buffer: int = Field(0, ge=0)
    s3: S3Config = S3Config()


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


class MlflowSection(Section):
    """Tracking (default: ``MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db`` in the working directory)
    and the registered model that receives the trained version with alias ``challenger``."""

    tracking_uri: str | None = None
    experiment: str = "visor-train"
    registered_model: str = "visor"
    register_model: bool = True


class FaultInjection(Section):
    """Testing aid: the worker of rank ``rank`` raises once, at optimizer step ``fail_at_step``."""

    fail_at_step: int | None = Field(None, ge=1)
    rank: int = Field(0, ge=0)


class TrainConfig(Section):
    name: str = Field("visor", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    model: ModelConfig = ModelConfig()
    data: DataSection
    optim: OptimConfig = OptimConfig()
    budgets: BudgetConfig = BudgetConfig()
    freeze: list[Literal[FREEZABLE]] = []  # type: ignore[valid-type]
    scaling: ScalingSection = ScalingSection()
    run: RunSection = RunSection()
    mlflow: MlflowSection = MlflowSection()
    fault: FaultInjection = FaultInjection()

    @field_validator("freeze")
    @classmethod
    def _freeze_unique(cls, value: list[str]) -> list[str]:
        if set(value) >= set(FREEZABLE):
            raise ValueError("freeze lists every parameter group: nothing would be trained")
        return sorted(set(value))


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the field(s)."""


def apply_override(data: dict, item: str) -> None:
    """Apply one ``key.sub=value`` override (the value parsed as YAML) to a config mapping in place."""
    dotted, sep, raw = item.partition("=")
    dotted = dotted.strip()
    if not sep or not dotted:
        raise ConfigError(f"--set {item!r}: expected key.sub=value")
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        if not isinstance(node.setdefault(part, {}), dict):
            raise ConfigError(f"--set {dotted}: {part} is not a section")
        node = node[part]
    node[leaf] = yaml.safe_load(raw)


def config_path(name_or_path: str) -> Path:
    """A shipped preset's YAML (``demo-tiny``, ``llava-ov-0.5b``, ``llava-ov-7b``) or a file path."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = CONFIG_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config {name_or_path!r} is neither a file nor a preset (presets: {', '.join(names)})")


def load_train_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read, override (``key.sub=value``, the value parsed as YAML) and validate a training config."""
    path = config_path(name_or_path)
    data: Any = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    for item in overrides:
        apply_override(data, item)
    return validate_config(data, str(path))


def validate_config(data: dict, source: str = "config") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {describe_errors(err)}") from err


def describe_errors(err: ValidationError) -> str:
    """``field.path: message; …`` for every problem pydantic found."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in err.errors())
