"""What a ``visor`` command shows on the terminal, and where everything else goes.

By default a job run inside :func:`job_console` prints, on the terminal:

1. one line naming its log file (``runs/logs/<job>-<YYYYmmdd-HHMMSS>.log``; ``VISOR_LOG_DIR`` moves it);
2. one line per stage (:meth:`Console.stage`) — a live ``tqdm`` bar on a terminal, one summary line
   when the stage ends elsewhere — with its counts, its time and its key metric;
3. the result (printed by the command after the job).

Everything else goes to the log file, by redirection and by each library's own switch, never by
filtering text: the process's stdout/stderr file descriptors point at the file while the job runs (so
Ray's driver output, the worker output Ray forwards, Ray core's C++ messages, Python logging of Ray,
MLflow and ``transformers``, and warnings all land there); Ray Data's progress bars are switched off
(``DataContext.enable_progress_bars``) and so are ``transformers``' (``transformers.utils.logging``).
``--verbose`` or ``VISOR_LOG_LEVEL=debug`` turns all of this off: everything is shown as it happens,
and there is no log file — but progress bars are still drawn only on a terminal: where the output is a
log (a job submitted with ``visor submit``, whose output is the log Ray Jobs keeps), the libraries' bars
are off, as they would be one line per update there.

Job code reports through :func:`current`, which outside :func:`job_console` (a library call, a test)
writes plain lines to stderr.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO

LOG_DIR_ENV = "VISOR_LOG_DIR"
LOG_LEVEL_ENV = "VISOR_LOG_LEVEL"
DEFAULT_LOG_DIR = Path("runs") / "logs"


def verbose_requested(flag: bool = False) -> bool:
    """``--verbose`` given, or ``VISOR_LOG_LEVEL=debug`` in the environment."""
    return flag or os.environ.get(LOG_LEVEL_ENV, "").strip().lower() == "debug"


class Stage:
    """One stage's progress: a ``tqdm`` bar on a terminal, else one line when the stage ends."""

    def __init__(self, console: Console, name: str, total: int | None, unit: str):
        self.console, self.name, self.total, self.unit = console, name, total, unit
        self.done, self.metric, self.closed = 0, "", False
        self.started = time.perf_counter()
        self.bar = None
        if console.interactive:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=name, unit=f" {unit}", file=console.terminal, leave=True,
                            dynamic_ncols=True, mininterval=0.5)

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, kind, error, trace) -> None:
        self.close("failed" if kind is not None else "")

    def update(self, done: int, metric: str = "") -> None:
        """``done`` units finished so far (absolute, not an increment); ``metric`` e.g. ``loss b0=2.31``."""
        self.metric = metric or self.metric
        if self.bar is not None:
            self.bar.update(max(done - self.done, 0))
            if metric:
                self.bar.set_postfix_str(metric, refresh=False)
        self.done = max(done, self.done)

    def close(self, summary: str = "") -> None:
        """End the stage (once); ``summary`` (e.g. ``accuracy 0.98``) replaces the running metric in its line."""
        if self.closed:
            return
        self.closed, self.metric = True, summary or self.metric
        elapsed = time.perf_counter() - self.started
        if self.bar is not None:
            if self.metric:
                self.bar.set_postfix_str(self.metric, refresh=False)
            self.bar.close()
            self.console.log(f"{self.name}: {self._counts()} in {elapsed:.0f} s {self.metric}".rstrip())
            return
        metric = f" — {self.metric}" if self.metric else ""
        self.console.say(f"{self.name}: {self._counts()} in {elapsed:.0f} s{metric}")

    def _counts(self) -> str:
        return f"{self.done}/{self.total} {self.unit}" if self.total else f"{self.done} {self.unit}"


class Console:
    """The terminal of one job (see the module docstring). ``terminal`` is where the user reads; ``log`` the log
    file's handle, None when nothing is redirected."""

    def __init__(self, terminal: IO[str], log: IO[str] | None = None, log_file: Path | None = None,
                 interactive: bool = False):
        self.terminal, self.log_handle, self.log_file, self.interactive = terminal, log, log_file, interactive

    def say(self, text: str) -> None:
        """A line for the user (also in the log file)."""
        self.terminal.write(text + "\n")
        self.terminal.flush()
        if self.log_handle is not None:
            self.log(text)

    def log(self, text: str) -> None:
        """A line for the log file only (on the terminal when nothing is redirected)."""
        stream = self.log_handle or self.terminal
        stream.write(f"[visor] {text}\n")
        stream.flush()

    def stage(self, name: str, total: int | None = None, unit: str = "steps") -> Stage:
        return Stage(self, name, total, unit)


_current: Console | None = None


def current() -> Console:
    """The console of the running job, or one writing plain lines to stderr outside :func:`job_console`."""
    return _current or Console(sys.stderr)


# the documented switches of Hugging Face's (``transformers``), MLflow's and Ray Data's progress bars, as
# environment variables: the processes Ray starts for a local job inherit them; `visor submit` sends them
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
             "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}


def _quiet_libraries() -> None:
    """The libraries' progress bars off: :data:`QUIET_ENV`, and the same switches in this process's modules
    (already imported ones read their variable at import)."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    import ray.data
    from transformers.utils import logging as hf_logging

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    hf_logging.disable_progress_bar()


@contextmanager
def job_console(job: str, verbose: bool = False) -> Iterator[Console]:
    """Run a job with its output split between the terminal and a log file (module docstring).

    A Ray instance the job started is shut down at the end, inside the redirection, so the last lines Ray
    forwards from its workers reach the file and not the terminal.
    """
    global _current
    previous = _current
    if verbose_requested(verbose):
        _current = Console(sys.stderr, interactive=_is_terminal(sys.stderr))
        if not _current.interactive:
            _quiet_libraries()
        try:
            yield _current
        finally:
            _current = previous
        return
    log_dir = Path(os.environ.get(LOG_DIR_ENV) or DEFAULT_LOG_DIR)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"{job}-{datetime.now():%Y%m%d-%H%M%S}.log"
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    # the user's terminal: a copy of descriptor 2 when sys.stderr writes to it, else sys.stderr itself (a test
    # runner's stream), which the redirection below does not touch
    terminal = os.fdopen(os.dup(2), "w", buffering=1) if _writes_to_fd(sys.stderr, 2) else sys.stderr
    handle = open(log_file, "a", buffering=1)  # noqa: SIM115 (closed below, after the descriptors are restored)
    console = Console(terminal, handle, log_file, interactive=_is_terminal(terminal))
    terminal.write(f"logs: {log_file}\n")
    terminal.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    ray_was_up = _ray_is_up()
    try:
        for fd in saved:
            os.dup2(handle.fileno(), fd)
        _quiet_libraries()
        _current = console
        yield console
    finally:
        _current = previous
        if _ray_is_up() and not ray_was_up:
            sys.modules["ray"].shutdown()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd, original in saved.items():
            os.dup2(original, fd)
            os.close(original)
        handle.close()
        if terminal is not sys.stderr:
            terminal.close()


def _is_terminal(stream: IO[str]) -> bool:
    """A terminal a live bar can be drawn on (one that reports its width; a pseudo-terminal without a size
    gets plain lines)."""
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns >= 40
    except (AttributeError, OSError, ValueError):
        return False


def _ray_is_up() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _writes_to_fd(stream: IO[str], fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        return False
