"""Never destroy a user's file, never exit 0 with wrong labels: symlinks at destinations, ``--overwrite``
of things pixseg did not write, paths that escape or collide, a shared ``--workdir``, and ``--resume``
on a zarr input whose pixels changed.

Each CLI test hashes the whole temporary tree (every file's content, every symlink's target) before
and after, and checks that only pixseg's own outputs changed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from conftest import make_blob_image

from pixseg.cli import main
from pixseg.destinations import check_label_name
from pixseg.errors import OutputError
from pixseg.io.batch_state import input_identity
from pixseg.io.label_groups import remove_output
from pixseg.plan import into_input_path

FAST = ["-k", "3", "--sample-size", "2000", "-q"]


def _tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``: a file's SHA-256, a symlink's target, or ``dir``; symlinks are not followed."""
    listing = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            key = os.path.relpath(path, root)
            if os.path.islink(path):
                listing[key] = "-> " + os.readlink(path)
            elif os.path.isdir(path):
                listing[key] = "dir"
            else:
                listing[key] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return listing


def _main(*argv) -> int:
    """``pixseg`` with path arguments."""
    return main([str(a) for a in argv])


def _run(capsys, *argv) -> tuple[int, str]:
    """Run ``pixseg``; check exit 0, or 2 with exactly one ``error:`` line, and never a traceback."""
    code = _main(*argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code in (0, 2), err
    if code == 2:
        lines = err.strip().splitlines()
        assert [line for line in lines if line.startswith("error: ")] == [lines[-1]], err
    return code, err


def _ome_zarr(path: Path, pixels: np.ndarray) -> str:
    """A foreign (not pixseg's) OME-Zarr v3 image of (Y, X, 3) ``pixels``, chunks of 32."""
    group = zarr.open_group(path, mode="w", zarr_format=3)
    chw = np.moveaxis(pixels, -1, 0)
    group.create_array("s0", shape=chw.shape, chunks=(3, 32, 32), dtype=np.uint8)[:] = chw
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    datasets = [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1]}]}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}]}
    return str(path)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A tree of inputs (a tiled TIFF, a foreign OME-Zarr image, a user's file and folder) and one
    pixseg output with its side files and saved model (``out/own.zarr``, ``out/model.json``)."""
    root = tmp_path_factory.mktemp("template")
    inputs = root / "inputs"
    inputs.mkdir()
    tifffile.imwrite(inputs / "in.tif", make_blob_image(64, 80), tile=(32, 32), photometric="rgb")
    _ome_zarr(inputs / "img.zarr", make_blob_image(64, 80, seed=1))
    (inputs / "notes.txt").write_text("a user's notes\n")
    (inputs / "folder" / "sub").mkdir(parents=True)
    (inputs / "folder" / "a.txt").write_text("a")
    (inputs / "folder" / "sub" / "b.txt").write_text("b")
    _ome_zarr(root / "other.zarr", make_blob_image(40, 40, seed=2))
    out = root / "out"
    code = _main("segment", str(inputs / "in.tif"), str(out / "own.zarr"), "--save-model", str(out / "model.json"))
    assert code == 0
    return root


@pytest.fixture
def world(tmp_path, template) -> Path:
    root = tmp_path / "world"
    shutil.copytree(template, root, symlinks=True)
    return root


def _own(key: str) -> bool:
    """Whether a path of the tree (relative) is pixseg's own output from the template."""
    return key.startswith(("out/own.zarr", "out/model.json"))


def _check_only_own_changed(before: dict[str, str], after: dict[str, str], *, inputs: list[str]) -> None:
    for key, digest in before.items():
        if not _own(key):
            assert after.get(key) == digest, f"{key} changed or vanished"
    for key in set(after) - set(before):
        assert not any(key.startswith(i + "/") for i in inputs), f"{key} written inside an input"


# --- 1. symlinks at destinations ------------------------------------------------------------


@pytest.mark.parametrize(
    "destination",
    [
        "new.zarr",
        "new.tif",
        "new.tif.pixseg-work.zarr",
        "new.zarr.stats.csv",
        "new.zarr.stats.json",
        "new.zarr.overlay.png",
        "new.zarr.lock",
        "new-model.json",
    ],
)
@pytest.mark.slow
@pytest.mark.parametrize("target", ["inputs/notes.txt", "inputs/folder", "inputs/in.tif"])
def test_a_symlink_at_any_destination_is_refused_and_its_target_untouched(world, capsys, destination, target):
    os.symlink(world / target, world / "out" / destination)
    output = "new.tif" if destination.startswith("new.tif") else "new.zarr"
    before = _tree(world)
    argv = ["segment", world / "inputs/in.tif", world / "out" / output, "--overwrite", *FAST]
    code, err = _run(capsys, *argv, "--save-model", world / "out" / "new-model.json")
    assert code == 2 and "symlink" in err
    assert _tree(world) == before


def test_remove_output_never_follows_or_removes_a_symlink_nor_a_foreign_tree(world):
    link = world / "link.zarr"
    os.symlink(world / "out" / "own.zarr", link)
    before = _tree(world)
    with pytest.raises(OutputError, match="is a symlink"):
        remove_output(str(link))
    with pytest.raises(OutputError, match="not a pixseg output"):
        remove_output(str(world / "inputs" / "folder"))
    with pytest.raises(OutputError, match="not a pixseg output"):
        remove_output(str(world / "inputs" / "notes.txt"))
    assert _tree(world) == before
    remove_output(str(world / "out" / "own.zarr"))  # pixseg's own: removed
    assert not (world / "out" / "own.zarr").exists() and os.path.islink(link)


# --- 2. --overwrite replaces only pixseg's own outputs -----------------------------------------


@pytest.mark.parametrize(
    ("plant", "message"),
    [
        (lambda d: shutil.copytree(d / "inputs/folder", d / "out/x.zarr"), "a directory pixseg did not write"),
        (lambda d: shutil.copytree(d / "other.zarr", d / "out/x.zarr"), "a zarr store pixseg did not write"),
        (lambda d: shutil.copy(d / "inputs/notes.txt", d / "out/x.zarr"), "a file pixseg did not write"),
        (lambda d: shutil.copy(d / "inputs/in.tif", d / "out/x.tif"), "a file pixseg did not write"),
        (lambda d: (d / "out/x.zarr.stats.json").write_text("{}"), "side file"),
        (lambda d: (d / "out/x.zarr.legend.png").write_bytes(b"\x89PNG\r\n\x1a\nmine"), "side file"),
    ],
)
def test_overwrite_refuses_what_pixseg_did_not_write(world, capsys, plant, message):
    plant(world)
    output = "x.tif" if (world / "out/x.tif").exists() else "x.zarr"
    before = _tree(world)
    code, err = _run(capsys, "segment", world / "inputs/in.tif", world / "out" / output, "--overwrite", *FAST)
    assert code == 2 and message in err and "not a pixseg" in err
    assert _tree(world) == before


@pytest.mark.slow
def test_overwrite_replaces_pixseg_outputs_and_convert_only_its_conversions(world, capsys):
    source, own = world / "inputs/in.tif", world / "out/own.zarr"
    assert _run(capsys, "segment", source, own, "--overwrite", *FAST)[0] == 0
    assert _run(capsys, "segment", source, world / "out/own.tif", *FAST)[0] == 0
    assert _run(capsys, "segment", source, world / "out/own.tif", "--overwrite", *FAST)[0] == 0
    before = _tree(world)
    code, err = _run(capsys, "convert", source, own, "--overwrite", "-q")  # a label output is not a conversion
    assert code == 2 and "is a pixseg label output, not a pixseg converted image" in err
    assert _tree(world) == before
    converted = world / "out/conv.zarr"
    assert _run(capsys, "convert", source, converted, "-q")[0] == 0
    assert _run(capsys, "convert", world / "other.zarr", converted, "--overwrite", "-q")[0] == 0
    assert zarr.open_group(converted, mode="r")["0"].shape == (3, 40, 40)
    code, err = _run(capsys, "segment", source, converted, "--overwrite", *FAST)
    assert code == 2 and "is a pixseg converted image, not a pixseg label output" in err


def test_side_files_left_by_a_removed_pixseg_output_do_not_block_a_new_run(world, capsys):
    own = world / "out/own.zarr"
    shutil.rmtree(own)
    assert (world / "out/own.zarr.stats.json").exists() and (world / "out/own.zarr.overlay.png").exists()
    code, err = _run(capsys, "segment", world / "inputs/in.tif", own, *FAST)
    assert code == 0, err
    assert zarr.open_group(own, mode="r").attrs["pixseg"]["complete"] is True


# --- 3. paths that escape ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "..", "/tmp/x", "", ".hidden", "a/b", "x\n"])
def test_into_input_names_that_escape_are_refused(world, capsys, name):
    before = _tree(world)
    code, err = _run(capsys, "segment", world / "inputs/img.zarr", "--into-input", name, *FAST)
    assert code == 2 and "is not a plain name" in err
    assert _tree(world) == before
    with pytest.raises(OutputError):
        into_input_path(str(world / "inputs/img.zarr"), name)


def test_into_input_writes_only_labels_name_and_its_side_files_beside_the_store(world, capsys, monkeypatch):
    check_label_name("tissue-2.v1")
    image = world / "inputs/img.zarr"
    before = _tree(image)
    monkeypatch.chdir(image)  # "." as the input: side files still land beside the store, not in it
    code, err = _run(capsys, "segment", ".", "--into-input", "tissue", *FAST)
    assert code == 0, err
    changed = {k for k in set(before) | set(_tree(image)) if before.get(k) != _tree(image).get(k)}
    assert changed and all(k == "labels" or k.startswith("labels/") for k in changed)
    assert not any(k.startswith("labels/tissue.") or ".stats." in k for k in _tree(image))
    assert (world / "inputs/img.zarr.tissue.stats.csv").is_file()
    code = _main("info", str(image / "labels/tissue"))
    assert code == 0 and "img.zarr.tissue.stats.json" in capsys.readouterr().out


def test_labels_group_that_is_a_symlink_is_refused(world, capsys):
    image = world / "inputs/img.zarr"
    os.symlink(world / "inputs/folder", image / "labels")
    before = _tree(world)
    code, err = _run(capsys, "segment", image, "--into-input", "x", *FAST)
    assert code == 2 and "is not the image's labels group" in err
    assert _tree(world) == before


def test_batch_output_directory_inside_an_input_store_is_refused(world, capsys):
    image = world / "inputs/img.zarr"
    config = world / "run.yaml"
    config.write_text(f"inputs: ['{image}']\noutput: {{directory: '{image}/results'}}\nclusters: 3\n")
    before = _tree(world)
    code, err = _run(capsys, "run", config, "-q")
    assert code == 2 and "is, or is inside, the input" in err
    assert _tree(world) == before


# --- 4. paths that collide --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "extra", "message"),
    [
        ("new.zarr", ["--save-model", "{out}/new.zarr.stats.json"], "are the same path"),
        ("new.zarr", ["--save-model", "{out}/new.zarr/model.json"], "one lies inside the other"),
        ("new.zarr", ["--workdir", "{out}/new.zarr"], "--workdir"),
        ("new.zarr", ["--workdir", "{out}/new.zarr/work"], "--workdir"),
        ("new.zarr", ["--workdir", "{inputs}/img.zarr/work"], "--workdir"),
        ("own.zarr", ["--mask", "{out}/own.zarr/mask.tif"], "--mask"),
    ],
)
def test_destinations_that_collide_are_refused_before_any_work(world, capsys, output, extra, message):
    out, inputs = world / "out", world / "inputs"
    tifffile.imwrite(out / "own.zarr" / "mask.tif", np.ones((64, 80), np.uint8))
    argv = [a.format(out=out, inputs=inputs) for a in extra]
    before = _tree(world)
    code, err = _run(capsys, "segment", inputs / "img.zarr", out / output, "--overwrite", *argv, *FAST)
    assert code == 2 and message in err, err
    assert _tree(world) == before  # nothing made, not even a directory


def test_an_applied_model_inside_the_output_is_never_deleted_with_it(world, capsys):
    model = world / "out/own.zarr/model.json"
    shutil.copy(world / "out/model.json", model)
    before = _tree(world)
    code, err = _run(capsys, "apply", model, world / "inputs/in.tif", world / "out/own.zarr", "--overwrite", "-q")
    assert code == 2 and "model file" in err
    assert _tree(world) == before


@pytest.mark.slow
def test_a_finished_resume_still_saves_the_model(world, capsys):
    model, output = world / "out/new-model.json", world / "out/new.zarr"
    assert _run(capsys, "segment", world / "inputs/in.tif", output, *FAST)[0] == 0
    code, err = _run(capsys, "segment", world / "inputs/in.tif", output, "--resume", "--save-model", model, *FAST)
    assert code == 0 and model.is_file(), err


# --- 6. a shared --workdir --------------------------------------------------------------------

#: Runs the CLI with conversion forced for small images; SLOW_CONVERT / SLOW_LABELS delay the
#: conversion and the label pass (seconds), so that two processes overlap.
_HARNESS = """
import os, sys, time
from pixseg import convert, layout, runner
layout.CONVERT_ABOVE_PIXELS = 10_000
layout.STRIP_CONVERT_ABOVE_PIXELS = 0
store, write = convert._store_in_bands, runner.write_labels
def slow_store(*args, **kwargs):
    time.sleep(float(os.environ.get("SLOW_CONVERT", "0")))
    return store(*args, **kwargs)
def slow_write(*args, **kwargs):
    time.sleep(float(os.environ.get("SLOW_LABELS", "0")))
    return write(*args, **kwargs)
convert._store_in_bands, runner.write_labels = slow_store, slow_write
from pixseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _start(argv: list, **delays: float) -> subprocess.Popen:
    env = {**os.environ, **{name: str(value) for name, value in delays.items()}}
    command = [sys.executable, "-c", _HARNESS, *map(str, argv)]
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)


def _striped(path: Path, seed: int) -> Path:
    tifffile.imwrite(path, make_blob_image(160, 500, seed=seed), rowsperstrip=8, photometric="rgb")
    return path


def _labels(path: Path) -> np.ndarray:
    return zarr.open_group(path, mode="r")["0"][:]


@pytest.mark.slow
def test_two_jobs_converting_different_inputs_into_one_workdir(tmp_path, capsys):
    first, second = _striped(tmp_path / "a.tif", 1), _striped(tmp_path / "b.tif", 2)
    workdir = tmp_path / "scratch"
    for source in (first, second):  # clean runs, read directly
        assert _main("segment", source, tmp_path / "clean" / f"{source.stem}.zarr", *FAST) == 0
    # the same output name in two folders: before, both jobs used workdir/labels.zarr.pixseg-input.zarr
    jobs = [
        _start(["segment", source, tmp_path / source.stem / "labels.zarr", "--workdir", workdir, *FAST], SLOW_CONVERT=1)
        for source in (first, second)
    ]
    for job in jobs:
        _, err = job.communicate(timeout=120)
        assert job.returncode == 0, err
    for source in (first, second):
        np.testing.assert_array_equal(
            _labels(tmp_path / source.stem / "labels.zarr"), _labels(tmp_path / "clean" / f"{source.stem}.zarr")
        )
    assert os.listdir(workdir) == []  # both copies removed by their last user


@pytest.mark.slow
def test_a_copy_in_use_by_another_job_is_not_removed(tmp_path, capsys):
    source, workdir = _striped(tmp_path / "a.tif", 3), tmp_path / "scratch"
    assert _main("segment", source, tmp_path / "clean.zarr", *FAST) == 0
    quick = _start(["segment", source, tmp_path / "quick.zarr", "--workdir", workdir, *FAST], SLOW_CONVERT=1)
    slow = _start(["segment", source, tmp_path / "slow.zarr", "--workdir", workdir, *FAST], SLOW_LABELS=4)
    for job in (quick, slow):
        _, err = job.communicate(timeout=120)
        assert job.returncode == 0, err
    for name in ("quick.zarr", "slow.zarr"):
        np.testing.assert_array_equal(_labels(tmp_path / name), _labels(tmp_path / "clean.zarr"))
    assert os.listdir(workdir) == []


@pytest.mark.slow
def test_a_stale_lease_of_a_dead_process_is_ignored(tmp_path, capsys, monkeypatch):
    from pixseg import layout

    monkeypatch.setattr(layout, "CONVERT_ABOVE_PIXELS", 10_000)
    monkeypatch.setattr(layout, "STRIP_CONVERT_ABOVE_PIXELS", 0)
    source, workdir = _striped(tmp_path / "a.tif", 4), tmp_path / "scratch"
    argv = ["segment", source, tmp_path / "kept.zarr", "--workdir", workdir, "--keep-workdir", *FAST]
    assert _run(capsys, *argv)[0] == 0
    (copy,) = workdir.glob("a.tif.*.pixseg-input.zarr")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    users = Path(str(copy) + ".users")
    (users / "dead.json").write_text(f'{{"host": "{os.uname().nodename}", "pid": {int(dead.stdout)}}}')
    assert _run(capsys, "segment", source, tmp_path / "again.zarr", "--workdir", workdir, *FAST)[0] == 0
    assert not copy.exists() and not users.exists()


# --- 7. --resume on a zarr input whose pixels changed ----------------------------------------


def _interrupt_finalise(monkeypatch) -> None:
    from pixseg import labelling

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(labelling, "finalise_label_zarr", interrupt)


def test_resume_refuses_a_zarr_input_whose_chunk_changed_under_the_same_metadata(world, capsys, monkeypatch):
    image, out = world / "inputs/img.zarr", world / "out/new.zarr"
    _interrupt_finalise(monkeypatch)
    assert _main("segment", image, out, *FAST) == 130
    monkeypatch.undo()
    capsys.readouterr()
    metadata = (image / "zarr.json").stat().st_mtime_ns, (image / "s0" / "zarr.json").stat().st_mtime_ns
    zarr.open_group(image, mode="r+")["s0"][:, :32, :32] = 255 - zarr.open_group(image, mode="r")["s0"][:, :32, :32]
    assert ((image / "zarr.json").stat().st_mtime_ns, (image / "s0" / "zarr.json").stat().st_mtime_ns) == metadata
    code, err = _run(capsys, "segment", image, out, "--resume", *FAST)
    assert code == 2 and "started with a different input" in err


@pytest.mark.slow
def test_resume_into_the_input_is_not_confused_by_its_own_labels(world, capsys, monkeypatch):
    image = world / "inputs/img.zarr"
    assert _main("segment", str(image), world / "clean.zarr", *FAST) == 0
    _interrupt_finalise(monkeypatch)
    assert _main("segment", image, "--into-input", "x", *FAST) == 130
    monkeypatch.undo()
    capsys.readouterr()
    code, err = _run(capsys, "segment", image, "--into-input", "x", "--resume", *FAST)
    assert code == 0, err
    np.testing.assert_array_equal(_labels(image / "labels/x"), _labels(world / "clean.zarr"))


def test_input_identity_sees_every_chunk_but_not_the_labels(tmp_path):
    image = Path(_ome_zarr(tmp_path / "i.zarr", make_blob_image(64, 64)))
    first = input_identity(str(image))
    (image / "labels").mkdir()
    (image / "labels" / "zarr.json").write_text("{}")
    assert input_identity(str(image)) == first
    chunk = next(p for p in (image / "s0").rglob("*") if p.is_file() and p.name != "zarr.json")
    os.utime(chunk, ns=(chunk.stat().st_atime_ns, chunk.stat().st_mtime_ns + 1))
    assert input_identity(str(image))["listing"] != first["listing"]


# --- 8. every subcommand against hostile destinations ------------------------------------------

#: Destinations: symlinks to an input, a user file and a user folder, a foreign folder and a
#: foreign OME-Zarr, the input itself, and places inside the input and inside an output.
KINDS = ["link-input", "link-file", "link-dir", "foreign-dir", "foreign-zarr", "input", "inside-input", "inside-output"]


def _destination(world: Path, kind: str, suffix: str) -> Path:
    place = world / f"dest{suffix}"
    if kind == "link-input":
        os.symlink(world / "inputs/img.zarr", place)
    elif kind == "link-file":
        os.symlink(world / "inputs/notes.txt", place)
    elif kind == "link-dir":
        os.symlink(world / "inputs/folder", place)
    elif kind == "foreign-dir":
        shutil.copytree(world / "inputs/folder", place)
    elif kind == "foreign-zarr":
        shutil.copytree(world / "other.zarr", place)
    elif kind == "input":
        place = world / "inputs/img.zarr"
    elif kind == "inside-input":
        place = world / "inputs/img.zarr" / f"inner{suffix}"
    else:
        place = world / "out/own.zarr" / f"inner{suffix}"
    return place


COMMANDS = {
    "segment": lambda w, d: ["segment", w / "inputs/img.zarr", d(".zarr"), "--overwrite", *FAST],
    "segment-tiff": lambda w, d: ["segment", w / "inputs/img.zarr", d(".tif"), "--overwrite", *FAST],
    "segment-model": lambda w, d: [
        *("segment", w / "inputs/img.zarr", w / "out/new.zarr", "--save-model", d(".json"), "--overwrite", *FAST)
    ],
    "segment-workdir": lambda w, d: [
        *("segment", w / "inputs/img.zarr", w / "out/new.zarr", "--workdir", d(""), "--overwrite", *FAST)
    ],
    "apply": lambda w, d: ["apply", w / "out/model.json", w / "inputs/img.zarr", d(".zarr"), "--overwrite", "-q"],
    "convert": lambda w, d: ["convert", w / "inputs/img.zarr", d(".zarr"), "--overwrite", "-q"],
    "run": lambda w, d: ["run", _config(w, d("")), "-q"],
    "info": lambda w, d: ["info", d(".zarr")],
}


def _config(world: Path, directory: Path) -> Path:
    config = world / "run.yaml"
    config.write_text(
        f"inputs: ['{world / 'inputs/img.zarr'}']\noutput: {{directory: '{directory}', overwrite: true}}\n"
        "clusters: 3\nsampling: {size: 2000}\n"
    )
    return config


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_leaves_what_is_not_its_own_alone(world, capsys, command, kind):
    argv = COMMANDS[command](world, lambda suffix: _destination(world, kind, suffix))
    before = _tree(world)
    code, err = _run(capsys, *argv)
    after = _tree(world)
    if code == 2:
        assert after == before, err
    _check_only_own_changed(before, after, inputs=["inputs/img.zarr", "inputs/in.tif"])
    if code == 0 and command in ("segment", "apply"):  # a run that went ahead wrote a complete output
        destination = argv[2] if command == "segment" else argv[3]
        assert zarr.open_group(destination, mode="r").attrs["pixseg"]["complete"] is True
