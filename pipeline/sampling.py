"""Deterministic, chunk-stratified sampling of feature vectors.

Each chunk contributes in proportion to its valid (non-NaN) pixels. Which pixels a chunk
gives depends only on the seed and the chunk's (row, column) position in the chunk grid,
never on task order, so the sample is the same on every scheduler and worker count.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np


def count_valid(features: da.Array) -> da.Array:
    """Lazily count the valid pixels of every chunk.

    Parameters
    ----------
    features : dask.array.Array
        Shape (Y, X, F), float32, NaN marking invalid pixels; F in one chunk.

    Returns
    -------
    dask.array.Array
        Shape (number of chunk rows, number of chunk columns), int64; computes nothing.
    """
    return features.map_blocks(
        _count_valid_chunk,
        drop_axis=2,
        chunks=tuple((1,) * n for n in features.numblocks[:2]),
        dtype=np.int64,
        meta=np.empty((0, 0), dtype=np.int64),
    )


def _count_valid_chunk(chunk: np.ndarray) -> np.ndarray:
    return np.array([[np.count_nonzero(~np.isnan(chunk[..., 0]))]], dtype=np.int64)


def full_counts(features: da.Array) -> np.ndarray:
    """Per-chunk pixel counts when every pixel is valid: (chunk rows, chunk columns), int64."""
    rows = np.array(features.chunks[0], dtype=np.int64)
    cols = np.array(features.chunks[1], dtype=np.int64)
    return np.outer(rows, cols)


def allocate_sample(valid_counts: np.ndarray, sample_size: int) -> np.ndarray:
    """Split ``sample_size`` over chunks in proportion to their valid pixels.

    Largest-remainder rounding, ties broken by chunk position, so the total is exactly
    ``min(sample_size, valid_counts.sum())`` and no chunk gives more than it holds.

    Parameters
    ----------
    valid_counts : numpy.ndarray
        Valid pixels per chunk, any shape, non-negative integers.
    sample_size : int
        Wanted number of vectors, >= 1.

    Returns
    -------
    numpy.ndarray
        Vectors to draw from each chunk, same shape as ``valid_counts``, int64.
    """
    counts = np.asarray(valid_counts, dtype=np.int64)
    total = int(counts.sum())
    if total <= sample_size:
        return counts.copy()
    exact = counts.ravel() * (sample_size / total)
    allocated = np.floor(exact).astype(np.int64)
    remainder = exact - allocated
    missing = sample_size - int(allocated.sum())
    # stable sort: equal remainders go to the earlier chunk
    order = np.argsort(-remainder, kind="stable")
    allocated[order[:missing]] += 1
    return np.minimum(allocated, counts.ravel()).reshape(counts.shape)


def sample_chunk(chunk: np.ndarray, n: int, seed: int, position: tuple[int, int]) -> np.ndarray:
    """Draw ``n`` valid feature vectors from one chunk without replacement.

    Parameters
    ----------
    chunk : numpy.ndarray
        Shape (h, w, F), float32, NaN marking invalid pixels.
    n : int
        How many vectors; at most the chunk's valid pixel count.
    seed : int
        The run's seed.
    position : tuple of int
        (row, column) of the chunk in the chunk grid.

    Returns
    -------
    numpy.ndarray
        Shape (n, F), float32, rows in raster order of the drawn pixels.
    """
    flat = chunk.reshape(-1, chunk.shape[-1])
    valid = np.flatnonzero(~np.isnan(flat[:, 0]))
    if n >= valid.size:
        return flat[valid]
    rng = np.random.default_rng([seed, position[0], position[1]])
    picked = np.sort(rng.choice(valid.size, size=n, replace=False))
    return flat[valid[picked]]


def build_sample(features: da.Array, allocation: np.ndarray, seed: int) -> da.Array:
    """Lazily gather the sample described by ``allocation``.

    Parameters
    ----------
    features : dask.array.Array
        Shape (Y, X, F), float32, NaN marking invalid pixels; F in one chunk.
    allocation : numpy.ndarray
        Vectors per chunk, shape ``features.numblocks[:2]`` (see :func:`allocate_sample`).
    seed : int
        The run's seed.

    Returns
    -------
    dask.array.Array
        Shape (allocation.sum(), F), float32, chunks in chunk-grid raster order; reads only
        chunks with a non-zero allocation; computes nothing.
    """
    n_features = features.shape[-1]
    blocks = features.to_delayed()
    parts = []
    for (row, col), n in np.ndenumerate(allocation):
        if n == 0:
            continue
        part = dask.delayed(sample_chunk, pure=True)(blocks[row, col, 0], int(n), seed, (row, col))
        parts.append(da.from_delayed(part, shape=(int(n), n_features), dtype=np.float32))
    if not parts:
        return da.empty((0, n_features), dtype=np.float32)
    return da.concatenate(parts, axis=0)
