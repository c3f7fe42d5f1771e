"""Image pyramids by mean downsampling: a pure per-chunk 2x2 mean and the lazy level builder."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np


def mean_downsample(block: np.ndarray) -> np.ndarray:
    """Average 2x2 pixel blocks of an (h, w, C) array.

    A trailing odd row or column is averaged with itself alone (only existing pixels count), NaN
    pixels are left out of a mean (a block of NaN stays NaN), and integer types are rounded half
    up and kept in their dtype. Integer sums are exact (no float round trip).

    Returns
    -------
    numpy.ndarray
        Shape (ceil(h / 2), ceil(w / 2), C), ``block.dtype``; the input is not modified.
    """
    height, width = block.shape[:2]
    # replicating a trailing odd row/column makes its 2x2 mean the mean of the existing pixels
    even = np.pad(block, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    quads = (even[0::2, 0::2], even[1::2, 0::2], even[0::2, 1::2], even[1::2, 1::2])
    if np.issubdtype(block.dtype, np.integer):
        wide = np.int64 if block.dtype.itemsize >= 4 else np.int32
        total = sum(q.astype(wide) for q in quads)
        return np.floor_divide(total + 2, 4).astype(block.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        return np.nanmean(np.stack(quads), axis=0).astype(block.dtype)


def downsample_level(level_above: da.Array, *, chunks: tuple[int, int]) -> da.Array:
    """The next image pyramid level, lazily: 2x2 means of ``level_above`` (Y, X, C).

    Parameters
    ----------
    level_above : dask.array.Array
        Shape (Y, X, C), typically read back from the level just written.
    chunks : tuple of int
        (Y, X) chunking of the result.

    Returns
    -------
    dask.array.Array
        Shape (ceil(Y / 2), ceil(X / 2), C), same dtype; computes nothing.
    """
    height, width, channels = level_above.shape
    even = level_above.rechunk((2 * chunks[0], 2 * chunks[1], channels))
    out_chunks = tuple(tuple(-(-size // 2) for size in axis) for axis in even.chunks[:2])
    return even.map_blocks(
        mean_downsample,
        chunks=(*out_chunks, (channels,)),
        dtype=level_above.dtype,
        meta=np.empty((0, 0, 0), dtype=level_above.dtype),
    )
