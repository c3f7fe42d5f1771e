"""Applying a mask, at its own resolution, to full-resolution chunks.

A mask is a 2-D boolean image (True = keep) at any resolution that maps onto the image by
nearest-neighbour upsampling: pixel ``r`` of an image ``H`` rows high takes mask row
``floor((r + 0.5) * h / H)`` of a mask ``h`` rows high (``r // f`` when ``H = f * h``), the
same for columns. Masked pixels are never sampled (:mod:`pixseg.sampling` reads the mask over
each sampled block) and get label 0 (:func:`mask_labels`). The automatic mask itself is
:mod:`pixseg.masks`'.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from dask.task_spec import List, Task, TaskRef

from pixseg.errors import ParameterError


def check_mask_shape(mask_shape: tuple[int, int], image_shape: tuple[int, int], *, source: str) -> None:
    """Check that a user mask's (Y, X) divides the full-resolution image's.

    Raises
    ------
    ParameterError
        Naming ``source`` and both shapes, if either edge does not divide.
    """
    if any(m < 1 or i % m for m, i in zip(mask_shape, image_shape, strict=True)):
        raise ParameterError(
            f"--mask {source!r} is {mask_shape[0]}x{mask_shape[1]}, which does not divide the image "
            f"({image_shape[0]}x{image_shape[1]}); a mask must be the image size or smaller by whole factors"
        )


def nearest_indices(n_out: int, n_in: int, *, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Index of the nearest of ``n_in`` mask pixels for image pixels ``start:stop`` of ``n_out`` along one axis.

    ``floor((i + 0.5) * n_in / n_out)`` in exact integer arithmetic; ``i // f`` when ``n_out = f * n_in``.
    Returns an int64 array of length ``stop - start`` (default: all ``n_out``).
    """
    positions = np.arange(start, n_out if stop is None else stop, dtype=np.int64)
    return (2 * positions + 1) * n_in // (2 * n_out)


def upsample_mask(
    mask: da.Array,
    shape: tuple[int, int],
    chunks: tuple[tuple[int, ...], tuple[int, ...]],
    *,
    origin: tuple[int, int] = (0, 0),
) -> da.Array:
    """Lazily upsample a mask to ``shape`` by nearest neighbour, chunk by chunk.

    The graph is built directly, one task per chunk, so building it costs microseconds per
    chunk (a 100,000^2 slide has about 10,000).

    Parameters
    ----------
    mask : dask.array.Array
        Shape (h, w), bool, any chunking.
    shape : (int, int)
        (Y, X) of the image it applies to.
    chunks : tuple of tuple of int
        The (Y, X) chunks of the result, which covers image rows and columns from ``origin`` on.
    origin : (int, int)
        Image pixel of the result's first row and column (default: the image's whole extent).

    Returns
    -------
    dask.array.Array
        Shape ``(sum(chunks[0]), sum(chunks[1]))``, bool, exactly ``chunks``; each chunk reads only
        the mask blocks it covers. Computes nothing.
    """
    row_spans = _chunk_spans(chunks[0], origin[0])
    col_spans = _chunk_spans(chunks[1], origin[1])
    mask_row_edges = np.cumsum((0, *mask.chunks[0]))
    mask_col_edges = np.cumsum((0, *mask.chunks[1]))
    mask_shape = (int(mask.shape[0]), int(mask.shape[1]))
    name = "upsample-mask-" + tokenize(mask, shape, chunks, origin)
    layer: dict[Any, Any] = {}
    col_covers = [_covering_blocks(cols, shape[1], mask_shape[1], mask_col_edges) for cols in col_spans]
    for i, rows in enumerate(row_spans):
        row_blocks, top = _covering_blocks(rows, shape[0], mask_shape[0], mask_row_edges)
        for j, (cols, (col_blocks, left)) in enumerate(zip(col_spans, col_covers, strict=True)):
            pieces = List(*(List(*(TaskRef((mask.name, a, b)) for b in col_blocks)) for a in row_blocks))
            layer[(name, i, j)] = Task((name, i, j), upsample_block, pieces, rows, cols, shape, mask_shape, (top, left))
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[mask])  # type: ignore[list-item]  # dask stubs
    return da.Array(graph, name, chunks, dtype=bool, meta=np.empty((0, 0), dtype=bool))


def mask_region(mask: da.Array, shape: tuple[int, int], *, rows: tuple[int, int], cols: tuple[int, int]) -> da.Array:
    """One region of ``mask`` upsampled to ``shape`` by nearest neighbour, lazily, as one chunk.

    Parameters
    ----------
    mask : dask.array.Array
        Shape (h, w), bool, any chunking.
    shape : (int, int)
        (Y, X) of the image it applies to.
    rows, cols : (int, int)
        [start, stop) of the region in the image.

    Returns
    -------
    dask.array.Array
        Shape (rows[1] - rows[0], cols[1] - cols[0]), bool, one chunk that reads only the mask
        blocks it covers. Computes nothing.
    """
    chunks = ((rows[1] - rows[0],), (cols[1] - cols[0],))
    return upsample_mask(mask, shape, chunks, origin=(rows[0], cols[0]))


def _chunk_spans(sizes: tuple[int, ...], start: int) -> list[tuple[int, int]]:
    """[start, stop) in the image of each chunk of ``sizes``, the first at ``start``."""
    edges = np.cumsum((start, *sizes)).tolist()
    return list(zip(edges[:-1], edges[1:], strict=True))


def _covering_blocks(span: tuple[int, int], n_out: int, n_in: int, block_edges: np.ndarray) -> tuple[range, int]:
    """The mask blocks along one axis that image pixels ``span`` map to, and the first one's start."""
    first, last = nearest_indices(n_out, n_in, start=span[0], stop=span[1])[[0, -1]]
    start_block = int(np.searchsorted(block_edges, first, side="right")) - 1
    stop_block = int(np.searchsorted(block_edges, last, side="right"))
    return range(start_block, stop_block), int(block_edges[start_block])


def upsample_block(
    pieces: list[list[np.ndarray]],
    rows: tuple[int, int],
    cols: tuple[int, int],
    shape: tuple[int, int],
    mask_shape: tuple[int, int],
    origin: tuple[int, int],
) -> np.ndarray:
    """Image pixels ``rows`` x ``cols`` of a mask of ``mask_shape`` upsampled to ``shape`` (one chunk).

    ``pieces`` are the mask blocks covering it, as for ``numpy.block``, the first starting at
    mask pixel ``origin``. Returns a new (rows, cols) bool array.
    """
    region = pieces[0][0] if len(pieces) == 1 and len(pieces[0]) == 1 else np.block(pieces)
    region = np.asarray(region, dtype=bool)
    block_rows = nearest_indices(shape[0], mask_shape[0], start=rows[0], stop=rows[1]) - origin[0]
    block_cols = nearest_indices(shape[1], mask_shape[1], start=cols[0], stop=cols[1]) - origin[1]
    return region[np.ix_(block_rows, block_cols)]


def mask_labels(labels: da.Array, mask: da.Array) -> da.Array:
    """Lazily set the labels of masked pixels to 0.

    Parameters
    ----------
    labels : dask.array.Array
        Shape (Y, X), integer labels.
    mask : dask.array.Array
        Shape (Y, X), bool, the same chunks (see :func:`upsample_mask`).

    Returns
    -------
    dask.array.Array
        Shape (Y, X), ``labels.dtype``, the same chunks; computes nothing.
    """
    if mask.chunks != labels.chunks:
        raise ValueError(f"mask chunks {mask.chunks!r} differ from the labels' {labels.chunks!r}")
    zero = np.zeros((), dtype=labels.dtype)
    return da.where(mask, labels, zero)
