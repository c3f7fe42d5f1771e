"""Never lose work, never pass off a broken output: kills, resume, fault injection, locks."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from conftest import make_blob_image

from pixseg.cli import main
from pixseg.errors import OutputError
from pixseg.io.atomic import partial_files
from pixseg.io.label_tiff import interrupted_tiff_write
from pixseg.io.locks import output_lock
from pixseg.options import FitOptions, ReadOptions
from pixseg.runner import segment

FIT = FitOptions(clusters=4, sample_size=20_000)


@pytest.fixture(scope="module")
def big_tiff(tmp_path_factory) -> str:
    """A 2048 x 2048 RGB tiled TIFF: large enough that a segment run takes a few seconds."""
    path = str(tmp_path_factory.mktemp("big") / "big.tif")
    tifffile.imwrite(path, make_blob_image(2048, 2048, seed=9), tile=(128, 128), photometric="rgb", compression="zlib")
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, big_tiff) -> np.ndarray:
    """Labels of an uninterrupted run with the options the kill tests use."""
    out = str(tmp_path_factory.mktemp("ref") / "ref.zarr")
    segment(big_tiff, out, read=ReadOptions(chunk=128), fit=FIT)
    return zarr.open_group(out, mode="r")["0"][:]


def _labels(path: str) -> np.ndarray:
    if path.endswith(".zarr"):
        return zarr.open_group(path, mode="r")["0"][:]
    return tifffile.imread(path)


def _argv(big_tiff: str, out: str, *extra: str) -> list[str]:
    return ["segment", big_tiff, out, "--chunk", "128", "-k", "4", "--sample-size", "20000", "-q", *extra]


#: Runs the CLI in a subprocess; with SLOW_TILES set, every TIFF tile takes 20 ms more to write,
#: so that a kill can land inside the TIFF write of a small test image.
_HARNESS = """
import os, sys, time
import pixseg.io.label_tiff as label_tiff
if os.environ.get("SLOW_TILES"):
    tiles = label_tiff._tiles
    label_tiff._tiles = lambda labels, tile: (time.sleep(0.02) or t for t in tiles(labels, tile))
from pixseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _kill_when(argv: list[str], ready, *, log: Path, slow_tiles: bool = False, timeout: float = 90.0) -> None:
    """Run ``pixseg`` (not quiet, stderr to ``log``) and SIGKILL it as soon as ``ready(log text)`` is true."""
    env = {**os.environ, **({"SLOW_TILES": "1"} if slow_tiles else {})}
    argv = [a for a in argv if a != "-q"]
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", _HARNESS, *argv], stderr=stderr, env=env)
    deadline = time.monotonic() + timeout
    try:
        while not ready(log.read_text()):
            if process.poll() is not None:
                pytest.fail(f"pixseg finished (exit {process.returncode}) before the kill point")
            if time.monotonic() > deadline:
                pytest.fail("kill point never reached")
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()


def _chunks_on_disk(out: str) -> int:
    level0 = Path(out) / "0" / "c"
    # chunk files, not the hidden temporary files they are written under before their rename
    return sum(1 for p in level0.rglob("*") if p.is_file() and not p.name.startswith(".")) if level0.exists() else 0


def _resume(capsys, argv: list[str]) -> str:
    code = main([*argv, "--resume"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.err


@pytest.mark.slow
def test_killed_during_sampling_resumes_to_identical_labels(tmp_path, capsys, big_tiff, reference):
    out = str(tmp_path / "labels.zarr")
    argv = _argv(big_tiff, out)
    _kill_when(argv, lambda log: "sampling" in log, log=tmp_path / "log")
    assert not os.path.exists(out)
    _resume(capsys, argv)
    np.testing.assert_array_equal(_labels(out), reference)


@pytest.mark.slow
def test_killed_during_predict_resumes_and_redoes_less(tmp_path, capsys, big_tiff, reference):
    out = str(tmp_path / "labels.zarr")
    argv = _argv(big_tiff, out)
    _kill_when(argv, lambda log: _chunks_on_disk(out) >= 60, log=tmp_path / "log")
    assert main(["info", out]) == 0
    assert "INCOMPLETE" in capsys.readouterr().out
    code = main(argv)  # without --resume an existing output is refused
    assert code == 2 and "--resume to continue it" in capsys.readouterr().err
    log = main([*argv[:-1], "--resume"])  # not quiet: read what it redid
    err = capsys.readouterr().err
    assert log == 0
    kept = int(err.split("resuming: ")[1].split(" of ")[0])
    assert kept >= 60 and f"predicting {256 - kept} of 256 chunks" in err
    assert "fitting k-means" not in err  # the model of the interrupted run is reused
    np.testing.assert_array_equal(_labels(out), reference)
    assert zarr.open_group(out, mode="r").attrs["pixseg"]["complete"] is True


@pytest.mark.slow
def test_killed_during_tiff_write_resumes(tmp_path, capsys, big_tiff, reference):
    out = str(tmp_path / "labels.tif")
    argv = _argv(big_tiff, out)
    _kill_when(
        argv,
        lambda log: "writing pyramidal TIFF" in log and any(os.path.getsize(p) > 0 for p in partial_files(out)),
        log=tmp_path / "log",
        slow_tiles=True,
    )
    assert not os.path.exists(out)
    assert main(["info", out]) == 0 and "INCOMPLETE" in capsys.readouterr().out
    _resume(capsys, argv)
    np.testing.assert_array_equal(_labels(out), reference)
    assert not interrupted_tiff_write(out)


@pytest.mark.slow
def test_half_written_chunk_is_never_taken_as_done(tmp_path, capsys, big_tiff, reference):
    out = str(tmp_path / "labels.zarr")
    argv = _argv(big_tiff, out)
    _kill_when(argv, lambda log: _chunks_on_disk(out) >= 20, log=tmp_path / "log")
    chunk = next(p for p in (Path(out) / "0" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:7])  # as if the kill had cut a write short
    _resume(capsys, argv)
    np.testing.assert_array_equal(_labels(out), reference)


@pytest.mark.slow
def test_injected_write_failure_exits_2_and_resumes(tmp_path, capsys, monkeypatch, big_tiff, reference):
    from pixseg.io import chunk_files

    out = str(tmp_path / "labels.zarr")
    original = chunk_files._replace_file
    calls = {"chunks": 0}

    def failing_write(path, data):
        if os.path.join(out, "0", "c", "") in path:  # a level-0 chunk (the pass writes level 1 too)
            calls["chunks"] += 1
            if calls["chunks"] == 30:
                raise OSError(errno.ENOSPC, "No space left on device")
        return original(path, data)

    monkeypatch.setattr(chunk_files, "_replace_file", failing_write)
    code = main(_argv(big_tiff, out))
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err and "--resume" in err
    assert "Traceback" not in err
    assert zarr.open_group(out, mode="r").attrs["pixseg"]["complete"] is False
    written = _chunks_on_disk(out)
    assert written >= 20
    monkeypatch.setattr(chunk_files, "_replace_file", original)
    _resume(capsys, _argv(big_tiff, out))
    np.testing.assert_array_equal(_labels(out), reference)


@pytest.mark.slow
def test_resume_refuses_other_options_and_finished_output_is_kept(tmp_path, capsys, blob_tiff):
    out = str(tmp_path / "labels.zarr")
    assert main(["segment", blob_tiff, out, "-q"]) == 0
    before = _labels(out)
    code = main(["segment", blob_tiff, out, "-q", "-k", "3", "--resume"])
    assert code == 2 and "started with a different fit" in capsys.readouterr().err
    assert main(["segment", blob_tiff, out, "-q", "--resume"]) == 0  # already complete: nothing redone
    np.testing.assert_array_equal(_labels(out), before)
    code = main(["segment", blob_tiff, out, "-q", "--resume", "--overwrite"])
    assert code == 2 and "exclude each other" in capsys.readouterr().err


@pytest.mark.slow
def test_incomplete_output_is_refused_as_input(tmp_path, capsys, blob_tiff, monkeypatch):
    from pixseg import labelling

    out = str(tmp_path / "labels.zarr")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(labelling, "finalise_label_zarr", crash)
    assert main(["segment", blob_tiff, out, "-q"]) == 130
    code = main(["segment", out, str(tmp_path / "again.zarr"), "-q"])
    assert code == 2 and "is an incomplete pixseg output" in capsys.readouterr().err


@pytest.mark.slow
def test_second_writer_fails_at_once_and_stale_lock_is_taken_over(tmp_path, capsys, blob_tiff):
    out = str(tmp_path / "labels.zarr")
    lock = out + ".lock"
    with output_lock(lock):
        code = main(["segment", blob_tiff, out, "-q"])
        err = capsys.readouterr().err
        assert code == 2 and f"being written by pid {os.getpid()}" in err
    assert not os.path.exists(lock)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    Path(lock).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "started": 0}))
    assert main(["segment", blob_tiff, out, "-q"]) == 0
    assert not os.path.exists(lock)
    Path(lock).write_text(json.dumps({"host": "some-other-host", "pid": 1, "started": 0}))
    with pytest.raises(OutputError, match="being written by pid 1 on 'some-other-host'"):
        with output_lock(lock):
            pass
