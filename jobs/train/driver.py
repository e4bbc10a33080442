"""``visor train``: budget-sampled training of the universal VISOR network on Ray Train, tracked in MLflow.

Driver (:func:`run_training`): validates everything that can be checked
before a worker starts (config, shard specs, processor), builds the Ray Data
split, opens the MLflow run and logs the config as params, runs the
``TorchTrainer``, then logs the quarantine report and the final model and
registers it as a new version with alias ``challenger``.

Resuming: workers lost during a run are replaced and continue from the latest
checkpoint (``run.max_failures``). If the driver itself dies, starting the
same job again (same ``name``) finds the unfinished MLflow run, reads the Ray
Train run it used (tag ``visor.ray_run``) and resumes it from its latest
checkpoint; once a run has finished, the same command trains a new model.

Workers (:func:`train_loop`): build the model, wrap it for DDP/FSDP, resume
from the latest checkpoint if there is one, and run ``optim.max_steps``
optimizer steps over their shard of the data (``get_dataset_shard``), sampling
budgets per step (:func:`jobs.train.steps.budgets_for_step`). Rank 0 logs metrics
to MLflow every ``run.log_every`` steps and prints a progress line; every
``run.checkpoint_every`` steps and at the end all ranks report a checkpoint
(rank 0 writes it).
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from jobs.train.config import TrainConfig
from pipelines.shards import S3Options, data_version, resolve_shards

FAULT_MESSAGE = "injected fault (config fault.fail_at_step)"
RAY_RUN_TAG = "visor.ray_run"  # the Ray Train run (checkpoint directory name) of an MLflow run


@dataclass
class TrainOutcome:
    """What a finished training run produced."""

    run_id: str
    tracking_uri: str
    steps: int
    data_version: str
    checkpoint: str
    model_uri: str | None = None
    registered_version: str | None = None
    quarantine: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- driver side
def storage_options(config: TrainConfig) -> S3Options:
    options = S3Options()
    options.endpoint_url = config.data.s3.endpoint_url or options.endpoint_url
    options.region = config.data.s3.region or options.region
    return options


def check_shards(config: TrainConfig, storage: S3Options) -> list:
    """Resolve the training shard specs now, naming the config field when one fails."""
    try:
        return resolve_shards(config.data.train, storage)
    except (ValueError, OSError) as err:
        raise ValueError(f"data.train: {err}") from err


def default_processor_dir(shards: list) -> Path | None:
    """``<directory of the first local training shard>/processor`` when it exists."""
    first = shards[0].url
    if first.startswith("s3://"):
        return None
    candidate = Path(first).parent / "processor"
    return candidate if candidate.is_dir() else None


def _storage(config: TrainConfig) -> tuple[str, Any]:
    """``RunConfig`` storage path and filesystem (an explicit one for S3, built from the S3 config)."""
    path = config.run.storage_path
    if not path.startswith("s3://"):
        return str(Path(path).expanduser().resolve()), None
    import pyarrow.fs

    filesystem = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(storage_options(config).filesystem()))
    return path.removeprefix("s3://"), filesystem


def run_training(config: TrainConfig, parent_run_id: str | None = None) -> TrainOutcome:
    """Run the whole job (see the module docstring); raises before starting workers on a bad config.

    With ``parent_run_id`` (the retrain job) the run is nested under that run, in its experiment.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from jobs.cluster.ray_env import init_ray
    from jobs.registry.tracking import flatten, git_commit, start_or_resume_run, tracking_uri
    from jobs.train.steps import build_processor
    from pipelines.dataset import ReadOptions, build_split
    from pipelines.quarantine import QuarantineLedger

    storage = storage_options(config)
    shards = check_shards(config, storage)
    try:
        processor = build_processor(config.model, default_processor_dir(shards))
    except (OSError, ValueError) as err:
        raise ValueError(f"model.processor: cannot load a processor ({err})") from err
    version = data_version(shards)

    init_ray()
    ledger = QuarantineLedger.remote()
    read = ReadOptions(
        max_length=config.data.max_length, max_image_pixels=config.data.max_image_pixels,
        batch_size=config.data.preprocess_batch_size, num_cpus=config.data.preprocess_cpus,
        concurrency=config.data.preprocess_concurrency,
    )
    split = build_split(config.data.train, processor, read, ledger, storage)

    uri = tracking_uri(config.mlflow.tracking_uri)
    tags = {"data_version": version, "git_commit": git_commit(), "job": "train"}
    experiment = config.mlflow.experiment
    if parent_run_id is not None:
        tags["mlflow.parentRunId"] = parent_run_id
        experiment = _client(uri).get_experiment(_client(uri).get_run(parent_run_id).info.experiment_id).name
    run = start_or_resume_run(uri, experiment, config.name, tags)
    run_id = run.info.run_id
    client = _client(uri)
    ray_run = run.data.tags.get(RAY_RUN_TAG)
    if ray_run is None:  # a new MLflow run trains from scratch; an unfinished one resumes its Ray run
        ray_run = f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}-{run_id[:6]}"
        client.set_tag(run_id, RAY_RUN_TAG, ray_run)
    logged = set(client.get_run(run_id).data.params)  # a resumed run keeps the params it started with
    params = {k: v for k, v in flatten(config.model_dump(mode="json")).items() if k not in logged}
    _log_params(client, run_id, params)

    storage_path, filesystem = _storage(config)
    fault_marker = Path(tempfile.gettempdir()) / f"visor-fault-{run_id}"
    resources = {"CPU": config.scaling.cpus_per_worker}
    if config.scaling.use_gpu:
        resources["GPU"] = config.scaling.gpus_per_worker
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "config": config.model_dump(mode="json"), "processor": processor, "run_id": run_id,
            "tracking_uri": uri, "fault_marker": str(fault_marker),
            "sample_log_dir": str(Path(storage_path) / ray_run) if filesystem is None else None,
        },
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
    try:
        result = trainer.fit()
    except Exception as err:
        client.set_tag(run_id, "error", f"{type(err).__name__}: {err}"[:5000])
        client.set_terminated(run_id, "FAILED")
        raise
    finally:
        report = ray.get(ledger.report.remote())
        _log_quarantine(client, run_id, report)

    outcome = TrainOutcome(
        run_id=run_id, tracking_uri=uri, steps=int(result.metrics["step"]), data_version=version,
        checkpoint=result.checkpoint.path, quarantine=report.summary(), metrics=dict(result.metrics),
    )
    with result.checkpoint.as_directory() as directory:
        _log_and_register(config, outcome, Path(directory) / "model")
    client.set_terminated(run_id, "FINISHED")
    return outcome


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


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


def _log_and_register(config: TrainConfig, outcome: TrainOutcome, model_dir: Path) -> None:
    import mlflow

    from jobs.registry.model_format import log_visor_model
    from jobs.registry.tracking import register
    from visor_model import VisorConfig

    plan = VisorConfig.from_pretrained(model_dir).plan
    mlflow.set_tracking_uri(outcome.tracking_uri)
    with mlflow.start_run(run_id=outcome.run_id):
        mlflow.set_tags({"plan": json.dumps(plan), "steps": str(outcome.steps)})
        info = log_visor_model(model_dir)
    outcome.model_uri = info.model_uri
    if config.mlflow.register_model:
        outcome.registered_version = register(
            outcome.tracking_uri, info.model_uri, config.mlflow.registered_model, "challenger",
            {"data_version": outcome.data_version, "plan": json.dumps(plan), "run_id": outcome.run_id,
             "job": "train"},
        )


# ---------------------------------------------------------------------------------------------- worker side
@dataclass
class _Meter:
    """Sums over the current logging interval on one worker."""

    wait: float = 0.0
    total: float = 0.0
    samples: int = 0
    losses: dict[int, list[float]] = field(default_factory=dict)

    def reset(self) -> None:
        self.wait = self.total = 0.0
        self.samples = 0
        self.losses = {}


def _batches(shard, config: TrainConfig, collate, device) -> Any:
    """Batches of this worker's shard, epoch after epoch (Ray Data re-reads the split each epoch)."""
    epoch = 0
    while True:
        seen = 0
        for batch in shard.iter_torch_batches(
            batch_size=config.data.batch_size, collate_fn=collate, device=device,
            local_shuffle_buffer_size=config.data.shuffle_buffer or None,
            local_shuffle_seed=config.seed + epoch if config.data.shuffle_buffer else None,
        ):
            seen += 1
            yield batch
        if seen == 0:
            raise RuntimeError("this worker's share of the training data is empty (all samples quarantined?)")
        epoch += 1


def _mean_across_workers(values: list[float]) -> list[float]:
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor.tolist()


def train_loop(loop_config: dict) -> None:
    """Per-worker training function (Ray Train V2); see the module docstring."""
    import ray.train
    import ray.train.torch

    from jobs.registry.model_format import save_model_dir
    from jobs.train.checkpoint import STATE_FILE, capture_state, restore_state, unwrap
    from jobs.train.steps import budgets_for_step, build_model, freeze, make_optimizer, optimizer_step
    from pipelines.dataset import Collator, decode_keys

    config = TrainConfig.model_validate(loop_config["config"])
    processor = loop_config["processor"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()

    model = build_model(config.model, len(processor.tokenizer), config.seed)
    freeze(model, config.freeze)
    num_budgets = model.plan.num_budgets
    kwargs = {"find_unused_parameters": config.scaling.find_unused_parameters} if world > 1 else None
    model = ray.train.torch.prepare_model(
        model, parallel_strategy=config.scaling.strategy if world > 1 else None, parallel_strategy_kwargs=kwargs
    )
    optimizer, scheduler = make_optimizer(model, config.optim)
    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            step = restore_state(Path(directory), model, optimizer, scheduler)
        if step >= config.optim.max_steps:  # the driver died after the last step: hand the result back
            ray.train.report({"step": step}, checkpoint=checkpoint if rank == 0 else None)
            return

    use_bf16 = config.optim.bf16 and device.type == "cuda"

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()

    tracker = _RankZeroTracker(loop_config, config, step) if rank == 0 else None
    sample_log = _sample_log(loop_config, config, rank)
    collate = Collator(processor.tokenizer.pad_token_id, with_keys=sample_log is not None)
    batches = _batches(ray.train.get_dataset_shard("train"), config, collate, device)
    meter = _Meter()
    while step < config.optim.max_steps:
        started = time.perf_counter()
        micro = [next(batches) for _ in range(config.optim.grad_accum)]
        waited = time.perf_counter() - started
        if sample_log is not None:
            keys = [k for batch in micro for k in decode_keys(batch.pop("keys"))]
            sample_log.write(json.dumps({"step": step, "keys": keys}) + "\n")
            sample_log.flush()
        budgets = budgets_for_step(config.budgets.strategy, num_budgets, config.budgets.seed, step)
        result = optimizer_step(model, micro, budgets, optimizer, scheduler, config.optim.grad_clip, autocast)
        step += 1
        _maybe_fail(loop_config, config, rank, step)
        losses = _mean_across_workers([result.losses[b] for b in budgets] + [waited, result.samples])
        meter.wait += losses[-2]
        meter.total += time.perf_counter() - started
        meter.samples += int(losses[-1] * world)
        for budget, loss in zip(budgets, losses, strict=False):
            meter.losses.setdefault(budget, []).append(loss)
        if tracker is not None and (step % config.run.log_every == 0 or step == config.optim.max_steps):
            tracker.log(step, meter, scheduler.get_last_lr()[0], result.grad_norm)
        if step % config.run.log_every == 0:
            meter.reset()
        final = step == config.optim.max_steps
        if step % config.run.checkpoint_every == 0 or final:
            state = capture_state(model, optimizer, scheduler, step)  # collective; None except on rank 0
            metrics = {"step": step, **{f"loss/budget_{b}": v for b, v in zip(budgets, losses, strict=False)}}
            if state is None:
                ray.train.report(metrics, checkpoint=None)
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    torch.save(state, Path(tmp) / STATE_FILE)
                    if final:
                        save_model_dir(unwrap(model), processor, Path(tmp) / "model")
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    if sample_log is not None:
        sample_log.close()


def _sample_log(loop_config: dict, config: TrainConfig, rank: int):
    if not config.run.sample_log or not loop_config.get("sample_log_dir"):
        return None
    directory = Path(loop_config["sample_log_dir"])
    directory.mkdir(parents=True, exist_ok=True)
    return open(directory / f"samples-rank{rank}.jsonl", "a")  # noqa: SIM115 (closed at the end of the loop)


def _maybe_fail(loop_config: dict, config: TrainConfig, rank: int, step: int) -> None:
    """Fault injection for tests: raise once (a marker file remembers) at the configured step and rank."""
    if config.fault.fail_at_step != step or config.fault.rank != rank:
        return
    marker = Path(loop_config["fault_marker"])
    if marker.exists():
        return
    marker.write_text(str(step))
    raise RuntimeError(f"{FAULT_MESSAGE} at step {step} on rank {rank}")


class _RankZeroTracker:
    """Metrics to MLflow and a progress line on stdout (rank 0 only)."""

    def __init__(self, loop_config: dict, config: TrainConfig, start_step: int):
        self.client = _client(loop_config["tracking_uri"])
        self.run_id = loop_config["run_id"]
        self.max_steps = config.optim.max_steps
        self.start_step = start_step
        self.started = time.perf_counter()

    def log(self, step: int, meter: _Meter, lr: float, grad_norm: float) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        throughput = meter.samples / meter.total if meter.total else 0.0
        wait = meter.wait / meter.total if meter.total else 0.0
        values = {"lr": lr, "grad_norm": grad_norm, "samples_per_s": throughput, "data_wait_fraction": wait}
        values.update({f"loss/budget_{b}": sum(v) / len(v) for b, v in meter.losses.items()})
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])
        eta = (time.perf_counter() - self.started) / max(step - self.start_step, 1) * (self.max_steps - step)
        losses = " ".join(f"b{b}={sum(v) / len(v):.3f}" for b, v in sorted(meter.losses.items()))
        # stderr: Ray Train forwards a worker's stdout to the driver twice, stderr once
        print(f"[visor train] step {step}/{self.max_steps} loss {losses} lr {lr:.2e} "
              f"{throughput:.1f} samples/s data-wait {wait:.0%} ETA {eta:.0f}s", file=sys.stderr, flush=True)
