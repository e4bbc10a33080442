"""How a job finds Ray without an address: a live cluster file is joined, a stale one never hangs the job."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from jobs.ray_env import recorded_cluster
from pipelines.synth import write_synth

pytestmark = pytest.mark.integration  # starts Ray through `visor` subprocesses

BIN = Path(sys.executable).parent


def write_cluster_file(temp_root: str, address: str) -> None:
    (Path(temp_root) / "ray").mkdir(exist_ok=True)
    (Path(temp_root) / "ray" / "ray_current_cluster").write_text(address)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the socket is closed


def test_recorded_cluster_tells_a_live_address_from_a_stale_one(tmp_path: Path) -> None:
    assert recorded_cluster(str(tmp_path)) == (None, False)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        live = f"127.0.0.1:{listener.getsockname()[1]}"
        (tmp_path / "ray_current_cluster").write_text(live)
        assert recorded_cluster(str(tmp_path)) == (live, True)
    stale = f"127.0.0.1:{closed_port()}"
    (tmp_path / "ray_current_cluster").write_text(stale)
    assert recorded_cluster(str(tmp_path)) == (stale, False)


def test_a_stale_cluster_file_starts_a_local_instance_instead_of_hanging(tmp_path: Path) -> None:
    write_synth(tmp_path / "data", 8, 0, 8, seed=0)
    temp_root = tempfile.mkdtemp(prefix="/tmp/rs")  # short: Ray's socket paths live under it
    try:
        stale = f"127.0.0.1:{closed_port()}"
        write_cluster_file(temp_root, stale)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        started = time.monotonic()
        result = subprocess.run(
            [str(BIN / "visor"), "data", "inspect", str(tmp_path / "data" / "train-*.tar"), "--json"],
            capture_output=True, text=True, timeout=120, env={**env, "RAY_TMPDIR": temp_root},
        )
        elapsed = time.monotonic() - started
    finally:
        shutil.rmtree(temp_root, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-2000:]
    logs, explanation = result.stderr.splitlines()  # the console (jobs/console.py): two lines, the rest in the log
    assert explanation == (f"starting a local Ray instance; the cluster file names {stale}, which does not answer (a "
                           "`ray start` that ended uncleanly — `ray stop --force` removes the file)")
    assert "Execution plan of Dataset" in Path(logs.removeprefix("logs: ")).read_text()  # Ray Data's own lines
    assert json.loads(result.stdout)["samples"] == 8  # stdout is the JSON alone
    assert elapsed < 60
