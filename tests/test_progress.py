"""Progress on stderr: a bar on a terminal; log lines, never ``\\r``, in job logs (files, pipes)."""

from __future__ import annotations

import io
import logging
import re
import time

import dask
import dask.array as da
import numpy as np
import pytest

from pixseg import compute as compute_module
from pixseg.cli import main
from pixseg.compute import compute

DURATION = r"(\d+\.\d s|\d+ min \d\d s|\d+ h \d\d min)"
PROGRESS_LINE = re.compile(rf"progress: \d+% \(\d+/\d+ tasks\) after {DURATION}, [\d.]+ tasks/s(, ETA {DURATION})?$")
FINAL_LINE = re.compile(r"progress: 100% \((\d+)/\1 tasks\)")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _slow(block: np.ndarray) -> np.ndarray:
    time.sleep(0.1)
    return block + 1


def _slow_array() -> da.Array:
    """Eight chunks of 0.1 s each."""
    return da.zeros((8, 4), chunks=(1, 4)).map_blocks(_slow, dtype=float, meta=np.array((), dtype=float))


@pytest.fixture
def every_task(monkeypatch):
    """Progress lines at every finished task instead of every few seconds."""
    monkeypatch.setattr(compute_module, "PROGRESS_LOG_SECONDS", 0.0)


@pytest.mark.slow
def test_job_log_gets_percent_lines_and_no_carriage_returns(tmp_path, capsys, blob_tiff, every_task):
    assert main(["segment", blob_tiff, str(tmp_path / "l.zarr"), "--chunk", "64", "--no-previews"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line.removeprefix("pixseg: ") for line in err.splitlines() if "progress:" in line]
    assert lines and all(PROGRESS_LINE.match(line) for line in lines), lines
    assert any(", ETA " in line for line in lines) and any(FINAL_LINE.match(line) for line in lines)


@pytest.mark.slow
def test_quiet_silences_progress(tmp_path, capsys, blob_tiff, every_task):
    assert main(["segment", blob_tiff, str(tmp_path / "l.zarr"), "--chunk", "64", "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_lines_come_at_most_every_interval_and_at_the_end(caplog, monkeypatch):
    monkeypatch.setattr(compute_module, "PROGRESS_LOG_SECONDS", 0.25)
    with caplog.at_level(logging.INFO, logger="pixseg.compute"), dask.config.set(scheduler="threads", num_workers=1):
        result = compute(_slow_array(), progress=True)
    assert result.sum() == 32
    lines = [record.getMessage() for record in caplog.records]
    assert 2 <= len(lines) <= 4, lines  # 0.8 s of tasks: a line after each 0.25 s, and the last one
    assert FINAL_LINE.match(lines[-1]) and "ETA" not in lines[-1]
    assert all(PROGRESS_LINE.match(line) for line in lines), lines


def test_short_computations_log_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="pixseg.compute"):
        compute(da.ones((4, 4), chunks=2), progress=True)
    assert caplog.records == []


@pytest.mark.slow
def test_terminal_keeps_the_redrawn_bar(monkeypatch, caplog):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with caplog.at_level(logging.INFO, logger="pixseg.compute"), dask.config.set(scheduler="threads", num_workers=1):
        compute(_slow_array(), progress=True)
    assert "\r[" in terminal.getvalue() and "100% Completed" in terminal.getvalue()
    assert caplog.records == []


@pytest.mark.slow
def test_distributed_progress_is_logged_from_the_scheduler(capsys, caplog, every_task):
    distributed = pytest.importorskip("distributed")
    with (
        distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client,
        caplog.at_level(logging.INFO, logger="pixseg.compute"),
    ):
        assert compute_module.active_client() is client
        result = compute(_slow_array(), progress=True)
    assert result.sum() == 32
    lines = [record.getMessage() for record in caplog.records if record.name == "pixseg.compute"]
    assert FINAL_LINE.match(lines[-1]) and sum(bool(FINAL_LINE.match(line)) for line in lines) == 1, lines
    assert all(PROGRESS_LINE.match(line) for line in lines), lines
    captured = capsys.readouterr()
    assert "\r" not in captured.err + captured.out
