"""Run a command as a subprocess and measure its wall time and the peak memory of its process tree."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

#: Seconds between two samples of the process tree's memory.
POLL_INTERVAL = 0.05


class BenchmarkError(RuntimeError):
    """A benchmarked command failed."""


@dataclass(frozen=True)
class Measurement:
    """What one measured run cost.

    Attributes
    ----------
    wall_s : float
        Seconds from start to exit, interpreter start-up included.
    peak_tree_rss : int
        Bytes: the largest sum, over one poll, of the RSS of the process and all its
        descendants (shared pages count once per process that maps them).
    max_processes : int
        The most processes seen in the tree at once.
    stdout : str
        What the command printed on stdout.
    """

    wall_s: float
    peak_tree_rss: int
    max_processes: int
    stdout: str


def run_measured(command: Sequence[str], *, cwd: Path, log_stem: Path) -> Measurement:
    """Run ``command`` to completion, polling its process tree's RSS every ``POLL_INTERVAL`` s.

    Parameters
    ----------
    command : sequence of str
        The program and its arguments (no shell).
    cwd : pathlib.Path
        Working directory of the command.
    log_stem : pathlib.Path
        The command's stdout and stderr go to ``<log_stem>.stdout`` and ``<log_stem>.stderr``.

    Returns
    -------
    Measurement

    Raises
    ------
    BenchmarkError
        If the command exits with a non-zero status (the message ends with its stderr).
    """
    stdout_path = log_stem.with_name(log_stem.name + ".stdout")
    stderr_path = log_stem.with_name(log_stem.name + ".stderr")
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(list(command), cwd=cwd, stdout=out, stderr=err)
        try:
            peak, most = _poll_until_exit(process)
        except BaseException:  # interrupted: leave no process behind
            _kill_tree(process)
            raise
        wall = time.perf_counter() - started
    if process.returncode != 0:
        tail = stderr_path.read_text(errors="replace")[-2000:]
        raise BenchmarkError(f"{' '.join(command)!r} exited with status {process.returncode}:\n{tail}")
    return Measurement(
        wall_s=wall,
        peak_tree_rss=peak,
        max_processes=most,
        stdout=stdout_path.read_text(errors="replace"),
    )


def _poll_until_exit(process: subprocess.Popen[bytes]) -> tuple[int, int]:
    """Sample the tree of ``process`` until it exits; return (peak RSS, most processes)."""
    root = psutil.Process(process.pid)
    peak = most = 0
    while process.poll() is None:
        rss, count = _tree_rss(root)
        peak, most = max(peak, rss), max(most, count)
        time.sleep(POLL_INTERVAL)
    return peak, most


def _tree_rss(root: psutil.Process) -> tuple[int, int]:
    """Sum of RSS over ``root`` and its descendants, and how many processes were counted."""
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    total = count = 0
    for process in processes:
        try:
            total += process.memory_info().rss
            count += 1
        except psutil.Error:  # exited between listing and reading
            continue
    return total, count


def _kill_tree(process: subprocess.Popen[bytes]) -> None:
    """Kill ``process`` and its descendants, then reap it."""
    try:
        root = psutil.Process(process.pid)
        victims = [*root.children(recursive=True), root]
    except psutil.Error:  # already gone
        victims = []
    for victim in victims:
        try:
            victim.kill()
        except psutil.Error:
            continue
    process.wait()
