"""A synthetic "stained tissue" field, written as a tiled RGB TIFF tile by tile.

Soft elliptical blobs of three stain colours (haematoxylin, eosin, DAB) lie on a near-white
background, with Gaussian noise: four well-separated colour populations, so K=4 is the right
answer. Blobs are placed on a global grid of cells, each seeded from ``(seed, cell)``, and a
tile draws every blob that reaches into it: tiles are independent and deterministic, and
neighbouring tiles meet seamlessly. The image is never whole in memory.

For very large images (``distinct_tiles``), rendering every tile (about 60 ms each in Python)
would take longer than the benchmark: a pool of that many rendered tiles is laid out in a
seeded random order instead. Every tile is still compressed, stored and decoded on its own, so
the codec and I/O work per pixel is the same; only the content repeats.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

TILE = 512
#: Edge of the cells blobs are placed on; each cell holds a Poisson number of blob centres.
CELL = 128
BLOBS_PER_CELL = 3.0
RADIUS_RANGE = (14.0, 48.0)
#: How fast a blob's edge fades: the outer 1/EDGE_SHARPNESS of its radius is a ramp.
EDGE_SHARPNESS = 4.0
NOISE_SD = 6.0
BACKGROUND = (238.0, 234.0, 240.0)
STAINS = (
    (70.0, 58.0, 150.0),  # haematoxylin: blue-purple
    (224.0, 122.0, 176.0),  # eosin: pink
    (150.0, 92.0, 42.0),  # DAB: brown
)
_BLOB_STREAM = 1
_NOISE_STREAM = 2
_POOL_STREAM = 3
_GENERATOR = "pixseg-benchmarks synthetic tissue v1"


@dataclass(frozen=True)
class _Blob:
    y: float
    x: float
    radius_y: float
    radius_x: float
    colour: np.ndarray
    strength: float


def ensure_synthetic_tiff(
    path: Path, *, size: int, seed: int = 0, compression: str = "zstd", distinct_tiles: int | None = None
) -> bool:
    """Write the synthetic image to ``path`` unless an identical one is already there.

    Parameters
    ----------
    path : pathlib.Path
        Destination ``.tif``; written under ``<path>.partial``, then renamed.
    size : int
        Edge in pixels (>= ``TILE``); the image is ``size`` x ``size`` x 3, uint8.
    seed : int
        Seeds every blob and every pixel of noise.
    compression : str
        A tifffile compression name (``"zstd"``, ``"zlib"``, ``"jpeg"``, ``"none"``).
    distinct_tiles : int, optional
        Render only this many tiles and lay them out in a seeded random order (see above).

    Returns
    -------
    bool
        True if the file was written, False if an existing one was reused (same shape, tile,
        seed, generator and compression, recorded in the TIFF's ImageDescription).
    """
    if size < TILE:
        raise ValueError(f"size must be at least {TILE}, got {size!r}")
    recipe = {"generator": _GENERATOR, "seed": seed, "compression": compression}
    if distinct_tiles is not None:
        recipe["distinct_tiles"] = distinct_tiles
    description = json.dumps(recipe)
    if _is_reusable(path, size=size, description=description):
        return False
    partial = path.with_name(path.name + ".partial")
    with tifffile.TiffWriter(partial, bigtiff=True) as writer:
        writer.write(
            _tiles(size, seed) if distinct_tiles is None else _pooled_tiles(size, seed, distinct_tiles),
            shape=(size, size, 3),
            dtype=np.uint8,
            tile=(TILE, TILE),
            photometric="rgb",
            compression=None if compression == "none" else compression,
            description=description,
            metadata=None,
            maxworkers=os.cpu_count(),
        )
    os.replace(partial, path)
    return True


def render_tile(row: int, col: int, *, seed: int = 0) -> np.ndarray:
    """Render tile (``row``, ``col``) of the synthetic field.

    Parameters
    ----------
    row, col : int
        Tile position; the tile covers pixels ``[row * TILE, (row + 1) * TILE)`` and likewise in x.
    seed : int
        The field's seed.

    Returns
    -------
    numpy.ndarray
        Shape (TILE, TILE, 3), uint8; depends only on ``seed``, ``row`` and ``col``.
    """
    top, left = row * TILE, col * TILE
    canvas = np.empty((TILE, TILE, 3), dtype=np.float32)
    canvas[...] = BACKGROUND
    for blob in _blobs_near(top, left, seed):
        _paint(canvas, blob, top, left)
    noise = np.random.default_rng([seed, _NOISE_STREAM, row, col]).standard_normal(canvas.shape, dtype=np.float32)
    canvas += NOISE_SD * noise
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def _is_reusable(path: Path, *, size: int, description: str) -> bool:
    if not path.is_file():
        return False
    try:
        with tifffile.TiffFile(path) as tiff:
            page = tiff.pages.first
            return page.shape == (size, size, 3) and page.tilelength == TILE and page.description == description
    except (OSError, ValueError, tifffile.TiffFileError):
        return False


def _tiles(size: int, seed: int) -> Iterator[np.ndarray]:
    n_tiles = -(-size // TILE)
    for row in range(n_tiles):
        for col in range(n_tiles):
            yield render_tile(row, col, seed=seed)


def _pooled_tiles(size: int, seed: int, distinct: int) -> Iterator[np.ndarray]:
    pool = [render_tile(index // 16, index % 16, seed=seed) for index in range(distinct)]
    n_tiles = -(-size // TILE)
    for row in range(n_tiles):
        for index in np.random.default_rng([seed, _POOL_STREAM, row]).integers(distinct, size=n_tiles):
            yield pool[int(index)]


def _blobs_near(top: int, left: int, seed: int) -> Iterator[_Blob]:
    """Blobs that may reach into the tile at (``top``, ``left``), in one global order."""
    reach = int(np.ceil(RADIUS_RANGE[1]))
    first_y, last_y = max(0, (top - reach) // CELL), (top + TILE + reach) // CELL
    first_x, last_x = max(0, (left - reach) // CELL), (left + TILE + reach) // CELL
    for cell_y in range(first_y, last_y + 1):
        for cell_x in range(first_x, last_x + 1):
            yield from _cell_blobs(cell_y, cell_x, seed)


def _cell_blobs(cell_y: int, cell_x: int, seed: int) -> Iterator[_Blob]:
    rng = np.random.default_rng([seed, _BLOB_STREAM, cell_y, cell_x])
    for _ in range(rng.poisson(BLOBS_PER_CELL)):
        radius_y, radius_x = rng.uniform(*RADIUS_RANGE, size=2)
        yield _Blob(
            y=(cell_y + rng.uniform()) * CELL,
            x=(cell_x + rng.uniform()) * CELL,
            radius_y=radius_y,
            radius_x=radius_x,
            colour=np.asarray(STAINS[rng.integers(len(STAINS))], dtype=np.float32),
            strength=rng.uniform(0.85, 1.0),
        )


def _paint(canvas: np.ndarray, blob: _Blob, top: int, left: int) -> None:
    """Blend ``blob`` into ``canvas`` (a tile whose corner is at ``top``, ``left``) in place."""
    y0 = max(int(blob.y - blob.radius_y) - top, 0)
    y1 = min(int(blob.y + blob.radius_y) + 1 - top, TILE)
    x0 = max(int(blob.x - blob.radius_x) - left, 0)
    x1 = min(int(blob.x + blob.radius_x) + 1 - left, TILE)
    if y0 >= y1 or x0 >= x1:
        return
    yy = (np.arange(y0, y1, dtype=np.float32)[:, np.newaxis] + top - blob.y) / blob.radius_y
    xx = (np.arange(x0, x1, dtype=np.float32)[np.newaxis, :] + left - blob.x) / blob.radius_x
    alpha = np.clip((1.0 - np.sqrt(yy * yy + xx * xx)) * EDGE_SHARPNESS, 0.0, 1.0) * blob.strength
    region = canvas[y0:y1, x0:x1]
    region += alpha[..., np.newaxis] * (blob.colour - region)
