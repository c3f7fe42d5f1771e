"""The ``pixseg`` command in-process: exit codes, one-line errors, info, inputs never modified."""

from __future__ import annotations

import gc
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from pixseg import labelling
from pixseg.cli import main


def _digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_user_error(code, err, message):
    """Exit 2, one ``error:`` line (last, after any progress log lines), no traceback."""
    assert code == 2
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert message in errors[0], errors[0]
    assert "Traceback" not in err


@pytest.mark.slow
def test_segment_apply_info_round_trip(tmp_path, capsys, blob_tiff):
    before = _digest(blob_tiff)
    out, model = tmp_path / "l.zarr", tmp_path / "m.json"
    code, stdout, _ = _run(capsys, "segment", blob_tiff, out, "-k", "3", "--save-model", model, "--quiet")
    assert code == 0 and f"wrote {out}: 150x230 labels 1..3" in stdout
    assert json.loads(model.read_text())["format"] == "pixseg-model"
    code, stdout, _ = _run(capsys, "apply", model, blob_tiff, tmp_path / "a.tif", "-q")
    assert code == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "a.tif"), zarr.open_group(out, mode="r")["0"][:])
    code, stdout, _ = _run(capsys, "info", out)
    assert code == 0 and "complete: complete" in stdout and "shape: 150x230" in stdout
    code, stdout, _ = _run(capsys, "info", blob_tiff)
    assert code == 0 and "shape: 150x230x3" in stdout and "native tiles 64x64" in stdout
    assert _digest(blob_tiff) == before


@pytest.mark.slow
def test_interrupted_output_is_reported_incomplete(tmp_path, capsys, blob_tiff, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(labelling, "finalise_label_zarr", crash)
    out = tmp_path / "l.zarr"
    code, _, err = _run(capsys, "segment", blob_tiff, out, "--chunk", "64", "-q")
    assert code == 130 and "interrupted" in err
    code, stdout, _ = _run(capsys, "info", out)
    assert code == 0 and "INCOMPLETE" in stdout
    assert "chunks_written: 12" in stdout and "chunks_total: 12" in stdout
    assert "ome" not in zarr.open_group(out, mode="r").attrs


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["segment", "{tmp}/missing.tif", "{tmp}/o.zarr"], "does not exist"),
        (["segment", "{tiff}", "{tmp}/o.zarr", "-k", "1"], "--clusters must be between 2 and"),
        (["segment", "{tiff}", "{tmp}/o.png"], "unknown suffix '.png'"),
        (["segment", "{tiff}", "{tiff}"], "is, or is inside, the input"),
        (["segment", "{tiff}", "{tmp}/o.zarr", "-k", "abc"], "--clusters must be an integer, auto or auto:LO-HI"),
        (["segment", "{tiff}", "{tmp}/o.zarr", "--features", "rgb"], "--features must be one of channels, grey, lab"),
        (["segment", "{tiff}", "{tmp}/o.zarr", "--sample-size", "0"], "--sample-size must be between 1 and"),
        (["segment", "{tiff}", "{tmp}/o.zarr", "--restarts", "0"], "--restarts must be between 1 and 100, got 0"),
        (["segment", "{tiff}", "{tmp}/o.zarr", "--seed", "-1"], "--seed must be between 0 and"),
        (["segment", "{tiff}", "{tmp}/o.zarr", "--level", "3"], "--level 3 does not exist"),
        (
            ["segment", "{tiff}", "{tmp}/o.zarr", "--scheduler", "nowhere"],
            "--scheduler must be one of threads, local, slurm, pbs or an address",
        ),
        (["segment", "{tiff}", "{tiff}/o.zarr"], "is, or is inside, the input"),
        (["segment", "{tiff}", "{tmp}/o.zarr", "--save-model", "{tmp}/m.txt"], "model files end in .json"),
        (["apply", "{tmp}/none.json", "{tiff}", "{tmp}/o.zarr"], "does not exist"),
        (["info", "{tmp}/nothing.zarr"], "does not exist"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, blob_tiff, args, message):
    before = _digest(blob_tiff)
    argv = [a.format(tmp=tmp_path, tiff=blob_tiff) for a in args]
    code, _, err = _run(capsys, *argv)
    _assert_user_error(code, err, message)
    assert _digest(blob_tiff) == before
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.slow
def test_existing_output_needs_overwrite(tmp_path, capsys, blob_tiff):
    out = tmp_path / "l.zarr"
    assert _run(capsys, "segment", blob_tiff, out, "-q")[0] == 0
    code, _, err = _run(capsys, "segment", blob_tiff, out, "-q")
    _assert_user_error(code, err, "already exists; pass --overwrite")
    assert _run(capsys, "segment", blob_tiff, out, "-q", "-k", "3", "--overwrite")[0] == 0
    assert zarr.open_group(out, mode="r")["0"][:].max() == 3


def test_constant_image_with_k_above_one(tmp_path, capsys):
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, np.full((40, 40, 3), 77, np.uint8), photometric="rgb")
    code, _, err = _run(capsys, "segment", path, tmp_path / "o.zarr", "-k", "2")
    _assert_user_error(code, err, "--clusters 2 is more than the 1 distinct feature vector(s)")


def test_output_under_a_file_and_unwritable_directory(tmp_path, capsys, blob_tiff):
    (tmp_path / "afile").write_text("x")
    code, _, err = _run(capsys, "segment", blob_tiff, tmp_path / "afile" / "o.zarr")
    _assert_user_error(code, err, "is a file, not a directory")


@pytest.mark.slow
def test_model_mismatch_and_newer_schema(tmp_path, capsys, blob_tiff):
    model = tmp_path / "m.json"
    assert _run(capsys, "segment", blob_tiff, tmp_path / "l.zarr", "--save-model", model, "-q")[0] == 0
    grey = tmp_path / "grey.tif"
    tifffile.imwrite(grey, np.zeros((30, 30), np.uint8))
    code, _, err = _run(capsys, "apply", model, grey, tmp_path / "g.zarr")
    _assert_user_error(code, err, "fitted on 3 colour channel(s); input")
    document = json.loads(model.read_text())
    document["schema_version"] = 99
    model.write_text(json.dumps(document))
    code, _, err = _run(capsys, "apply", model, blob_tiff, tmp_path / "n.zarr")
    _assert_user_error(code, err, "schema_version 99")
    model.write_text("{not json")
    code, _, err = _run(capsys, "apply", model, blob_tiff, tmp_path / "n.zarr")
    _assert_user_error(code, err, "not readable JSON")


@pytest.mark.slow
def test_console_script_runs_as_a_process(tmp_path, blob_tiff):
    done = subprocess.run(
        [sys.executable, "-m", "pixseg.cli", "segment", blob_tiff, str(tmp_path / "bad.txt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: ") and "Traceback" not in done.stderr


def test_console_script_is_the_entry_point_and_exits_with_mains_status(monkeypatch):
    from importlib.metadata import entry_points

    import pixseg.cli

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "pixseg"]
    assert script.value == "pixseg.cli:console_main"
    monkeypatch.setattr(pixseg.cli, "main", lambda: 3)
    try:
        with pytest.raises(SystemExit) as exited:
            pixseg.cli.console_main()
        assert exited.value.code == 3
    finally:
        gc.unfreeze()


@pytest.mark.slow
def test_importing_and_calling_the_library_leaves_the_host_process_alone(tmp_path, blob_tiff):
    """No gc.freeze, no malloc tuning, no handlers: only the console script tunes its own process."""
    code = f"""
import gc, signal, sys
handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
import pixseg
result = pixseg.segment({blob_tiff!r}, {str(tmp_path / "l.zarr")!r}, clusters=3, sample_size=2000)
assert result.model.n_clusters == 3
assert gc.get_freeze_count() == 0, gc.get_freeze_count()
assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_help_lists_grouped_options_with_choices_and_examples_without_importing_dask():
    code = """
import contextlib, io, sys
from pixseg.cli import main
for argv in ([], ["segment"]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([*argv, "--help"])
    print(out.getvalue())
print("DASK" if any(m.split(".")[0] in ("dask", "zarr", "sklearn") for m in sys.modules) else "LIGHT")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.rstrip().endswith("LIGHT")
    assert "examples:" in text and "pixseg segment slide.svs" in text
    for group in ("input:", "fit:", "output:", "compute:"):
        assert f"\n{group}\n" in text, group
    assert "one of zstd, zlib (default zstd)" in text and "--clusters K|auto[:LO-HI], -k K|auto[:LO-HI]" in text


@pytest.mark.slow
def test_demo_builds_and_segments_its_own_input(tmp_path, capsys):
    code, stdout, _ = _run(capsys, "demo", tmp_path / "demo", "--size", "1100", "-k", "4", "-q")
    assert code == 0 and "1100x1100 labels 1..4" in stdout
    with tifffile.TiffFile(tmp_path / "demo" / "demo-slide-1100.tif") as tif:
        assert tif.pages.first.is_tiled and tif.pages.first.shape == (1100, 1100, 3)
    labels = zarr.open_group(tmp_path / "demo" / "demo-labels.zarr", mode="r")["0"][:]
    assert labels.shape == (1100, 1100) and set(np.unique(labels)) == {0, 1, 2, 3, 4}  # 0: glass


def test_corrupt_tile_exits_2_and_leaves_no_complete_output(tmp_path, capsys, blob_image):
    path = tmp_path / "corrupt.tif"
    tifffile.imwrite(path, blob_image, tile=(64, 64), photometric="rgb", compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages.first.dataoffsets[4]
    data = bytearray(path.read_bytes())
    data[offset : offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    code, _, err = _run(capsys, "segment", path, tmp_path / "o.tif", "--chunk", "64", "-q")
    _assert_user_error(code, err, "cannot decode input")
    assert not (tmp_path / "o.tif").exists()
