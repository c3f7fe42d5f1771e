"""Label chunks written straight to their files: byte-identical to zarr's own (the canaries), read back and
verified (a damaged chunk reads as missing, a bug in our code propagates)."""

from __future__ import annotations

import os
from pathlib import Path

import dask
import numpy as np
import pytest
import zarr
from numcodecs import Zlib, Zstd

from pixseg.io import chunk_files
from pixseg.io.chunk_files import chunk_exists, chunk_path, read_chunk, read_region, read_stored_chunk, write_chunk
from pixseg.io.label_zarr import chunk_written, count_stored_chunk, create_label_zarr, reduce_level

SHAPE, CHUNKS = (100, 150), (64, 64)


def _blocks(shape, chunks):
    for top in range(0, shape[0], chunks[0]):
        for left in range(0, shape[1], chunks[1]):
            yield top, left, min(chunks[0], shape[0] - top), min(chunks[1], shape[1] - left)


def _chunk_files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and path.name not in ("zarr.json", ".zarray", ".zattrs", ".zgroup")
    }


def _label_array(path: Path, dtype, ngff: str) -> zarr.Array:
    return create_label_zarr(str(path), shapes=[SHAPE], chunks=[CHUNKS], dtype=np.dtype(dtype), ngff=ngff, attrs={})[0]


def _canary_message(detail: str) -> str:
    return (
        f"CANARY: zarr {zarr.__version__} {detail}. A zarr upgrade changed the on-disk chunk files that "
        "pixseg.io.chunk_files writes by hand: update chunk_files to write what zarr writes, or disable its "
        "fast path by ending chunk_files.ZARR_VERIFIED below this zarr version."
    )


@pytest.fixture
def fast_path(monkeypatch) -> list[str]:
    """Force chunk_files' own encoder whatever the installed zarr, and record the chunk files it writes."""
    installed = chunk_files._release(zarr.__version__)
    monkeypatch.setattr(chunk_files, "ZARR_VERIFIED", (installed, (*installed[:-1], installed[-1] + 1)))
    written: list[str] = []
    replace = chunk_files._replace_file

    def recording(path: str, data: bytes) -> None:
        written.append(path)
        replace(path, data)

    monkeypatch.setattr(chunk_files, "_replace_file", recording)
    return written


@pytest.mark.parametrize("ngff", ["0.5", "0.4"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_canary_chunk_files_are_byte_identical_to_zarrs(tmp_path, fast_path, ngff, dtype):
    labels = np.random.default_rng(0).integers(0, 300 if dtype == np.uint16 else 9, SHAPE).astype(dtype)
    ours, theirs = (
        _label_array(tmp_path / "ours.zarr", dtype, ngff),
        _label_array(tmp_path / "theirs.zarr", dtype, ngff),
    )
    for top, left, height, width in _blocks(SHAPE, CHUNKS):  # 2 x 3 chunks, the last row and column at the edges
        block = labels[top : top + height, left : left + width]
        write_chunk(ours, block, (top, left))
        theirs[top : top + height, left : left + width] = block
        expected_path = chunk_path(theirs, (top // CHUNKS[0], left // CHUNKS[1]))
        assert expected_path is not None and os.path.isfile(expected_path), _canary_message(
            f"did not store chunk ({top}, {left}) of a {ngff} array at {expected_path!r}, where chunk_files looks"
        )
        assert fast_path[-1] == chunk_path(ours, (top // CHUNKS[0], left // CHUNKS[1]))
    written, expected = _chunk_files(tmp_path / "ours.zarr"), _chunk_files(tmp_path / "theirs.zarr")
    assert len(fast_path) == len(expected) == 6
    assert sorted(written) == sorted(expected), _canary_message(f"stores the chunks of a {ngff} array at other paths")
    for key, data in expected.items():
        assert written[key] == data, _canary_message(f"encodes chunk {key!r} of a {ngff} {np.dtype(dtype)} array")
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "ours.zarr"), mode="r")["0"][:], labels)


@pytest.mark.parametrize(
    ("version", "verified"),
    [("3.0.7", False), ("3.0.8", True), ("3.1.6", True), ("3.1.7.dev3+g1234", True), ("3.2.0", False), ("4.0", False)],
)
def test_zarr_version_range_of_the_fast_path(version, verified):
    assert chunk_files.zarr_verified(version) is verified


def test_installed_zarr_is_in_the_verified_range():
    assert chunk_files.zarr_verified(zarr.__version__), (
        f"zarr {zarr.__version__} is outside chunk_files.ZARR_VERIFIED {chunk_files.ZARR_VERIFIED!r}: label chunks "
        "are written through zarr (slow). Run the canary tests with the fast path forced, then move the range."
    )


@pytest.mark.parametrize("ngff", ["0.5", "0.4"])
def test_unverified_zarr_writes_and_reads_through_zarr(tmp_path, monkeypatch, ngff):
    monkeypatch.setattr(zarr, "__version__", "3.2.0")
    monkeypatch.setattr(chunk_files, "_replace_file", None)  # called at all: a TypeError
    labels = np.random.default_rng(3).integers(0, 9, SHAPE).astype(np.uint8)
    array = _label_array(tmp_path / "l.zarr", np.uint8, ngff)
    for top, left, height, width in _blocks(SHAPE, CHUNKS):
        write_chunk(array, labels[top : top + height, left : left + width], (top, left))
    np.testing.assert_array_equal(array[:], labels)
    np.testing.assert_array_equal(read_region(array, (0, 100), (0, 150)), labels)
    np.testing.assert_array_equal(read_stored_chunk(array, (1, 2)), labels[64:, 128:])


def test_other_layouts_are_written_through_zarr(tmp_path):
    labels = np.arange(SHAPE[0] * SHAPE[1], dtype=np.uint16).reshape(SHAPE)
    targets = [
        zarr.create_array(zarr.storage.MemoryStore(), shape=SHAPE, chunks=CHUNKS, dtype=np.uint16),
        zarr.create_array(
            str(tmp_path / "zlib.zarr"), shape=SHAPE, chunks=CHUNKS, dtype=np.uint16, compressors=Zlib(), zarr_format=2
        ),
        zarr.create_array(str(tmp_path / "raw.zarr"), shape=SHAPE, chunks=CHUNKS, dtype=np.uint16, compressors=None),
    ]
    for target in targets:
        for top, left, height, width in _blocks(SHAPE, CHUNKS):
            write_chunk(target, labels[top : top + height, left : left + width], (top, left))
        np.testing.assert_array_equal(target[:], labels)


def test_write_chunk_refuses_a_block_that_is_not_one_chunk(tmp_path):
    array = _label_array(tmp_path / "l.zarr", np.uint8, "0.5")
    with pytest.raises(ValueError, match="not on a chunk corner"):
        write_chunk(array, np.zeros(CHUNKS, np.uint8), (1, 0))
    with pytest.raises(ValueError, match="is not the"):
        write_chunk(array, np.zeros((64, 32), np.uint8), (0, 0))
    with pytest.raises(ValueError, match="is not the"):
        write_chunk(array, np.zeros(CHUNKS, np.uint16), (0, 0))
    assert not [name for name in os.listdir(tmp_path / "l.zarr" / "0") if name != "zarr.json"]


@pytest.mark.parametrize("ngff", ["0.5", "0.4"])
def test_read_chunk_and_region_equal_zarrs_reads(tmp_path, ngff):
    labels = np.random.default_rng(1).integers(1, 9, SHAPE).astype(np.uint8)
    array = _label_array(tmp_path / "l.zarr", np.uint8, ngff)
    array[:, :64] = labels[:, :64]  # the chunks from column 64 on are never written: the fill value
    np.testing.assert_array_equal(read_chunk(array, (1, 2)), np.zeros((36, 22), np.uint8))
    np.testing.assert_array_equal(read_chunk(array, (1, 0)), labels[64:, :64])
    np.testing.assert_array_equal(read_region(array, (0, 100), (0, 150)), array[:])
    np.testing.assert_array_equal(read_region(array, (64, 100), (0, 128)), array[64:, :128])
    with pytest.raises(ValueError, match="start on a chunk corner"):
        read_region(array, (1, 100), (0, 150))
    with pytest.raises(ValueError, match="end on a chunk corner"):
        read_region(array, (0, 99), (0, 150))


@pytest.mark.parametrize(
    ("shape", "above_chunks", "below_chunks"),
    [((100, 150), (32, 32), (32, 32)), ((101, 151), (16, 32), (32, 32)), ((300, 77), (40, 40), (20, 20))],
)
def test_reduce_level_takes_every_second_pixel(tmp_path, shape, above_chunks, below_chunks):
    labels = np.random.default_rng(2).integers(1, 9, shape).astype(np.uint8)
    below_shape = ((shape[0] + 1) // 2, (shape[1] + 1) // 2)
    above, below = create_label_zarr(
        str(tmp_path / "p.zarr"),
        shapes=[shape, below_shape],
        chunks=[above_chunks, below_chunks],
        dtype=np.dtype(np.uint8),
        ngff="0.5",
        attrs={},
    )
    above[:] = labels
    dask.compute(*reduce_level(above, below), scheduler="threads")
    np.testing.assert_array_equal(below[:], labels[::2, ::2])


@pytest.fixture(params=["fast", "through zarr"])
def stored(request, tmp_path, monkeypatch) -> tuple[zarr.Array, np.ndarray]:
    """A v3 label array with chunks (0, 0) and (1, 2) (an edge chunk) stored, read by chunk_files or by zarr."""
    if request.param == "through zarr":
        monkeypatch.setattr(zarr, "__version__", "3.2.0")
    labels = np.random.default_rng(4).integers(1, 300, SHAPE).astype(np.uint16)
    array = _label_array(tmp_path / "l.zarr", np.uint16, "0.5")
    write_chunk(array, labels[:64, :64], (0, 0))
    write_chunk(array, labels[64:, 128:], (64, 128))
    return array, labels


def test_stored_chunks_exist_and_verify(stored):
    array, labels = stored
    assert chunk_exists(array, (0, 0)) and chunk_exists(array, (1, 2)) and not chunk_exists(array, (0, 1))
    assert chunk_written(str(array.store.root), 0, array, (1, 2))
    np.testing.assert_array_equal(read_stored_chunk(array, (1, 2)), labels[64:, 128:])
    assert read_stored_chunk(array, (0, 1)) is None  # missing: write it
    expected = np.bincount(labels[:64, :64].ravel(), minlength=300)
    np.testing.assert_array_equal(count_stored_chunk(array, (0, 0), 300), expected)
    assert count_stored_chunk(array, (0, 1), 300) is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:7],  # a write cut short
        lambda data: data[: len(data) // 2],
        lambda data: b"",
        lambda data: Zstd(level=1).encode(np.zeros(100, np.uint16)),  # a whole frame of the wrong size
        lambda data: Zstd(level=1).encode(np.zeros(64 * 64 * 2 - 1, np.uint8)),  # not a whole number of items
    ],
    ids=["truncated", "half", "empty", "too small", "odd bytes"],
)
def test_damaged_chunk_verifies_as_not_written(stored, damage):
    array, _ = stored
    path = Path(chunk_path(array, (0, 0)) or "")
    path.write_bytes(damage(path.read_bytes()))
    assert chunk_exists(array, (0, 0))
    assert read_stored_chunk(array, (0, 0)) is None and count_stored_chunk(array, (0, 0), 300) is None
    with pytest.raises(chunk_files.DAMAGED_CHUNK_ERRORS):
        read_chunk(array, (0, 0))  # the pyramid never reads a damaged level as data


def test_a_bug_in_our_code_is_not_taken_for_a_damaged_chunk(stored, monkeypatch):
    array, _ = stored

    def bug(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(chunk_files, "_decode", bug)
    monkeypatch.setattr(zarr.Array, "__getitem__", bug)
    with pytest.raises(TypeError, match="a bug"):
        count_stored_chunk(array, (0, 0), 300)


def test_chunk_paths_and_existence_need_a_local_directory_store():
    array = zarr.create_array(zarr.storage.MemoryStore(), shape=SHAPE, chunks=CHUNKS, dtype=np.uint8)
    assert chunk_path(array, (0, 0)) is None
    with pytest.raises(ValueError, match="not in a local directory store"):
        chunk_exists(array, (0, 0))
