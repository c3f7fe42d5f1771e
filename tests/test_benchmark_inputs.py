"""The benchmarks' synthetic inputs: rendered tile by tile, or laid out from a pool of rendered tiles."""

from __future__ import annotations

import numpy as np
import tifffile

from benchmarks.synthetic import TILE, ensure_synthetic_tiff, render_tile


def test_pooled_image_is_made_of_pool_tiles_and_reused(tmp_path):
    path = tmp_path / "pooled.tif"
    assert ensure_synthetic_tiff(path, size=3 * TILE, compression="zstd", distinct_tiles=4)
    pool = [render_tile(index // 16, index % 16) for index in range(4)]
    image = tifffile.imread(path)
    assert image.shape == (3 * TILE, 3 * TILE, 3) and image.dtype == np.uint8
    used = set()
    for row in range(3):
        for col in range(3):
            tile = image[row * TILE : (row + 1) * TILE, col * TILE : (col + 1) * TILE]
            matches = [i for i, candidate in enumerate(pool) if np.array_equal(tile, candidate)]
            assert len(matches) == 1
            used.add(matches[0])
    assert len(used) > 1  # laid out in a seeded random order, not one tile repeated
    assert not ensure_synthetic_tiff(path, size=3 * TILE, compression="zstd", distinct_tiles=4)  # reused
    assert ensure_synthetic_tiff(path, size=3 * TILE, compression="zstd")  # another recipe: rewritten
    np.testing.assert_array_equal(tifffile.imread(path)[:TILE, TILE : 2 * TILE], render_tile(0, 1))
