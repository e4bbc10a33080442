"""``visor retrain --config FILE``: train → policy → evaluate → promote, only when the data changed.

1. The data version of the training shards (of the recipe's last stage, whose model is
   registered) is computed; if the champion was trained on that version, nothing happens
   (status ``skipped``). Otherwise, with ``warm_start`` (the default) and a champion, only the
   last training stage runs, continuing from the champion; without a champion the whole
   recipe runs from its start.
2. A lock file (``lock_dir/retrain-<registered model>.lock``, created atomically)
   keeps a second retrain from starting while one runs; it names the holder, and
   a lock left by a dead process on this host is taken over.
3. One MLflow parent run (experiment ``visor-retrain``) holds the stages as nested
   runs: training (:mod:`jobs.train.driver`), the policy (:mod:`jobs.evaluation.policy`),
   evaluation of the new challenger and, when needed, of the champion on the same
   data (:mod:`jobs.evaluation.evaluate`), and promotion (:mod:`jobs.registry.promote`).
4. A failing stage marks the parent run ``FAILED`` with the stage and the error in its
   tags and leaves the champion where it was. The parent run records each stage's
   wall time as ``stage_seconds/<stage>``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from jobs.console import current
from jobs.evaluation.report import EvalReport
from jobs.faults import fail_stage
from jobs.retrain.config import RetrainConfig
from jobs.sections import CHAMPION

EXPERIMENT = "visor-retrain"


class AlreadyRunning(RuntimeError):
    """Another retrain holds the lock."""


@dataclass
class RetrainOutcome:
    status: str  # skipped | promoted | rejected
    reason: str
    data_version: str
    parent_run_id: str | None = None
    challenger: str | None = None
    champion: str | None = None
    report: EvalReport | None = None  # the challenger's evaluation


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def retrain_lock(path: Path):
    """Hold ``path`` exclusively (see the module docstring); raises :class:`AlreadyRunning`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                holder = {}
            if holder.get("host") == me["host"] and holder.get("pid") and not _alive(int(holder["pid"])):
                path.unlink(missing_ok=True)  # left by a process that died
                continue
            raise AlreadyRunning(
                f"a retrain is already running (lock {path} held by pid {holder.get('pid')} on "
                f"{holder.get('host')} since {holder.get('started')})"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def run_retrain(config: RetrainConfig) -> RetrainOutcome:
    """The whole retrain (see the module docstring)."""
    from mlflow.tracking import MlflowClient

    from jobs.evaluation.evaluate import evaluate
    from jobs.evaluation.policy import run_policy_job
    from jobs.registry.promote import promote
    from jobs.registry.tracking import alias_version, create_run, failure_marked, git_commit, tracking_uri
    from jobs.train.driver import resolve_training_data, run_training
    from pipelines.shards import ShardSet

    train_config = config.train
    data = resolve_training_data(train_config.final())  # listed once: its version decides, the training reads it
    version = data.version
    uri = tracking_uri(train_config.mlflow.tracking_uri)
    name = train_config.mlflow.registered_model
    lock = Path(config.lock_dir).expanduser().resolve() / f"retrain-{name}.lock"
    with retrain_lock(lock):
        client = MlflowClient(uri)
        champion = alias_version(client, name, CHAMPION)
        if champion is not None and champion.tags.get("data_version") == version:
            return RetrainOutcome("skipped", f"champion version {champion.version} was trained on data version "
                                  f"{version}: nothing to do", version, champion=str(champion.version))
        start = None if champion is None or not config.warm_start else f"models:/{name}/{champion.version}"
        if start is not None:
            train_config = train_config.warm_started(start)
        parent_id = create_run(uri, EXPERIMENT, "retrain", {"job": "retrain", "data_version": version,
                                                            "git_commit": git_commit(), "warm_start": start or ""})
        stage, clock = "train", time.perf_counter()

        def finished(name: str) -> str:  # log the stage that just ended, return the next one's name
            nonlocal clock
            client.log_metric(parent_id, f"stage_seconds/{stage}", time.perf_counter() - clock)
            clock = time.perf_counter()
            return name

        with failure_marked(client, parent_id, lambda: {"failed_stage": stage}):
            fail_stage(stage)
            trained = run_training(train_config, parent_run_id=parent_id, data=data)
            stage = finished("policy")
            fail_stage(stage)
            policy = run_policy_job(f"models:/{name}/{trained.registered_version}", config.policy.data, uri,
                                    config.policy, config.score, name, parent_run_id=parent_id)
            current().say(f"policy: τ = {policy.tau}, held-out accuracy {policy.heldout.accuracy:.3f}, "
                          f"budgets chosen {policy.heldout.budget_counts}")
            stage = finished("evaluate")
            fail_stage(stage)
            eval_data = ShardSet.resolve(config.evaluate.data)  # the challenger and the champion score one listing
            report = evaluate(f"models:/{name}/{policy.registered_version}", eval_data, uri, config.score,
                              parent_run_id=parent_id).report
            point = report.point
            current().say(f"evaluate: accuracy {point.accuracy:.3f} at {point.mean_flops / 1e6:.1f} MFLOPs "
                          f"({point.name}, {report.samples} samples)")
            if champion is not None and f"eval/{report.data_version}/accuracy" not in champion.tags:
                evaluate(f"models:/{name}/{champion.version}", eval_data, uri, config.score, parent_run_id=parent_id)
            stage = finished("promote")
            fail_stage(stage)
            decision = promote(uri, name, config.promote)
            finished("done")
        client.set_tag(parent_id, "decision", "promoted" if decision.promoted else "rejected")
        client.set_tag(parent_id, "decision_reason", decision.reason)
        client.set_terminated(parent_id, "FINISHED")
        final = alias_version(client, name, CHAMPION)
        return RetrainOutcome("promoted" if decision.promoted else "rejected", decision.reason, version, parent_id,
                              decision.challenger, None if final is None else str(final.version), report)
