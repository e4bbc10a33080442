"""The driver's progress line for a training stage, read from the metrics rank 0 logs to MLflow.

Workers are other processes (on a cluster, other machines); what they print goes to the job's log file.
The driver follows the run through the one channel it already has — the MLflow run, where rank 0 logs
``lr`` and ``loss/budget_<b>`` every ``run.log_every`` steps — and shows one line for the stage
(:meth:`jobs.console.Console.stage`): steps done of ``optim.max_steps``, ETA, the latest loss per budget.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from jobs.console import Stage, current

POLL_SECONDS = 2.0


def _refresh(client, run_id: str, stage: Stage) -> None:
    """Move ``stage`` to the run's latest logged step and losses (a failed read is retried at the next poll)."""
    try:
        history = client.get_metric_history(run_id, "lr")
        metrics = client.get_run(run_id).data.metrics
    except Exception:  # noqa: BLE001 (a busy store: the next poll reads again)
        return
    if history:
        losses = sorted((int(k.rsplit("_", 1)[1]), v) for k, v in metrics.items() if k.startswith("loss/budget_"))
        stage.update(max(m.step for m in history), "loss " + " ".join(f"b{b}={v:.3f}" for b, v in losses))


@contextmanager
def follow_training(client, run_id: str, max_steps: int, name: str) -> Iterator[Stage]:
    """Show ``name``'s progress while the block (``trainer.fit()``) runs; the stage's line is final at exit."""
    stage = current().stage(name, total=max_steps, unit="steps")
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(POLL_SECONDS):
            _refresh(client, run_id, stage)

    thread = threading.Thread(target=poll, name="visor-train-progress", daemon=True)
    thread.start()
    try:
        yield stage
    finally:
        stop.set()
        thread.join()
        _refresh(client, run_id, stage)
        stage.close()
