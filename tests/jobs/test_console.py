"""What a user sees: a `visor` command prints a handful of lines (its log file first) and the log file holds
everything else (jobs/console.py); --verbose shows it all. `visor data inspect`'s two lines are checked in
tests/jobs/cluster/test_ray_env.py, which runs it anyway."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from jobs import console
from pipelines.synth import write_synth
from tests.jobs.cluster.test_cluster import VISOR, environment

pytestmark = pytest.mark.integration  # runs `visor` jobs (Ray Train, Ray Data) as subprocesses

def run(*args: str, cwd: Path) -> tuple[list[str], list[str]]:
    """The command's (stderr, stdout) lines: progress on stderr, the result on stdout."""
    env = {k: v for k, v in environment().items() if k != console.LOG_DIR_ENV}  # the default place, runs/logs
    result = subprocess.run([VISOR, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stderr.splitlines(), result.stdout.splitlines()


def log_of(err: list[str], cwd: Path) -> str:
    """The log file named on the first line."""
    match = re.fullmatch(r"logs: (runs/logs/\w[\w-]*-\d{8}-\d{6}\.log)", err[0])
    assert match, err[:3]
    return (cwd / match.group(1)).read_text()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A directory with the demo-tiny preset's relative paths: demo-data/ shards."""
    root = tmp_path_factory.mktemp("console")
    write_synth(root / "demo-data", 96, 16, 48, 0)
    return root


def test_train_prints_a_few_lines_and_logs_the_rest(workdir):
    err, out = run("train", "--config", "demo-tiny", "--set", "optim.max_steps=6", "--set", "run.log_every=2",
                   "--set", "run.checkpoint_every=6", "--set", "scaling.num_workers=1", cwd=workdir)
    assert len(err + out) <= 15, "\n".join(err + out)
    assert re.fullmatch(r"train demo-tiny: 6/6 steps in \d+ s — loss b\d=\S+( b\d=\S+)*", err[-1]), err
    assert out[0].startswith("trained 6 steps") and out[-1].startswith("registered models:/visor/")
    log = log_of(err, workdir)
    assert "[visor train] step 6/6" in log  # rank 0's line, forwarded by Ray from the worker process
    assert re.search(r"\(RayTrainWorker pid=\d+", log)  # Ray's own prefix: its output went to the file
    assert "trained 6 steps" not in log and "Tasks:" not in log  # the result is the terminal's; no progress tables


def test_verbose_redirects_nothing_and_writes_no_log(tmp_path, monkeypatch, capfd):
    """…and, its output not being a terminal (a submitted job's log), switches the libraries' bars off."""
    import ray.data

    monkeypatch.setenv(console.LOG_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(console.LOG_LEVEL_ENV, "debug")  # the same as --verbose
    for name in console.QUIET_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(ray.data.DataContext.get_current(), "enable_progress_bars", True)
    with console.job_console("unit") as job:
        os.write(1, b"from a library\n")
        job.say("for the user")
    out, err = capfd.readouterr()
    assert out == "from a library\n" and "for the user" in err and not list(tmp_path.iterdir())
    assert not ray.data.DataContext.get_current().enable_progress_bars
    assert {name: os.environ.get(name) for name in console.QUIET_ENV} == console.QUIET_ENV


def test_console_outside_a_job_writes_plain_lines(capsys):
    with console.current().stage("score", unit="samples") as stage:
        stage.update(5)
    assert re.fullmatch(r"score: 5 samples in \d+ s\n", capsys.readouterr().err)


def test_job_console_restores_the_descriptors(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv(console.LOG_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(console.LOG_LEVEL_ENV, raising=False)
    with console.job_console("unit") as job:
        os.write(1, b"into the log\n")  # what a library or a child process writes to the descriptor
        job.say("for the user")
    print("after")
    out, err = capfd.readouterr()
    log = next(tmp_path.glob("unit-*.log")).read_text()
    assert "into the log" in log and "[visor] for the user" in log
    assert "into the log" not in out + err and "for the user" in err and out == "after\n"
