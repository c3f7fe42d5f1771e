"""Label pyramids: level shapes and the label-safe 2x reduction, built lazily from the level above."""

from __future__ import annotations

import math

import dask
import numpy as np
import zarr
from dask.delayed import Delayed

from pipeline.io.chunk_files import read_region, write_chunk

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


def reduce_chunk(above: zarr.Array, below: zarr.Array, block: tuple[int, int]) -> None:
    """Write chunk ``block`` of the level ``below`` as every second pixel of the level ``above``
    (nearest, never interpolated: only values present in ``above``).

    ``below`` is ``ceil(above.shape / 2)``; twice its chunks must be whole chunks of ``above``
    (pixseg's levels have chunks ``c`` or ``c / 2``). Reads only the chunks of ``above`` it covers.
    """
    height, width = below.chunks
    top, left = block[0] * height, block[1] * width
    bottom, right = min(top + height, below.shape[0]), min(left + width, below.shape[1])
    region = read_region(above, (2 * top, min(2 * bottom, above.shape[0])), (2 * left, min(2 * right, above.shape[1])))
    write_chunk(below, np.ascontiguousarray(region[::2, ::2]), (top, left))


def reduce_level(above: zarr.Array, below: zarr.Array) -> list[Delayed]:
    """Lazily write every chunk of the level ``below`` from the stored level ``above``, one
    :func:`reduce_chunk` task per chunk."""
    task = dask.delayed(reduce_chunk)
    grid = (math.ceil(below.shape[0] / below.chunks[0]), math.ceil(below.shape[1] / below.chunks[1]))
    return [task(above, below, block) for block in np.ndindex(*grid)]
