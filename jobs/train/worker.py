"""The loop every Ray Train worker of ``visor train`` runs: :func:`train_loop`, given its :class:`WorkerInputs`.

Each worker builds the model, wraps it for DDP/FSDP, resumes from the latest
checkpoint if there is one, and runs ``optim.max_steps`` optimizer steps over
its shard of the data (``get_dataset_shard``), sampling budgets per step
(:func:`jobs.train.steps.budgets_for_step`). After every step the workers
all-reduce its statistics (:class:`StepStats`). Rank 0 logs metrics to MLflow
every ``run.log_every`` steps and prints a progress line; every
``run.checkpoint_every`` steps and at the end all ranks report a checkpoint
(rank 0 writes it).
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import torch

from jobs.faults import TrainFault
from jobs.train.config import TrainConfig
from jobs.train.steps import StepResult

if TYPE_CHECKING:
    from visor_model.processing import VisorProcessor


@dataclass(frozen=True)
class WorkerInputs:
    """What the driver hands every worker, built once per run (``TorchTrainer(partial(train_loop, inputs))``)."""

    config: TrainConfig
    processor: VisorProcessor
    run_id: str  # the MLflow run rank 0 logs to
    tracking_uri: str
    sample_log_dir: Path | None = None  # with run.sample_log on local storage: samples-rank<R>.jsonl go here
    fault: TrainFault | None = None  # test-only (jobs.faults)


@dataclass(frozen=True)
class StepStats:
    """One optimizer step as all the workers saw it: the mean answer loss per budget trained (``losses``),
    the mean seconds a worker waited for its batches (``data_wait_s``) and the samples trained (``samples``,
    summed over the workers)."""

    losses: dict[int, float]
    data_wait_s: float
    samples: int

    @classmethod
    def all_reduce(cls, step: StepResult, data_wait_s: float) -> StepStats:
        """Combine this worker's ``step`` with every other worker's. Collective: every rank calls it."""
        import torch.distributed as dist

        values = torch.tensor([*step.losses.values(), data_wait_s, step.samples], dtype=torch.float64)
        world = 1
        if dist.is_initialized():
            dist.all_reduce(values)
            world = dist.get_world_size()
        *losses, wait, samples = values.tolist()
        return cls({b: loss / world for b, loss in zip(step.losses, losses, strict=True)}, wait / world,
                   round(samples))


@dataclass
class _Meter:
    """Sums over the current logging interval: data wait and step seconds, samples, losses per budget."""

    wait: float = 0.0
    total: float = 0.0
    samples: int = 0
    losses: dict[int, list[float]] = field(default_factory=dict)

    def add(self, stats: StepStats, seconds: float) -> None:
        self.wait += stats.data_wait_s
        self.total += seconds
        self.samples += stats.samples
        for budget, loss in stats.losses.items():
            self.losses.setdefault(budget, []).append(loss)


def _batches(shard, config: TrainConfig, collate, device) -> Iterator[dict[str, torch.Tensor]]:
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


def _prepared_model(inputs: WorkerInputs, world: int) -> torch.nn.Module:
    """The model to train, its frozen groups set, wrapped for DDP/FSDP when there are several workers."""
    import ray.train.torch

    from jobs.train.model_setup import build_model, freeze

    config = inputs.config
    model = build_model(config.model, len(inputs.processor.tokenizer), config.seed, inputs.tracking_uri)
    freeze(model, config.freeze)
    kwargs = {"find_unused_parameters": config.scaling.find_unused_parameters} if world > 1 else None
    return ray.train.torch.prepare_model(
        model, parallel_strategy=config.scaling.strategy if world > 1 else None, parallel_strategy_kwargs=kwargs
    )


def train_loop(inputs: WorkerInputs) -> None:
    """Per-worker training function (Ray Train V2); see the module docstring."""
    import ray.train
    import ray.train.torch

    from jobs.train.checkpoint import restore_state, unwrap
    from jobs.train.steps import budgets_for_step, make_optimizer, optimizer_step
    from pipelines.dataset import Collator, decode_keys

    config = inputs.config
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    model = _prepared_model(inputs, world)
    num_budgets = unwrap(model).plan.num_budgets
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

    tracker = _RankZeroTracker(inputs, step) if rank == 0 else None
    sample_log = _sample_log(inputs, rank)
    collate = Collator(inputs.processor.tokenizer.pad_token_id, with_keys=sample_log is not None)
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
        budgets = budgets_for_step(config.sampling.strategy, num_budgets, config.sampling.seed, step)
        result = optimizer_step(model, micro, budgets, optimizer, scheduler, config.optim.grad_clip, autocast)
        step += 1
        if inputs.fault is not None:
            inputs.fault.maybe_fail(rank, step)
        stats = StepStats.all_reduce(result, waited)
        meter.add(stats, time.perf_counter() - started)
        if tracker is not None and (step % config.run.log_every == 0 or step == config.optim.max_steps):
            tracker.log(step, meter, scheduler.get_last_lr()[0], result.grad_norm)
        if step % config.run.log_every == 0:
            meter = _Meter()
        if step % config.run.checkpoint_every == 0 or step == config.optim.max_steps:
            _report(inputs, model, optimizer, scheduler, step, stats)
    if sample_log is not None:
        sample_log.close()


def _report(inputs: WorkerInputs, model, optimizer, scheduler, step: int, stats: StepStats) -> None:
    """Report ``step``'s losses and a checkpoint to Ray Train (written by rank 0; with the model directory after
    the last step). Collective: every rank calls it."""
    import ray.train

    from jobs.registry.model_format import save_model_dir
    from jobs.train.checkpoint import STATE_FILE, capture_state, unwrap

    state = capture_state(model, optimizer, scheduler, step)  # collective; None except on rank 0
    metrics = {"step": step, **{f"loss/budget_{b}": loss for b, loss in stats.losses.items()}}
    if state is None:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state, Path(tmp) / STATE_FILE)
        if step == inputs.config.optim.max_steps:
            save_model_dir(unwrap(model), inputs.processor, Path(tmp) / "model")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _sample_log(inputs: WorkerInputs, rank: int) -> IO[str] | None:
    if inputs.sample_log_dir is None:
        return None
    inputs.sample_log_dir.mkdir(parents=True, exist_ok=True)
    return open(inputs.sample_log_dir / f"samples-rank{rank}.jsonl", "a")  # noqa: SIM115 (closed after the loop)


class _RankZeroTracker:
    """Metrics to MLflow and a progress line on stderr (rank 0 only)."""

    def __init__(self, inputs: WorkerInputs, start_step: int):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(inputs.tracking_uri)
        self.run_id = inputs.run_id
        self.max_steps = inputs.config.optim.max_steps
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
        # written, not print()ed: Ray Train patches print() in its workers to echo a line and log it too (twice)
        sys.stderr.write(f"[visor train] step {step}/{self.max_steps} loss {losses} lr {lr:.2e} "
                         f"{throughput:.1f} samples/s data-wait {wait:.0%} ETA {eta:.0f}s\n")
        sys.stderr.flush()
