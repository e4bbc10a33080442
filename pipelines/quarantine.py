"""Counting and reporting rejected samples across Ray Data tasks.

Preprocessing runs in many Ray tasks, so rejections are sent to one
:class:`QuarantineLedger` actor (zero CPUs) that the driver creates and reads
back. Each rejection is kept once per ``(url, key, reason)`` — a second pass
over the data (another epoch, a retried task) does not count it twice — and
the ledger also counts rows seen and rows kept, per pass through the data.

The report (:meth:`QuarantineReport.write_jsonl`) has one JSON object per line:
``{"url", "key", "reason", "detail"}``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import ray


@dataclass
class QuarantineReport:
    """``seen`` and ``valid`` rows (summed over every pass through the data) and the
    quarantined samples (each once) with their reasons."""

    seen: int = 0
    valid: int = 0
    records: list[dict] = field(default_factory=list)

    @property
    def by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(r["reason"] for r in self.records).items()))

    def write_jsonl(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = (json.dumps(r, sort_keys=True) for r in sorted(self.records, key=lambda r: (r["url"], r["key"])))
        path.write_text("".join(f"{line}\n" for line in lines))
        return path

    def summary(self) -> dict:
        return {"seen": self.seen, "valid": self.valid, "quarantined": self.by_reason}


@ray.remote(num_cpus=0)
class QuarantineLedger:
    """Collects rejections from preprocessing tasks; see the module docstring."""

    def __init__(self) -> None:
        self._records: dict[tuple[str, str, str], dict] = {}
        self._seen = 0
        self._valid = 0

    def add(self, seen: int, valid: int, records: list[dict]) -> None:
        self._seen += seen
        self._valid += valid
        for record in records:
            self._records.setdefault((record["url"], record["key"], record["reason"]), record)

    def report(self) -> QuarantineReport:
        return QuarantineReport(self._seen, self._valid, list(self._records.values()))
