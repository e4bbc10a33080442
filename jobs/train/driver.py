"""``visor train``: budget-sampled training of the universal VISOR network on Ray Train, tracked in MLflow.

Driver (:func:`run_training`): checks everything that can be checked before a
worker starts — the shards are listed once (:func:`resolve_training_data`; the
data version, the split and the default processor all come from that listing),
the processor loads — builds the Ray Data split, opens the MLflow run and logs
the config as params, hands every worker its :class:`~jobs.train.worker.WorkerInputs`
and runs the ``TorchTrainer``, then logs the quarantine report and the final
model and registers it as a new version with alias ``challenger``.

Resuming: workers lost during a run are replaced and continue from the latest
checkpoint (``run.max_failures``). If the driver itself dies, starting the
same job again (same ``name``) finds the unfinished MLflow run, reads the Ray
Train run it used (tag ``visor.ray_run``) and resumes it from its latest
checkpoint; once a run has finished, the same command trains a new model.

Recipes (``stages``, :class:`~jobs.train.config.TrainConfig`): one MLflow run for the recipe (tag
``visor.recipe``), one nested run per stage (tag ``visor.stage``), each stage a training run as above
that starts from the model the stage before it wrote (tag ``visor.stage_output`` of its run). Started
again after a failure, the recipe's unfinished run is found by name, its finished stages are skipped and
the failed one resumes from its latest checkpoint. Only the last stage's model is logged and registered.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.console import current
from jobs.sections import CHALLENGER
from jobs.train.config import TrainConfig
from pipelines.shards import S3Options, ShardSet

if TYPE_CHECKING:
    from visor_model.processing import VisorProcessor

RAY_RUN_TAG = "visor.ray_run"  # the Ray Train run (checkpoint directory name) of an MLflow run
RECIPE_TAG = "visor.recipe"  # on a recipe's run: its stage names, in order (JSON)
STAGE_TAG = "visor.stage"  # on a stage's run: the stage name
STAGE_OUTPUT_TAG = "visor.stage_output"  # on a finished stage's run: its model directory (local path or s3://)


@dataclass
class TrainOutcome:
    """What a finished training run produced."""

    run_id: str
    tracking_uri: str
    steps: int
    data_version: str
    checkpoint: str
    model_dir: str  # the trained model directory (model + processor), a local path or s3://…
    model_uri: str | None = None
    registered_version: str | None = None
    quarantine: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


def resolve_training_data(config: TrainConfig) -> ShardSet:
    """The training shards, listed once for the whole run, with the S3 options (``data.s3``) that reach them
    and the run's storage; a spec that matches nothing or cannot be listed names ``data.train``."""
    try:
        return ShardSet.resolve(config.data.train, config.data.s3.options())
    except (ValueError, OSError) as err:
        raise ValueError(f"data.train: {err}") from err


def _processor(config: TrainConfig, data: ShardSet, uri: str) -> VisorProcessor:
    from jobs.train.model_setup import build_processor

    try:
        return build_processor(config.model, data.processor_dir(), uri)
    except (OSError, ValueError) as err:
        raise ValueError(f"model.processor: cannot load a processor ({err})") from err


def _run_storage(path: str, storage: S3Options) -> tuple[str, Any]:
    """``RunConfig`` storage path and filesystem (an explicit one for ``s3://``, from the data's S3 options)."""
    if not path.startswith("s3://"):
        return str(Path(path).expanduser().resolve()), None
    import pyarrow.fs

    return path.removeprefix("s3://"), pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(storage.filesystem()))


def _open_run(config: TrainConfig, uri: str, tags: dict[str, str], parent_run_id: str | None):
    """The MLflow run of ``config.name`` (new, or the unfinished one, marked running again) with the config
    logged as params (a resumed run keeps the params it started with); nested under ``parent_run_id``."""
    from mlflow.tracking import MlflowClient

    from jobs.registry.tracking import flatten, git_commit, start_or_resume_run

    client = MlflowClient(uri)
    tags = {"git_commit": git_commit(), "job": "train", **tags}
    experiment = config.mlflow.experiment
    if parent_run_id is not None:
        tags["mlflow.parentRunId"] = parent_run_id
        experiment = client.get_experiment(client.get_run(parent_run_id).info.experiment_id).name
    run = start_or_resume_run(uri, experiment, config.name, tags)
    if parent_run_id is not None:  # a run resumed under a new parent (a retrain started again) moves to it
        client.set_tag(run.info.run_id, "mlflow.parentRunId", parent_run_id)
    logged = set(run.data.params)
    _log_params(client, run.info.run_id,
                {k: v for k, v in flatten(config.model_dump(mode="json")).items() if k not in logged})
    return run


def _open_training_run(config: TrainConfig, uri: str, tags: dict[str, str], parent_run_id: str | None):
    """:func:`_open_run`, plus the name of its Ray Train run (new, or the one to resume)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = _open_run(config, uri, tags, parent_run_id)
    run_id = run.info.run_id
    ray_run = run.data.tags.get(RAY_RUN_TAG)
    if ray_run is None:  # a new MLflow run trains from scratch; an unfinished one resumes its Ray run
        ray_run = f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}-{run_id[:6]}"
        client.set_tag(run_id, RAY_RUN_TAG, ray_run)
    return run_id, ray_run


def run_training(config: TrainConfig, parent_run_id: str | None = None, data: ShardSet | None = None) -> TrainOutcome:
    """Run the whole job — one training run, or every stage of a recipe (see the module docstring); raises
    before starting workers on a bad config.

    With ``parent_run_id`` (the retrain job) the run is nested under that run, in its experiment; ``data`` is
    the training shards of the run that registers the model (the last stage's) when the caller has listed
    them already (:func:`resolve_training_data`). The outcome is that run's.
    """
    if config.stages:
        return _run_recipe(config, parent_run_id, data)
    return _run_single(config, parent_run_id, data, {}, config.mlflow.register_model)


def _run_recipe(config: TrainConfig, parent_run_id: str | None, final_data: ShardSet | None) -> TrainOutcome:
    """Every stage of ``config`` in order, nested under one recipe run; finished stages of an earlier, failed
    attempt are skipped (their output is reused)."""
    from mlflow.tracking import MlflowClient

    from jobs.faults import fail_stage
    from jobs.registry.tracking import failure_marked, tracking_uri

    uri = tracking_uri(config.mlflow.tracking_uri)
    client = MlflowClient(uri)
    recipe = _open_run(config, uri, {RECIPE_TAG: json.dumps(config.stage_names)}, parent_run_id)
    recipe_id = recipe.info.run_id
    finished = {run.data.tags[STAGE_TAG]: run.data.tags[STAGE_OUTPUT_TAG] for run in client.search_runs(
        [recipe.info.experiment_id], f"tags.`mlflow.parentRunId` = '{recipe_id}' and attributes.status = 'FINISHED'"
    ) if STAGE_OUTPUT_TAG in run.data.tags}
    last = len(config.stages) - 1
    start, outcome = "", None
    with failure_marked(client, recipe_id):
        for index, name in enumerate(config.stage_names):
            label = f"stage {index + 1}/{last + 1} {name}"
            if name in finished:
                start = finished[name]
                current().say(f"{label}: done in an earlier attempt ({start})")
                continue
            stage = config.stage(index, start)
            current().log(f"{label}: {stage.optim.max_steps} steps" + (f" from {start}" if start else ""))
            fail_stage(name, "recipe")
            outcome = _run_single(stage, recipe_id, final_data if index == last else None, {STAGE_TAG: name},
                                  index == last and config.mlflow.register_model, log_model=index == last,
                                  label=label)
            start = outcome.model_dir
    if outcome is None:
        raise RuntimeError(f"recipe {config.name}: every stage had finished already, nothing was trained")
    client.set_terminated(recipe_id, "FINISHED")
    return outcome


def _run_single(config: TrainConfig, parent_run_id: str | None, data: ShardSet | None, tags: dict[str, str],
                register: bool, log_model: bool = True, label: str | None = None) -> TrainOutcome:
    """One training run on Ray Train (see the module docstring): the model directory is always kept in the
    checkpoint; ``log_model`` logs it to the MLflow run, ``register`` also registers it as ``challenger``;
    ``label`` names its progress line (default ``train <name>``)."""
    from functools import partial

    import ray.train
    from mlflow.tracking import MlflowClient
    from ray.train.torch import TorchTrainer

    from jobs.faults import train_fault
    from jobs.ray_env import init_ray
    from jobs.registry.tracking import failure_marked, tracking_uri
    from jobs.train.progress import follow_training
    from jobs.train.worker import WorkerInputs, train_loop
    from pipelines.dataset import build_split
    from pipelines.quarantine import QuarantineLedger

    data = data or resolve_training_data(config)
    uri = tracking_uri(config.mlflow.tracking_uri)
    config = _pin_start(config, uri)
    processor = _processor(config, data, uri)
    init_ray()
    ledger = QuarantineLedger.remote()
    split = build_split(data, processor, config.data.read_options(), ledger)
    run_id, ray_run = _open_training_run(config, uri, {"data_version": data.version, **tags}, parent_run_id)
    storage_path, filesystem = _run_storage(config.run.storage_path, data.storage)
    sample_log = config.run.sample_log and filesystem is None
    inputs = WorkerInputs(config, processor, run_id, uri, Path(storage_path) / ray_run if sample_log else None,
                          train_fault(run_id))
    resources = {"CPU": config.scaling.cpus_per_worker}
    if config.scaling.use_gpu:
        resources["GPU"] = config.scaling.gpus_per_worker
    trainer = TorchTrainer(
        partial(train_loop, inputs),
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.scaling.num_workers, use_gpu=config.scaling.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=ray_run, storage_path=storage_path, storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=config.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.run.keep_checkpoints),
        ),
        datasets={"train": split.dataset},
    )
    client = MlflowClient(uri)
    try:
        with (failure_marked(client, run_id),
              follow_training(client, run_id, config.optim.max_steps, label or f"train {config.name}")):
            result = trainer.fit()
    finally:
        report = ray.get(ledger.report.remote())
        _log_quarantine(client, run_id, report)

    checkpoint = result.checkpoint.path if filesystem is None else f"s3://{result.checkpoint.path}"
    outcome = TrainOutcome(
        run_id=run_id, tracking_uri=uri, steps=int(result.metrics["step"]), data_version=data.version,
        checkpoint=checkpoint, model_dir=f"{checkpoint}/model", quarantine=report.summary(),
        metrics=dict(result.metrics),
    )
    if log_model:
        with result.checkpoint.as_directory() as directory:
            _log_and_register(config, outcome, Path(directory) / "model", register)
    client.set_tag(run_id, STAGE_OUTPUT_TAG, outcome.model_dir)
    client.set_terminated(run_id, "FINISHED")
    return outcome


def _pin_start(config: TrainConfig, uri: str) -> TrainConfig:
    """``config`` with a registry start point (``models:/visor@champion``) pinned to the version it names now,
    logged with the run's params (``model.path``)."""
    from jobs.registry.tracking import pinned_model_uri

    path = config.model.path
    if config.model.init != "visor" or not path or not path.startswith("models:/"):
        return config
    try:
        pinned = pinned_model_uri(path, uri)
    except Exception as err:  # MlflowException: no such model, version or alias
        raise ValueError(f"model.path: cannot start from {path} ({err})") from err
    return config.model_copy(update={"model": config.model.model_copy(update={"path": pinned})})


def _log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100])


def _log_quarantine(client, run_id: str, report) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric("data/rows_read", report.seen, now, 0), Metric("data/rows_valid", report.valid, now, 0)]
    metrics += [Metric(f"data/quarantined/{reason}", count, now, 0) for reason, count in report.by_reason.items()]
    client.log_batch(run_id, metrics=metrics)
    with tempfile.TemporaryDirectory() as tmp:
        path = report.write_jsonl(Path(tmp) / "quarantine.jsonl")
        client.log_artifact(run_id, str(path), "data")


def _log_and_register(config: TrainConfig, outcome: TrainOutcome, model_dir: Path, register: bool) -> None:
    """Log ``model_dir`` to the run; with ``register``, also register it as ``challenger``."""
    import mlflow

    from jobs.registry.model_format import log_visor_model
    from jobs.registry.tracking import register as register_version
    from visor_model import VisorConfig

    plan = VisorConfig.from_pretrained(model_dir).plan
    mlflow.set_tracking_uri(outcome.tracking_uri)
    with mlflow.start_run(run_id=outcome.run_id):
        mlflow.set_tags({"plan": json.dumps(plan), "steps": str(outcome.steps)})
        info = log_visor_model(model_dir)
    outcome.model_uri = info.model_uri
    if register:
        outcome.registered_version = register_version(
            outcome.tracking_uri, info.model_uri, config.mlflow.registered_model, CHALLENGER,
            {"data_version": outcome.data_version, "plan": json.dumps(plan), "run_id": outcome.run_id,
             "job": "train"},
        )


