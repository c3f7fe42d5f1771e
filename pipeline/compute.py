"""The one place that computes: dask collections on the active scheduler, with progress for terminals and job logs.

Progress goes to stderr. On a terminal it is dask's (or distributed's) bar, redrawn in place with
``\\r``. Anywhere else (a batch job's log file, a pipe) a redrawn bar would fill the file with
``\\r`` updates, so progress is logged instead: a line ``progress: P% (DONE/TOTAL tasks) after T,
R tasks/s, ETA T`` at most every :data:`PROGRESS_LOG_SECONDS` while tasks finish, and a last line
when a computation that ran at least that long ends, through :mod:`logging` (``-q`` silences it).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Any

import dask
from dask.callbacks import Callback
from dask.delayed import Delayed

logger = logging.getLogger(__name__)

#: Where stderr is not a terminal: seconds between two progress lines.
PROGRESS_LOG_SECONDS = 10.0
#: A terminal's progress bar appears for computations longer than this (seconds).
_BAR_MINIMUM_SECONDS = 0.5


def compute(*collections: Any, progress: bool) -> Any:
    """Compute collections together on the active scheduler (shared tasks run once).

    ``None`` entries pass through. One collection -> its result. With ``progress``, progress is
    shown on stderr: a bar on a terminal, else log lines (see the module's notes).
    """
    # dask 2026.8 can hand back the results of mixed collection types (arrays and delayed
    # objects, even in a dict) in the wrong places: compute one type at a time
    todo = [c for c in collections if c is not None]
    if len({isinstance(c, Delayed) for c in todo}) > 1:
        raise TypeError("compute takes collections of one type at a time (dask arrays or delayed objects)")
    client = active_client()
    if client is None:
        with _threaded_progress() if progress else contextlib.nullcontext():
            results = list(dask.compute(*todo))
    else:
        futures = client.compute(todo)
        if progress:
            _distributed_progress(futures)
        results = client.gather(futures)
    filled = [None if c is None else results.pop(0) for c in collections]
    return filled[0] if len(filled) == 1 else tuple(filled)


def active_client() -> Any:
    """The distributed client of the active scheduler, or None under the threaded scheduler."""
    if dask.config.get("scheduler", None) != "dask.distributed":
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


def _threaded_progress() -> contextlib.AbstractContextManager[object]:
    """The progress of the threaded scheduler: dask's bar on a terminal, else log lines."""
    if _stderr_is_terminal():
        from dask.diagnostics import ProgressBar

        return ProgressBar(out=sys.stderr, minimum=_BAR_MINIMUM_SECONDS)
    return _LogCallback()


def _distributed_progress(futures: list[Any]) -> None:
    """Wait for ``futures`` showing their tasks' progress: distributed's bar on a terminal, else log lines."""
    if _stderr_is_terminal():
        from distributed import progress as distributed_progress

        with contextlib.redirect_stdout(sys.stderr):
            distributed_progress(futures)
        return
    from distributed.diagnostics.progressbar import TextProgressBar

    class LogProgressBar(TextProgressBar):
        """distributed's console bar, drawn as log lines: the scheduler reports all and remaining tasks."""

        def __init__(self, keys: list[Any]) -> None:
            self.progress_log = _ProgressLog()
            super().__init__(keys, interval="1s")

        def _draw_bar(self, remaining: int, all: int, **_: Any) -> None:
            self.progress_log.update(all - remaining, all)

        def _draw_stop(self, **response: Any) -> None:
            if response["status"] == "finished":
                self.progress_log.finish(response["all"] - response["remaining"], response["all"])

    LogProgressBar(futures)


class _ProgressLog:
    """Logs progress lines: at most every ``PROGRESS_LOG_SECONDS``, and at the end of a long computation."""

    def __init__(self) -> None:
        self._interval = PROGRESS_LOG_SECONDS
        self._start = self._last = time.monotonic()
        self._logged: tuple[int, int] | None = None

    def update(self, done: int, total: int) -> None:
        """``done`` of ``total`` tasks have finished; log them if the last line is old enough."""
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._log(done, total, now)

    def finish(self, done: int, total: int) -> None:
        """The computation ended with ``done`` of ``total`` tasks; log it if it ran for an interval
        or more and the last line did not say so already."""
        now = time.monotonic()
        if now - self._start >= self._interval and self._logged != (done, total):
            self._log(done, total, now)

    def _log(self, done: int, total: int, now: float) -> None:
        self._logged = (done, total)
        elapsed = now - self._start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = f", ETA {_duration((total - done) / rate)}" if rate > 0 and done < total else ""
        percent = 100 * done // total if total else 100
        took = _duration(elapsed)
        logger.info("progress: %d%% (%d/%d tasks) after %s, %.1f tasks/s%s", percent, done, total, took, rate, eta)


def _duration(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s`` or ``2 h 07 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


class _LogCallback(Callback):
    """Progress of the threaded scheduler as log lines (dask calls these hooks in its scheduling thread)."""

    def _start(self, dsk: Any) -> None:
        self._log = _ProgressLog()

    def _posttask(self, key: Any, result: Any, dsk: Any, state: dict[str, Any], worker_id: Any) -> None:
        self._log.update(*_task_counts(state))

    def _finish(self, dsk: Any, state: dict[str, Any], errored: bool) -> None:
        if not errored:
            self._log.finish(*_task_counts(state))


def _task_counts(state: dict[str, Any]) -> tuple[int, int]:
    """Finished and all tasks of the threaded scheduler's ``state`` (as dask's ProgressBar counts them)."""
    done = len(state["finished"])
    return done, done + sum(len(state[key]) for key in ("ready", "waiting", "running"))
