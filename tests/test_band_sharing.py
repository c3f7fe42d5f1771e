"""Striped TIFFs: full-width bands decoded once per pass, shared by the near-square chunks of their row."""

from __future__ import annotations

from unittest import mock

import dask
import dask.array as da
import numpy as np
import pytest
import tifffile

from pixseg.io import readers
from pixseg.io.readers import DEFAULT_CHUNK, open_image
from pixseg.io.tiff_segments import TiffSegmentReader


def _striped(tmp_path, height: int, width: int, rows_per_strip: int) -> tuple[str, np.ndarray]:
    pixels = np.random.default_rng(height + width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path = tmp_path / "striped.tif"
    tifffile.imwrite(path, pixels, rowsperstrip=rows_per_strip, photometric="rgb", compression="zlib")
    return str(path), pixels


@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
def test_each_strip_is_decoded_once_and_chunks_are_near_square(tmp_path, scheduler):
    height, width, rows_per_strip = 90, 2 * DEFAULT_CHUNK + 300, 7  # uneven: a partial last strip and chunk
    path, pixels = _striped(tmp_path, height, width, rows_per_strip)
    image = open_image(path)
    assert image.data.chunks[1] == (DEFAULT_CHUNK, DEFAULT_CHUNK, 300)  # not one chunk across the width
    place = TiffSegmentReader._place
    with mock.patch.object(TiffSegmentReader, "_place", autospec=True, side_effect=place) as decoded:
        with dask.config.set(scheduler=scheduler):
            read = image.data.compute()
    np.testing.assert_array_equal(read, tifffile.imread(path))
    np.testing.assert_array_equal(read, pixels)
    strips = sorted(call.args[2] for call in decoded.call_args_list)  # (self, region, index, ...)
    assert strips == list(range(-(-height // rows_per_strip)))  # every strip once, none twice


def test_chunk_rows_are_whole_bands_and_bounded_for_wide_images(monkeypatch):
    bands = da.zeros((200, 3000, 3), chunks=(12, 3000, 3), dtype=np.uint8)
    assert readers._squares_of_bands(bands).chunks[:2] == ((200,), (1024, 1024, 952))  # 1020 rows: all 200
    monkeypatch.setattr(readers, "BAND_ROW_BYTES", 50 * 3000 * 3)  # room for 50 rows: 4 whole bands
    assert readers._squares_of_bands(bands).chunks[0] == (48, 48, 48, 48, 8)
    monkeypatch.setattr(readers, "BAND_ROW_BYTES", 5 * 3000 * 3)  # less than a band: one band a row
    assert readers._squares_of_bands(bands).chunks[0] == (12,) * 16 + (8,)


def test_a_chunk_option_keeps_its_square_chunks(tmp_path):
    path, pixels = _striped(tmp_path, 100, DEFAULT_CHUNK + 40, 4)
    image = open_image(path, chunk=64)
    assert image.data.chunksize[:2] == (64, 64)
    np.testing.assert_array_equal(image.data.compute(), pixels)
