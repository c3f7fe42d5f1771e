"""Label pyramids: level shapes and the label-safe 2x reduction, built lazily from the level above."""

from __future__ import annotations

import dask.array as da

#: Coarsest level: the long side is at most this many pixels.
PYRAMID_MIN_SIDE = 1024


def pyramid_shapes(shape: tuple[int, int], *, min_side: int = PYRAMID_MIN_SIDE) -> list[tuple[int, int]]:
    """(Y, X) of every level, halving until the long side is at most ``min_side``.

    Level ``n + 1`` is level ``n`` taken every second row and column, so its size is
    ``ceil(size / 2)``.
    """
    shapes = [(int(shape[0]), int(shape[1]))]
    while max(shapes[-1]) > min_side:
        height, width = shapes[-1]
        shapes.append(((height + 1) // 2, (width + 1) // 2))
    return shapes


def reduce_labels(level_above: da.Array, *, chunks: tuple[int, int]) -> da.Array:
    """The next pyramid level: every second pixel of ``level_above`` (nearest, never interpolated).

    Parameters
    ----------
    level_above : dask.array.Array
        Shape (Y, X) labels, typically read back from the level just written.
    chunks : tuple of int
        (Y, X) chunking of the result (the zarr chunks of the level to write).

    Returns
    -------
    dask.array.Array
        Shape (ceil(Y / 2), ceil(X / 2)), same dtype, only values present in ``level_above``;
        computes nothing.
    """
    return level_above[::2, ::2].rechunk(chunks)
