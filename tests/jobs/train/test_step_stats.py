"""The all-reduced statistics of one optimizer step, across two real gloo processes."""

from __future__ import annotations

import socket

import torch.distributed as dist
import torch.multiprocessing as mp

from jobs.train.steps import StepResult
from jobs.train.worker import StepStats


def _worker(rank: int, port: int, out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        mine = StepResult(losses={2: 1.0 + rank, 0: 4.0 * (rank + 1)}, grad_norm=0.0, samples=3 + rank)
        out.put((rank, StepStats.all_reduce(mine, data_wait_s=0.5 * rank)))
    finally:
        dist.destroy_process_group()


def test_step_statistics_are_averaged_losses_and_waits_and_summed_samples() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    out = context.Queue()
    processes = [context.Process(target=_worker, args=(rank, port, out)) for rank in range(2)]
    for process in processes:
        process.start()
    results = dict(out.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(60)
    assert results[0] == results[1] == StepStats(losses={2: 1.5, 0: 6.0}, data_wait_s=0.25, samples=7)
    assert list(results[0].losses) == [2, 0]  # in the order the budgets were trained
    alone = StepStats.all_reduce(StepResult({1: 0.5}, 0.0, 4), 0.1)  # no process group: this worker's own
    assert alone == StepStats({1: 0.5}, 0.1, 4)
