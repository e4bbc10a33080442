"""Fault injection for tests, reachable only through the environment variable ``VISOR_TEST_FAULT`` (never
from a config file or a command-line flag):

* ``VISOR_TEST_FAULT=train:rank=R:step=S`` — the training worker of rank R raises once, after optimizer
  step S (a marker file remembers, so the replacement worker and a resumed driver carry on);
* ``VISOR_TEST_FAULT=retrain:stage=NAME`` — the retrain raises at the start of stage NAME (``train``,
  ``policy``, ``evaluate`` or ``promote``);
* ``VISOR_TEST_FAULT=recipe:stage=NAME`` — a training recipe raises at the start of its stage NAME;
* ``VISOR_TEST_FAULT=serve:marker=TEXT[:at=prefill|decode][:error=runtime|value]`` — a serving replica's
  model call (prefill, or every decode step) raises for any batch holding a request whose text contains
  TEXT (``RuntimeError`` by default, ``ValueError`` with ``error=value``).

The variable is read where a run starts, in the driver's process. Ray Train workers and Serve replicas are
processes of a Ray instance that may have started before the variable was set, and do not see it: the driver
hands the fault to them (:class:`TrainFault`, a field of the workers' inputs; :class:`ServeFault`, an argument
of the deployment).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

ENV = "VISOR_TEST_FAULT"


def _injected(kind: str) -> dict[str, str] | None:
    """The ``key=value`` items of ``$VISOR_TEST_FAULT`` when it starts with ``kind:``, else None."""
    value = os.environ.get(ENV, "")
    where, _, rest = value.partition(":")
    if where != kind:
        return None
    items = [item.partition("=") for item in rest.split(":") if item]
    if not items or any(not sep for _, sep, _ in items):
        raise ValueError(f"{ENV}={value!r}: expected train:rank=R:step=S, retrain:stage=NAME, recipe:stage=NAME "
                         "or serve:marker=TEXT")
    return {key: item for key, _, item in items}


@dataclass(frozen=True)
class TrainFault:
    """Worker ``rank`` raises once after optimizer step ``step``; ``marker`` (a file) records that it did."""

    rank: int
    step: int
    marker: Path

    def maybe_fail(self, rank: int, step: int) -> None:
        if (rank, step) != (self.rank, self.step) or self.marker.exists():
            return
        self.marker.write_text(str(step))
        raise RuntimeError(f"injected fault ({ENV}) at step {step} on rank {rank}")


def train_fault(run_id: str) -> TrainFault | None:
    """The training fault ``$VISOR_TEST_FAULT`` asks for (None: none), remembered per MLflow run ``run_id``."""
    items = _injected("train")
    if items is None:
        return None
    marker = Path(tempfile.gettempdir()) / f"visor-fault-{run_id}"
    return TrainFault(int(items.get("rank", 0)), int(items["step"]), marker)


def fail_stage(stage: str, kind: str = "retrain") -> None:
    """Raise if ``$VISOR_TEST_FAULT`` asks ``kind`` (``retrain`` or ``recipe``) to fail at ``stage``."""
    items = _injected(kind)
    if items is not None and items.get("stage") == stage:
        raise RuntimeError(f"injected failure in {kind} stage {stage} ({ENV})")


@dataclass(frozen=True)
class ServeFault:
    """A serving replica's model call ``at`` (``prefill`` or ``decode``) raises ``error`` (``runtime`` or
    ``value``) whenever its batch holds a request whose text contains ``marker``."""

    marker: str
    at: str = "prefill"
    error: str = "runtime"

    def maybe_fail(self, at: str, texts: list[str]) -> None:
        """Raise if this is the faulty call: ``at`` matches and one of the batch's request ``texts`` holds the
        marker."""
        if at != self.at or not any(self.marker in text for text in texts):
            return
        kind = ValueError if self.error == "value" else RuntimeError
        raise kind(f"injected fault ({ENV}) in the model's {at} of a request containing {self.marker!r}")


def serve_fault() -> ServeFault | None:
    """The serving fault ``$VISOR_TEST_FAULT`` asks for (None: none)."""
    items = _injected("serve")
    if items is None:
        return None
    fault = ServeFault(items["marker"], items.get("at", "prefill"), items.get("error", "runtime"))
    if fault.at not in ("prefill", "decode") or fault.error not in ("runtime", "value"):
        raise ValueError(f"{ENV}: serve faults take at=prefill|decode and error=runtime|value, got {items}")
    return fault
