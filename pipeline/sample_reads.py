"""Which windows the sample reads, and the file tiles those windows share.

The blocks a sample is drawn from (:func:`pixseg.sampling.plan_blocks`) are read in groups: the
blocks of each square of ``GROUP_BLOCKS`` x ``GROUP_BLOCKS`` blocks (of each block row, for a
striped file) share one window, their bounding box plus the texture halo. Groups depend only on
the blocks' positions, and every block's features are exact whichever window it is read
through, so the grouping changes how much is decoded and featurised, never the sample.

Windows of neighbouring groups overlap in their halos, and blocks of neighbouring strata share
file tiles. When the file is tiled in tiles small enough to hold a few of (``MAX_SHARED_TILE``),
each tile that a block or its halo touches is read once, in its own task (only the part of it
that blocks need), and the windows are assembled from those reads: every tile is decoded at
most once per sample pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: Edge, in blocks, of the square of neighbouring blocks read through one window (4 x 256 = 1024
#: pixels, the edge of a label-pass chunk).
GROUP_BLOCKS = 4
#: Most pixels in a file tile that windows share; larger tiles are read by each window itself.
MAX_SHARED_TILE = 2048 * 2048

Region = tuple[int, int, int, int]


def group_blocks(regions: np.ndarray, *, block: int, full_width: bool) -> list[np.ndarray]:
    """The blocks read through one window, group by group.

    Parameters
    ----------
    regions : numpy.ndarray
        Shape (n, 4), int64: (top, left, bottom, right) of each block, on a grid of ``block`` pixels.
    block : int
        Block edge in pixels.
    full_width : bool
        Group the blocks of each block row (a striped file, whose reads decode whole rows)
        instead of squares of ``GROUP_BLOCKS`` x ``GROUP_BLOCKS`` blocks.

    Returns
    -------
    list of numpy.ndarray
        Indices into ``regions`` (increasing) of each group, groups in row-major order of their
        squares (or rows). A pure function of the blocks' positions.
    """
    if len(regions) == 0:
        return []
    edge = block if full_width else block * GROUP_BLOCKS
    rows = regions[:, 0] // edge
    cols = np.zeros_like(rows) if full_width else regions[:, 1] // edge
    _, group = np.unique(rows * (int(cols.max()) + 1) + cols, return_inverse=True)
    order = np.argsort(group, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(group[order])) + 1)


def bounds(regions: np.ndarray) -> Region:
    """(top, left, bottom, right) of the bounding box of ``regions`` (n, 4)."""
    return (
        int(regions[:, 0].min()),
        int(regions[:, 1].min()),
        int(regions[:, 2].max()),
        int(regions[:, 3].max()),
    )


def featurise_together(regions: np.ndarray, *, block: int) -> bool:
    """Whether the blocks ``regions`` (n, 4) are featurised at once, through their bounding box:
    when they cover it (no pixel of it is featurised for nothing) and it holds at most
    ``GROUP_BLOCKS`` x ``GROUP_BLOCKS`` blocks of ``block`` pixels (bounded memory)."""
    top, left, bottom, right = bounds(regions)
    area = (bottom - top) * (right - left)
    areas = (regions[:, 2] - regions[:, 0]) * (regions[:, 3] - regions[:, 1])
    return int(areas.sum()) == area <= (GROUP_BLOCKS * block) ** 2


def grow(region: Region, halo: tuple[int, int], shape: tuple[int, int]) -> Region:
    """``region`` with ``halo`` (rows, columns) more on every side, clipped to an image of ``shape``."""
    top, left, bottom, right = region
    return (
        max(0, top - halo[0]),
        max(0, left - halo[1]),
        min(shape[0], bottom + halo[0]),
        min(shape[1], right + halo[1]),
    )


def overlapping_tiles(window: Region, tile: tuple[int, int], shape: tuple[int, int]) -> list[Region]:
    """The tiles of a grid of ``tile`` (rows, columns) pixels over an image of ``shape`` that ``window`` touches."""
    top, left, bottom, right = window
    rows = range(top // tile[0] * tile[0], bottom, tile[0])
    cols = range(left // tile[1] * tile[1], right, tile[1])
    return [(y, x, min(y + tile[0], shape[0]), min(x + tile[1], shape[1])) for y in rows for x in cols]


def plan_reads(
    groups: Sequence[np.ndarray], *, halo: tuple[int, int], unit: tuple[int, int] | None, shape: tuple[int, int]
) -> tuple[list[Region], list[list[int]]]:
    """What to read for blocks read group by group (see :func:`group_blocks`).

    Parameters
    ----------
    groups : sequence of numpy.ndarray
        (n, 4) blocks of each group.
    halo : (int, int)
        Context rows and columns each block needs on each side.
    unit : (int, int) or None
        Grid of the reads groups share (see :func:`read_unit`), or None: each group then reads
        its window, its blocks' bounding box plus ``halo``.
    shape : (int, int)
        (Y, X) of the image.

    Returns
    -------
    reads : list of (int, int, int, int)
        Regions read, each once: on a ``unit`` grid, the part of a grid cell that some block or
        its halo needs (the bounding box of those parts), cells in row-major order.
    uses : list of list of int
        For each group, the indices into ``reads`` it is assembled from.
    """
    if unit is None:
        return [grow(bounds(regions), halo, shape) for regions in groups], [[i] for i in range(len(groups))]
    needs: dict[Region, Region] = {}
    used: list[set[Region]] = []
    for regions in groups:
        cells = set()
        for block in regions.tolist():
            grown = grow(block, halo, shape)
            for cell in overlapping_tiles(grown, unit, shape):
                part = _intersection(cell, grown)
                needs[cell] = _union(needs[cell], part) if cell in needs else part
                cells.add(cell)
        used.append(cells)
    index = {cell: i for i, cell in enumerate(sorted(needs))}
    return [needs[cell] for cell in sorted(needs)], [sorted(index[cell] for cell in cells) for cells in used]


def _intersection(a: Region, b: Region) -> Region:
    """The pixels ``a`` and ``b`` have in common (they overlap)."""
    return max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])


def _union(a: Region, b: Region) -> Region:
    """The bounding box of ``a`` and ``b``."""
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def read_unit(tile: tuple[int, int] | None, block: int) -> tuple[int, int] | None:
    """(rows, columns) of the reads windows share, on the grid of the file's ``tile``: a tile, or
    the most whole tiles that fit in half a ``block`` along an axis of small tiles (fewer tasks).

    None when windows read their own pixels: tiles unknown (``tile`` None) or larger than
    ``MAX_SHARED_TILE`` pixels.
    """
    if tile is None or tile[0] * tile[1] > MAX_SHARED_TILE:
        return None
    rows, cols = int(tile[0]), int(tile[1])
    return rows * max(1, block // 2 // rows), cols * max(1, block // 2 // cols)


def read_region(pixels: Any, region: Region) -> np.ndarray:
    """Pixels ``region`` of ``pixels`` (Y, X, C) as a numpy array."""
    top, left, bottom, right = region
    return np.asarray(pixels[top:bottom, left:right, :])


def assemble(pieces: Sequence[np.ndarray], regions: Sequence[Region], window: Region) -> np.ndarray:
    """Pixels ``window`` put together from ``pieces``, the pixels of ``regions``.

    Pixels of the window outside every piece are left unset: the pieces must cover every pixel
    that is used. Returns the one piece itself when it is exactly the window.
    """
    if len(pieces) == 1 and tuple(regions[0]) == tuple(window):
        return pieces[0]
    top, left, bottom, right = window
    out = np.empty((bottom - top, right - left, pieces[0].shape[2]), dtype=pieces[0].dtype)
    for piece, (p_top, p_left, p_bottom, p_right) in zip(pieces, regions, strict=True):
        y0, y1 = max(top, p_top), min(bottom, p_bottom)
        x0, x1 = max(left, p_left), min(right, p_right)
        out[y0 - top : y1 - top, x0 - left : x1 - left] = piece[y0 - p_top : y1 - p_top, x0 - p_left : x1 - p_left]
    return out
