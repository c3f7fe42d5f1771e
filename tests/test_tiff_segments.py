"""The tile-by-tile TIFF reader against tifffile's own whole-image decode."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tifffile

from pixseg.io.readers import open_image
from pixseg.io.tiff_segments import TiffSegmentReader, segment_readable

LAYOUTS = {
    "tiled zlib rgb": dict(tile=(32, 48), compression="zlib", photometric="rgb"),
    "tiled zstd predictor": dict(tile=(16, 16), compression="zstd", predictor=True, photometric="rgb"),
    "tiled jpeg": dict(tile=(32, 32), compression="jpeg", photometric="rgb"),
    "striped odd rows": dict(rowsperstrip=7, compression="zlib", photometric="rgb"),
    "striped uncompressed": dict(rowsperstrip=13, photometric="rgb"),
    "planar separate tiled": dict(tile=(16, 32), planarconfig="separate", photometric="rgb", compression="zlib"),
    "big-endian uint16": dict(tile=(16, 16), byteorder=">", photometric="minisblack", compression="zlib"),
}


def _pixels(name: str, rng: np.random.Generator) -> np.ndarray:
    if "uint16" in name:
        return rng.integers(0, 4096, size=(75, 101), dtype=np.uint16)
    smooth = np.linspace(0, 255, 75 * 101 * 3).reshape(75, 101, 3)
    noise = rng.integers(0, 40, size=(75, 101, 3))
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_regions_equal_tifffile(tmp_path, name):
    rng = np.random.default_rng(3)
    pixels = _pixels(name, rng)
    path = str(tmp_path / "image.tif")
    planar = LAYOUTS[name].get("planarconfig") == "separate"
    tifffile.imwrite(path, pixels.transpose(2, 0, 1) if planar else pixels, **LAYOUTS[name])
    expected = tifffile.imread(path)  # the reference, JPEG loss included
    if planar:
        expected = expected.transpose(1, 2, 0)
    elif expected.ndim == 2:
        expected = expected[..., np.newaxis]
    with tifffile.TiffFile(path) as tif:
        assert segment_readable(tif.series[0].levels[0].pages[0], len(tif.series[0].pages))
    reader = TiffSegmentReader(path)
    try:
        assert reader.shape == expected.shape
        assert reader.dtype == expected.dtype.newbyteorder("=")
        assert np.array_equal(reader[:, :, :], expected)
        regions = [
            (slice(int(a), int(b)), slice(int(c), int(d)), slice(None))
            for a, b, c, d in zip(
                rng.integers(0, 40, 20),
                rng.integers(41, 76, 20),
                rng.integers(0, 50, 20),
                rng.integers(51, 102, 20),
                strict=True,
            )
        ]
        with ThreadPoolExecutor(4) as pool:  # concurrent reads share the reader
            decoded = list(pool.map(reader.__getitem__, regions))
        for region, got in zip(regions, decoded, strict=True):
            assert np.array_equal(got, expected[region])
        assert np.array_equal(reader[10:20, 5:9, 1:2], expected[10:20, 5:9, 1:2])
    finally:
        reader.close()


def test_open_image_reads_through_segments_and_matches_tifffile(tmp_path):
    pixels = _pixels("rgb", np.random.default_rng(0))
    path = str(tmp_path / "image.tif")
    tifffile.imwrite(path, pixels, tile=(32, 32), compression="zlib", photometric="rgb")
    image = open_image(path, chunk=40)  # chunks that cut through tiles
    assert np.array_equal(image.data.compute(scheduler="threads"), pixels)


def test_empty_tiles_read_as_fill_value(tmp_path):
    path = str(tmp_path / "sparse.tif")
    pixels = np.full((64, 64), 7, np.uint8)
    tifffile.imwrite(path, pixels, tile=(16, 16), compression="zlib")
    with tifffile.TiffFile(path, mode="r+b") as tif:  # drop tile 5 (row 1, column 1): an empty tile
        counts = list(tif.pages[0].tags["TileByteCounts"].value)
        counts[5] = 0
        tif.pages[0].tags["TileByteCounts"].overwrite(counts)
    expected = tifffile.imread(path)
    assert (expected[16:32, 16:32] == 0).all() and (expected[:16] == 7).all()
    reader = TiffSegmentReader(path)
    try:
        assert np.array_equal(reader[:, :, :][..., 0], expected)
    finally:
        reader.close()


def _expected(path: str, planar: bool) -> np.ndarray:
    expected = tifffile.imread(path)
    if planar:
        return expected.transpose(1, 2, 0)
    return expected[..., np.newaxis] if expected.ndim == 2 else expected


def _write_layout(tmp_path, name: str) -> tuple[str, np.ndarray]:
    pixels = _pixels(name, np.random.default_rng(3))
    path = str(tmp_path / "image.tif")
    planar = LAYOUTS[name].get("planarconfig") == "separate"
    tifffile.imwrite(path, pixels.transpose(2, 0, 1) if planar else pixels, **LAYOUTS[name])
    return path, _expected(path, planar)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_edge_tiles_read_the_same_pixels_as_tifffile(tmp_path, name):
    path, expected = _write_layout(tmp_path, name)
    reader = TiffSegmentReader(path)
    try:
        assert np.array_equal(reader[:, :, :], expected)
        assert np.array_equal(reader[60:75, 90:101, :], expected[60:75, 90:101])
    finally:
        reader.close()


def test_reads_without_os_pread_seek_under_a_lock(tmp_path, monkeypatch):
    path, expected = _write_layout(tmp_path, "tiled zstd predictor")
    with_pread = TiffSegmentReader(path)
    monkeypatch.delattr(os, "pread")
    reader = TiffSegmentReader(path)
    try:
        assert np.array_equal(reader[:, :, :], with_pread[:, :, :])
        assert np.array_equal(reader[:, :, :], expected)
        regions = [(slice(a, a + 30), slice(b, b + 40), slice(None)) for a in range(0, 45, 7) for b in range(0, 61, 9)]
        with ThreadPoolExecutor(4) as pool:  # concurrent seeks must not interleave
            decoded = list(pool.map(reader.__getitem__, regions))
        for region, got in zip(regions, decoded, strict=True):
            assert np.array_equal(got, expected[region])
    finally:
        reader.close()
        with_pread.close()
