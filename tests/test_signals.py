"""SIGTERM (a batch system's time limit) interrupts a run like SIGINT: exit 130, lock released, resumable."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from conftest import make_blob_image

from pixseg import cli
from pixseg.cli import main
from pixseg.describe import describe

RESUME_HINT = "the chunks written so far are kept: rerun with --resume to continue"


@pytest.fixture(scope="module")
def large_tiff(tmp_path_factory) -> str:
    """A 4096 x 4096 RGB tiled TIFF: 256 chunks of 256 x 256, a few seconds of labelling."""
    path = str(tmp_path_factory.mktemp("large") / "large.tif")
    pixels = np.tile(make_blob_image(1024, 1024), (4, 4, 1))
    tifffile.imwrite(path, pixels, tile=(256, 256), photometric="rgb", compression="zlib")
    return path


def _chunk_files(output: Path) -> int:
    chunks = output / "0" / "c"
    return sum(1 for p in chunks.rglob("*") if p.is_file()) if chunks.is_dir() else 0


@pytest.mark.slow
def test_sigterm_exits_130_releases_the_lock_and_the_run_resumes(tmp_path, capsys, large_tiff):
    out = tmp_path / "labels.zarr"
    argv = ["segment", large_tiff, str(out), "--chunk", "256", "-k", "4", "--no-previews", "-q"]
    run = subprocess.Popen(
        [sys.executable, "-m", "pixseg.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while _chunk_files(out) < 4:
        assert run.poll() is None, f"the run ended before it was signalled: {run.communicate()}"
        assert time.monotonic() < deadline, "no chunk written in time"
        time.sleep(0.01)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    assert err.strip().splitlines() == [f"error: interrupted (SIGTERM); {RESUME_HINT}"]
    assert not os.path.exists(str(out) + ".lock")
    written = _chunk_files(out)
    assert describe(str(out))["complete"] is False and 4 <= written < 256

    assert main([*argv, "--resume"]) == 0
    reference = tmp_path / "reference.zarr"
    assert main(["segment", large_tiff, str(reference), *argv[3:]]) == 0
    capsys.readouterr()
    resumed, uninterrupted = (zarr.open_group(str(p), mode="r") for p in (out, reference))
    for level in ("0", "1", "2"):
        np.testing.assert_array_equal(resumed[level][:], uninterrupted[level][:])
    assert resumed.attrs["pixseg"]["complete"] is True


def test_console_main_turns_sigterm_into_keyboardinterrupt_and_restores_the_handler(monkeypatch):
    seen = []

    def fake_main() -> int:
        try:
            signal.raise_signal(signal.SIGTERM)
        except KeyboardInterrupt as err:
            seen.append(str(err))
        return 0

    def previous(signum, frame):  # the host's handler, restored afterwards
        raise AssertionError("the host's SIGTERM handler ran during the command")

    monkeypatch.setattr(cli, "main", fake_main)
    monkeypatch.setattr("pixseg.cluster.tune_process", contextlib.nullcontext)
    original = signal.signal(signal.SIGTERM, previous)
    try:
        with pytest.raises(SystemExit) as exited:
            cli.console_main()
        assert exited.value.code == 0 and seen == ["SIGTERM"]
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, original)


@pytest.mark.slow
def test_library_calls_leave_sigterm_alone(tmp_path, blob_tiff):
    before = signal.getsignal(signal.SIGTERM)
    assert main(["segment", blob_tiff, str(tmp_path / "l.zarr"), "-q"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_an_interrupt_names_how_to_continue(tmp_path, capsys, blob_tiff, monkeypatch):
    from pixseg import labelling

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(labelling, "finalise_label_zarr", interrupted)
    assert main(["segment", blob_tiff, str(tmp_path / "l.zarr"), "-q"]) == 130
    assert capsys.readouterr().err.strip() == f"error: interrupted; {RESUME_HINT}"
