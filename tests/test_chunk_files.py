"""Label chunks written straight to their files: byte-identical to zarr's own, and zarr reads them back."""

from __future__ import annotations

import os
from pathlib import Path

import dask
import numpy as np
import pytest
import zarr
from numcodecs import Zlib
from pixseg.io.chunk_files import read_chunk, read_region, write_chunk
from pixseg.io.label_zarr import create_label_zarr, reduce_level

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


@pytest.mark.parametrize("ngff", ["0.5", "0.4"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_chunk_files_equal_zarrs_own_and_read_back(tmp_path, ngff, dtype):
    labels = np.random.default_rng(0).integers(0, 300 if dtype == np.uint16 else 9, SHAPE).astype(dtype)
    ours, theirs = (
        _label_array(tmp_path / "ours.zarr", dtype, ngff),
        _label_array(tmp_path / "theirs.zarr", dtype, ngff),
    )
    for top, left, height, width in _blocks(SHAPE, CHUNKS):
        block = labels[top : top + height, left : left + width]
        write_chunk(ours, block, (top, left))
        theirs[top : top + height, left : left + width] = block
    written, expected = _chunk_files(tmp_path / "ours.zarr"), _chunk_files(tmp_path / "theirs.zarr")
    assert len(expected) == 6 and written == expected  # edge chunks padded as zarr pads them
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "ours.zarr"), mode="r")["0"][:], labels)


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
