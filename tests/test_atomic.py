"""Atomic writes: unique exclusive temporary names, never through a symlink, nothing left behind on failure,
and every writer of pixseg's outputs goes through them."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

from pixseg.demo import write_demo_tiff
from pixseg.errors import OutputError
from pixseg.features import make_feature_spec
from pixseg.io import atomic
from pixseg.io.atomic import atomic_file, partial_files, write_atomic, write_json_atomic
from pixseg.io.label_tiff import interrupted_tiff_write, read_label_tiff_status, write_label_tiff
from pixseg.io.model_file import load_model, save_model
from pixseg.io.side_files import write_legend, write_png, write_statistics
from pixseg.model import SegmentationModel

ROWS = [
    {"label": 1, "pixels": 30, "fraction": 0.75, "area_um2": None, "centroid": {"y": 1.5, "x": 2.5}},
    {"label": 2, "pixels": 10, "fraction": 0.25, "area_um2": 4.0, "centroid": {"y": 0.5, "x": 0.5}},
]


def _model() -> SegmentationModel:
    spec = make_feature_spec("channels", n_channels=3, has_alpha=False, dtype=np.dtype(np.uint8))
    return SegmentationModel(spec, np.eye(3), np.zeros(3), np.ones(3), 0, 100, 0.0, 1)


def _write_model(base: str) -> list[str]:
    save_model(_model(), base + ".json", provenance={"input": "test"})
    return [base + ".json"]


def _write_statistics(base: str) -> list[str]:
    write_statistics(base, ROWS, summary={"pixels": np.int64(40)})
    return [base + ".stats.csv", base + ".stats.json"]


def _write_png(base: str) -> list[str]:
    write_png(base + ".png", np.full((5, 7, 3), 200, np.uint8))
    return [base + ".png"]


def _write_legend(base: str) -> list[str]:
    write_legend(base + ".legend.png", ROWS, [(255, 0, 0, 255), (0, 0, 255, 255)])
    return [base + ".legend.png"]


def _write_label_tiff(base: str) -> list[str]:
    write_label_tiff(base + ".tif", [np.ones((40, 30), np.uint8)], metadata={"n": 1}, pixel_size=None, tile=256)
    return [base + ".tif"]


def _write_demo_tiff(base: str) -> list[str]:
    write_demo_tiff(base + ".demo.tif", size=512)
    return [base + ".demo.tif"]


def _write_json(base: str) -> list[str]:
    write_json_atomic(base + ".state.json", {"count": np.int64(3), "share": np.float32(0.5)})
    return [base + ".state.json"]


WRITERS: dict[str, Callable[[str], list[str]]] = {
    "model": _write_model,
    "statistics": _write_statistics,
    "png": _write_png,
    "legend": _write_legend,
    "label tiff": _write_label_tiff,
    "demo tiff": _write_demo_tiff,
    "json": _write_json,
}


def _check_content(path: str) -> None:
    """``path`` holds a whole document of its kind."""
    if path.endswith(".stats.csv"):
        assert Path(path).read_text(encoding="utf-8").splitlines()[0].startswith("label,pixels,fraction")
    elif path.endswith(".state.json"):
        assert json.loads(Path(path).read_text(encoding="utf-8")) == {"count": 3, "share": 0.5}
    elif path.endswith(".stats.json"):
        assert json.loads(Path(path).read_text(encoding="utf-8"))["pixels"] == 40
    elif path.endswith(".json"):
        assert load_model(path).n_clusters == 3
    elif path.endswith(".png"):
        assert Path(path).read_bytes().startswith(b"\x89PNG")
    elif path.endswith(".demo.tif"):
        with tifffile.TiffFile(path) as tif:
            assert tif.pages.first.shape == (512, 512, 3)
    else:
        assert (read_label_tiff_status(path) or {})["complete"] is True


@pytest.fixture
def created(monkeypatch) -> list[tuple[str, str]]:
    """(destination, temporary name) of every temporary file atomic.py creates."""
    calls: list[tuple[str, str]] = []
    create = atomic._create_temporary

    def spy(path: str) -> tuple[str, int]:
        temporary, descriptor = create(path)
        calls.append((path, temporary))
        return temporary, descriptor

    monkeypatch.setattr(atomic, "_create_temporary", spy)
    return calls


@pytest.mark.parametrize("writer", list(WRITERS), ids=list(WRITERS))
def test_output_writers_write_atomically(tmp_path, created, writer):
    paths = WRITERS[writer](str(tmp_path / "out"))
    assert [destination for destination, _ in created] == paths
    for destination, temporary in created:
        assert os.path.dirname(temporary) == str(tmp_path) and temporary.endswith(".partial")
        assert os.path.basename(temporary).startswith("." + os.path.basename(destination) + ".")
        _check_content(destination)
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths)


@pytest.mark.parametrize("writer", list(WRITERS), ids=list(WRITERS))
def test_symlink_at_the_destination_is_replaced_and_its_target_untouched(tmp_path, writer):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    base = str(tmp_path / "out")
    for path in WRITERS[writer](str(tmp_path / "dry-run")):
        os.symlink(victim, base + path.removeprefix(str(tmp_path / "dry-run")))
    for path in WRITERS[writer](base):
        assert not os.path.islink(path)
        _check_content(path)
    assert victim.read_bytes() == b"precious"


@pytest.mark.parametrize("writer", list(WRITERS), ids=list(WRITERS))
def test_symlink_at_the_old_fixed_temporary_name_is_never_written_through(tmp_path, writer):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    base = str(tmp_path / "out")
    for path in WRITERS[writer](str(tmp_path / "dry-run")):
        os.symlink(victim, base + path.removeprefix(str(tmp_path / "dry-run")) + ".partial")
    for path in WRITERS[writer](base):
        _check_content(path)
    assert victim.read_bytes() == b"precious"


def test_temporary_file_is_created_exclusively_never_through_a_planted_name(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    path = str(tmp_path / "out.json")
    os.symlink(victim, tmp_path / ".out.json.000000000000.partial")  # planted at the first name tried
    (tmp_path / ".out.json.111111111111.partial").write_bytes(b"someone else's")  # and at the second
    names = iter(["000000000000", "111111111111", "222222222222"])
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda nbytes: next(names))
    write_atomic(path, "{}")
    assert Path(path).read_text() == "{}" and victim.read_bytes() == b"precious"
    assert (tmp_path / ".out.json.111111111111.partial").read_bytes() == b"someone else's"
    assert not (tmp_path / ".out.json.222222222222.partial").exists()


def test_concurrent_writers_use_unique_names_and_one_whole_file_wins(tmp_path, created):
    path = str(tmp_path / "same.bin")
    payloads = [bytes([i]) * 1_000_000 for i in range(12)]
    start = threading.Barrier(len(payloads))

    def write(data: bytes) -> None:
        start.wait()
        write_atomic(path, data)

    threads = [threading.Thread(target=write, args=(data,)) for data in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    temporaries = [temporary for _, temporary in created]
    assert len(temporaries) == len(set(temporaries)) == len(payloads)
    assert Path(path).read_bytes() in payloads
    assert os.listdir(tmp_path) == ["same.bin"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_failure_leaves_no_temporary_file_and_the_old_file(tmp_path, error):
    path = tmp_path / "out.csv"
    path.write_text("old")
    with pytest.raises(type(error)):
        with atomic_file(str(path), "w", encoding="utf-8") as handle:
            handle.write("half of the new")
            raise error
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.csv"]


def test_failed_rename_leaves_no_temporary_file(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "inside").write_text("x")
    with pytest.raises(OSError):
        write_atomic(str(tmp_path / "out"), b"data")
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_failed_tiff_write_leaves_no_temporary_file(tmp_path):
    class Unreadable:
        shape, dtype = (600, 600), np.uint8

        def __getitem__(self, index):
            if index[0].start:  # the second band of tiles
                raise OSError("input vanished")
            return np.zeros((256, 600), np.uint8)

    path = str(tmp_path / "labels.tif")
    with pytest.raises(OutputError, match="input vanished"):
        write_label_tiff(path, [Unreadable()], metadata={}, pixel_size=None, tile=256)
    assert os.listdir(tmp_path) == [] and not interrupted_tiff_write(path)


def test_unserialisable_json_writes_nothing(tmp_path):
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        write_json_atomic(str(tmp_path / "x.json"), {"x": object()})
    assert os.listdir(tmp_path) == []


def test_files_get_the_permissions_of_a_plain_open(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    write_atomic(str(tmp_path / "a"), b"a")
    with open(tmp_path / "b", "wb"):
        pass
    assert os.stat(tmp_path / "a").st_mode == os.stat(tmp_path / "b").st_mode == 0o100666 & ~umask


def test_leftover_of_a_killed_tiff_write_is_reported_and_does_not_block_the_next(tmp_path):
    path = str(tmp_path / "labels [1].tif")  # glob characters in the name
    leftover, descriptor = atomic._create_temporary(path)  # as a killed write leaves it
    os.write(descriptor, b"II+\x00half a TIFF")
    os.close(descriptor)
    assert partial_files(path) == [leftover] and interrupted_tiff_write(path)
    assert not interrupted_tiff_write(str(tmp_path / "labels.tif"))
    _write_label_tiff(path.removesuffix(".tif"))
    _check_content(path)
    assert not interrupted_tiff_write(path) and os.listdir(tmp_path) == [os.path.basename(path)]


def test_a_users_file_named_like_an_old_temporary_is_left_alone(tmp_path):
    path = str(tmp_path / "labels.tif")
    Path(path + ".partial").write_bytes(b"a user's file")
    assert not interrupted_tiff_write(path)
    _write_label_tiff(path.removesuffix(".tif"))
    assert Path(path + ".partial").read_bytes() == b"a user's file"
    assert sorted(os.listdir(tmp_path)) == ["labels.tif", "labels.tif.partial"]
