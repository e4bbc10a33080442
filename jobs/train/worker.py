"""The loop every Ray Train worker of ``visor train`` runs (:func:`train_loop`).

Each worker builds the model, wraps it for DDP/FSDP, resumes
from the latest checkpoint if there is one, and runs ``optim.max_steps``
optimizer steps over its shard of the data (``get_dataset_shard``), sampling
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
    from jobs.train.model_setup import build_model, freeze
    from jobs.train.steps import budgets_for_step, make_optimizer, optimizer_step
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
        if loop_config["fault"] is not None:
            loop_config["fault"].maybe_fail(rank, step)
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


class _RankZeroTracker:
    """Metrics to MLflow and a progress line on stdout (rank 0 only)."""

    def __init__(self, loop_config: dict, config: TrainConfig, start_step: int):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(loop_config["tracking_uri"])
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
