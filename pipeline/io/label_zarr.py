"""OME-Zarr label pyramids (NGFF 0.5 on zarr v3, or 0.4 on zarr v2), written chunk by chunk, metadata last.

A label group is created with ``pixseg.complete = False`` and no OME metadata; the OME metadata
(``multiscales``, ``image-label``) and ``complete = True`` are written only after every chunk of
every level is stored, so a viewer or ``pixseg info`` never takes an interrupted output for a result.
The chunk files themselves (paths, encoding, existence, verification) belong to
:mod:`pixseg.io.chunk_files`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr
from dask.delayed import Delayed
from zarr.codecs import ZstdCodec

from pixseg.classes import map_clusters
from pixseg.errors import OutputError
from pixseg.io.chunk_files import chunk_exists, read_region, read_stored_chunk, write_chunk
from pixseg.io.remote import zarr_location
from pixseg.statistics import count_and_sum_colours, count_labels, label_summary, split_summary


def create_label_zarr(
    path: str,
    *,
    shapes: list[tuple[int, int]],
    chunks: list[tuple[int, int]],
    dtype: np.dtype,
    ngff: str,
    attrs: dict[str, Any],
) -> list[zarr.Array]:
    """Create an empty, incomplete label group with one array per pyramid level.

    Parameters
    ----------
    path : str
        The group to create (must not exist; its parent group, if any, must).
    shapes : list of tuple of int
        (Y, X) of each level, full resolution first; level ``n`` is stored at path ``str(n)``.
    chunks : list of tuple of int
        (Y, X) zarr chunks of each level (clipped to the level's shape).
    dtype : numpy.dtype
        uint8 or uint16.
    ngff : str
        ``"0.5"`` (zarr v3) or ``"0.4"`` (zarr v2).
    attrs : dict
        pixseg's own metadata, stored under ``attrs["pixseg"]``.

    Returns
    -------
    list of zarr.Array
        The level arrays, fill value 0 (= no data).
    """
    v3 = ngff == "0.5"
    try:
        group = zarr.open_group(zarr_location(path, writable=True), mode="w-", zarr_format=3 if v3 else 2)
        group.attrs["pixseg"] = {**attrs, "complete": False}
        return [
            _create_array(group, str(level), shape=shape, chunks=level_chunks, dtype=dtype, v3=v3)
            for level, (shape, level_chunks) in enumerate(zip(shapes, chunks, strict=True))
        ]
    except (OSError, zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError) as err:
        raise OutputError(f"cannot create output {path!r}: {err}") from err


def _create_array(
    group: zarr.Group, name: str, *, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: np.dtype, v3: bool
) -> zarr.Array:
    """A label array of ``group`` (replacing one of that name), laid out as :mod:`pixseg.io.chunk_files` expects."""
    return group.create_array(
        name,
        shape=shape,
        chunks=(min(chunks[0], shape[0]), min(chunks[1], shape[1])),
        dtype=dtype,
        fill_value=0,
        compressors=ZstdCodec(level=1) if v3 else _v2_zstd(),
        chunk_key_encoding={"name": "default"} if v3 else {"name": "v2", "separator": "/"},
        dimension_names=("y", "x") if v3 else None,
        # all-zero (fully masked) chunks are written too, so chunk counts measure progress
        config={"write_empty_chunks": True},
        overwrite=True,
    )


#: The array of a label group written with classes that keeps its level-0 cluster ids (see
#: :mod:`pixseg.relabel`); the levels ``0, 1, ...`` hold the class ids.
CLUSTER_IDS = "clusters"


@dataclass(frozen=True)
class ClassIds:
    """How a label pass writes classes: level 0 gets ``lookup[cluster ids]`` (see
    :meth:`pixseg.classes.ClassTable.lookup`), ``clusters`` (:data:`CLUSTER_IDS`) the cluster ids."""

    lookup: np.ndarray
    clusters: zarr.Array


def create_cluster_ids(path: str, *, like: zarr.Array, dtype: np.dtype) -> zarr.Array:
    """Create, empty (replacing any), the cluster-id array of the label group ``path``, with the
    shape and chunks of ``like`` (its level 0) and ``dtype`` (the model's cluster label dtype)."""
    group = zarr.open_group(path, mode="r+")
    v3 = group.metadata.zarr_format == 3
    return _create_array(group, CLUSTER_IDS, shape=like.shape, chunks=like.chunks, dtype=dtype, v3=v3)


def open_cluster_ids(path: str, *, writable: bool = False) -> zarr.Array | None:
    """The cluster-id array of the label group ``path``, or None when it has none."""
    group = zarr.open_group(path, mode="r+" if writable else "r")
    array = group.get(CLUSTER_IDS)
    return array if isinstance(array, zarr.Array) else None


def relabel_chunk(clusters: zarr.Array, array: zarr.Array, block: tuple[int, int], lookup: np.ndarray) -> None:
    """Write chunk ``block`` of ``array`` (level 0) as the class ids of the same chunk of ``clusters``.

    Raises
    ------
    OutputError
        If the cluster chunk is missing or damaged (the output cannot be relabelled).
    """
    stored = read_stored_chunk(clusters, block)
    if stored is None:
        raise OutputError(f"cannot relabel: cluster-id chunk {block!r} of {clusters.store!s} is missing or damaged")
    write_chunk(array, map_clusters(stored, lookup), (block[0] * array.chunks[0], block[1] * array.chunks[1]))


def relabel_level(clusters: zarr.Array, array: zarr.Array, lookup: np.ndarray) -> list[Delayed]:
    """Lazily rewrite every chunk of ``array`` from ``clusters`` (same shape and chunks), one
    :func:`relabel_chunk` task per chunk."""
    task = dask.delayed(relabel_chunk)
    grid = (math.ceil(array.shape[0] / array.chunks[0]), math.ceil(array.shape[1] / array.chunks[1]))
    return [task(clusters, array, block, lookup) for block in np.ndindex(*grid)]


def _v2_zstd() -> Any:
    from numcodecs import Zstd

    return Zstd(level=1)


def store_and_count(
    labels: da.Array,
    array: zarr.Array,
    blocks: list[tuple[int, ...]],
    n_values: int,
    *,
    pixels: da.Array,
    n_colour: int,
    classes: ClassIds | None = None,
) -> tuple[da.Array, da.Array]:
    """Lazily write chunks ``blocks`` ((row, column) indices) of ``labels``, count their values
    and sum the input colour of each value.

    Each task predicts, writes, counts and sums one chunk, so nothing is computed twice. A subset
    of the blocks (a resumed run) becomes one small graph per block, so blocks not listed are never
    computed. See :func:`store_count_and_preview` for a whole first pass.

    Parameters
    ----------
    labels : dask.array.Array
        Shape (Y, X), chunked exactly like ``array`` (block (i, j) is zarr chunk (i, j)).
    array : zarr.Array
        Destination of the same shape and dtype.
    blocks : list of tuple of int
        Chunks to write.
    n_values : int
        Values counted: 0..``n_values - 1``.
    pixels : dask.array.Array
        Shape (Y, X, C), the same (Y, X) chunks: the input the labels come from.
    n_colour : int
        Colour channels of ``pixels`` summed (the first ``n_colour``).
    classes : ClassIds, optional
        Write class ids into ``array`` and the cluster ids beside (counts and sums stay per cluster).

    Returns
    -------
    counts : dask.array.Array
        Shape (n_values,), int64: the counts over the written chunks.
    sums : dask.array.Array
        Shape (n_values, n_colour), float64: per-value colour sums (see
        :func:`pixseg.statistics.count_and_sum_colours`). Compute both together (computing writes the chunks).
    """
    _check_destination(labels, array)
    _check_pixels(labels, pixels)
    if not blocks:
        return da.zeros(n_values, dtype=np.int64), da.zeros((n_values, n_colour), dtype=np.float64)
    height, width = array.chunks
    parts = [
        _summaries(
            labels.blocks[i, j],
            pixels.blocks[i, j],
            array=array,
            n_values=n_values,
            n_colour=n_colour,
            origin=(i * height, j * width),
            classes=classes,
        )
        for i, j in blocks
    ]
    return _counts_and_sums(da.concatenate(parts, axis=0))


def _summaries(labels: da.Array, pixels: da.Array, *, n_values: int, n_colour: int, **write: Any) -> da.Array:
    """Lazily write every chunk of ``labels`` (one :func:`_write_and_summarise` task each, ``write`` its
    options); the result has one (1, 1, ``n_values``, 1 + ``n_colour``) float64 summary block per chunk."""
    return da.map_blocks(
        _write_and_summarise,
        labels[:, :, np.newaxis],
        pixels,
        n_values=n_values,
        n_colour=n_colour,
        chunks=((1,) * labels.numblocks[0], (1,) * labels.numblocks[1], (n_values,), (1 + n_colour,)),
        new_axis=3,
        dtype=np.float64,
        meta=np.empty((0, 0, 0, 0), dtype=np.float64),
        **write,
    )


def _counts_and_sums(summaries: da.Array) -> tuple[da.Array, da.Array]:
    """The label counts (int64) and colour sums (float64) over every chunk's summary block: one reduction."""
    return split_summary(summaries.sum(axis=(0, 1)))


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


def store_count_and_preview(
    labels: da.Array,
    array: zarr.Array,
    n_values: int,
    *,
    pixels: da.Array,
    n_colour: int,
    preview: bool = True,
    step: int = 1,
    next_level: zarr.Array | None = None,
    classes: ClassIds | None = None,
) -> tuple[da.Array, da.Array, da.Array | None]:
    """Lazily write every chunk of ``labels``, count its values, sum the input colour of each value
    and keep a strided preview of ``pixels``.

    One task per chunk writes the labels, counts them and sums the colour of their pixels, and one
    more takes ``pixels[::step, ::step]``'s share of the chunk, so the input is read once for labels,
    mean colours and preview alike; the counts and sums of every chunk are added up in one reduction.
    With ``next_level``, the first also writes the chunk's share of the next pyramid level
    (``labels[::2, ::2]``), so that level needs no second read of this one.

    Parameters
    ----------
    labels : dask.array.Array
        Shape (Y, X), chunked exactly like ``array``.
    array : zarr.Array
        Destination of the same shape and dtype.
    n_values : int
        Values counted: 0..``n_values - 1``.
    pixels : dask.array.Array
        Shape (Y, X, C), the same (Y, X) chunks: the input the labels come from.
    n_colour : int
        Colour channels of ``pixels`` summed (the first ``n_colour``).
    preview : bool
        Whether to keep the strided preview.
    step : int
        Preview stride.
    next_level : zarr.Array, optional
        Shape ``ceil(shape / 2)``, chunks exactly half of ``array``'s (which must be even), so each
        task writes whole chunks of it.
    classes : ClassIds, optional
        Write class ids into ``array`` and ``next_level``, the cluster ids into ``classes.clusters``;
        counts and sums stay per cluster.

    Returns
    -------
    counts : dask.array.Array
        Shape (n_values,), int64.
    sums : dask.array.Array
        Shape (n_values, n_colour), float64 (see :func:`pixseg.statistics.count_and_sum_colours`).
    preview : dask.array.Array or None
        ``pixels[::step, ::step]`` (None without ``preview``). Compute all together (one pass
        writes the chunks).
    """
    _check_destination(labels, array)
    _check_pixels(labels, pixels)
    if next_level is not None and tuple(2 * c for c in next_level.chunks) != tuple(array.chunks):
        raise ValueError(f"next-level chunks {next_level.chunks!r} are not half of {array.chunks!r}")
    summaries = _summaries(
        labels, pixels, array=array, n_values=n_values, n_colour=n_colour, next_level=next_level, classes=classes
    )
    counts, sums = _counts_and_sums(summaries)
    if not preview:
        return counts, sums, None
    preview_chunks = tuple(
        tuple(_strided_length(start, size, step) for start, size in _starts(c)) for c in labels.chunks
    )
    strided = da.map_blocks(
        _strided_copy,
        pixels,
        step,
        chunks=(*preview_chunks, (pixels.shape[2],)),
        dtype=pixels.dtype,
        meta=np.empty((0, 0, 0), dtype=pixels.dtype),
    )
    return counts, sums, strided


def _check_destination(labels: da.Array, array: zarr.Array) -> None:
    if tuple(labels.chunksize) != tuple(array.chunks):
        raise ValueError(f"dask chunks {labels.chunksize!r} differ from the zarr chunks {array.chunks!r}")
    check_chunks_align(labels.chunks, array.chunks)


def _check_pixels(labels: da.Array, pixels: da.Array) -> None:
    if pixels.chunks[:2] != labels.chunks:
        raise ValueError(f"pixel chunks {pixels.chunks[:2]!r} differ from the labels' {labels.chunks!r}")


def _starts(chunks: tuple[int, ...]) -> list[tuple[int, int]]:
    starts = np.cumsum((0, *chunks[:-1]))
    return [(int(start), int(size)) for start, size in zip(starts, chunks, strict=True)]


def _strided_length(start: int, size: int, step: int) -> int:
    """How many of the rows ``start .. start + size - 1`` are multiples of ``step``."""
    return len(range(-start % step, size, step))


def _write_and_summarise(
    labels: np.ndarray,
    pixels: np.ndarray,
    *,
    array: zarr.Array,
    n_values: int,
    n_colour: int,
    next_level: zarr.Array | None = None,
    classes: ClassIds | None = None,
    origin: tuple[int, int] | None = None,
    block_info: dict[Any, Any],
) -> np.ndarray:
    """One chunk's task of :func:`store_and_count` and :func:`store_count_and_preview`.

    Writes the (h, w, 1) label chunk at ``origin`` (by default its place in the dask array; as
    class ids with ``classes``, the cluster ids then written after, so a stored cluster chunk means
    its class chunk is stored too), then with ``next_level`` its share of the next level. Returns
    its :func:`pixseg.statistics.label_summary` (label counts, then the colour sums of ``pixels``),
    shape (1, 1, ``n_values``, 1 + ``n_colour``).
    """
    top, left = origin or tuple(start for start, _ in block_info[0]["array-location"][:2])
    clusters = labels[:, :, 0]
    stored = clusters if classes is None else map_clusters(clusters, classes.lookup)
    write_chunk(array, stored, (top, left))
    if classes is not None:
        write_chunk(classes.clusters, clusters, (top, left))
    if next_level is not None:
        write_chunk(next_level, np.ascontiguousarray(stored[::2, ::2]), (top // 2, left // 2))
    return label_summary(clusters, pixels, n_values, n_colour)[np.newaxis, np.newaxis]


def _strided_copy(pixels: np.ndarray, step: int, *, block_info: dict[Any, Any]) -> np.ndarray:
    """A chunk's share of the image's ``[::step, ::step]`` preview, copied: a strided view would keep
    the whole chunk alive until the pass ends."""
    top, left = (start for start, _ in block_info[0]["array-location"][:2])
    return pixels[-top % step :: step, -left % step :: step].copy()


def chunk_written(group_path: str, level: int, array: zarr.Array, block: tuple[int, int]) -> bool:
    """Whether chunk ``block`` of ``array`` (level ``level`` of the label group ``group_path``) is stored.

    Kept for callers written before :func:`pixseg.io.chunk_files.chunk_exists`, which it calls:
    the chunk's file comes from ``array``; ``group_path`` and ``level`` are not used.
    """
    return chunk_exists(array, block)


def count_stored_chunk(array: zarr.Array, block: tuple[int, int], n_values: int) -> np.ndarray | None:
    """Label counts of a stored chunk, or ``None`` if it is missing or cannot be decoded (write it again).

    A damaged chunk is one that raises :data:`pixseg.io.chunk_files.DAMAGED_CHUNK_ERRORS`; any other
    error propagates.
    """
    values = read_stored_chunk(array, block)
    return None if values is None else count_labels(values, n_values)


def summarise_stored_chunk(
    array: zarr.Array, block: tuple[int, int], n_values: int, pixels: np.ndarray, n_colour: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Label counts and per-label colour sums (see :func:`pixseg.statistics.count_and_sum_colours`) of a
    stored chunk over ``pixels``, its share of the input; ``None`` if the chunk is missing or cannot
    be decoded (write it again), as in :func:`count_stored_chunk`."""
    values = read_stored_chunk(array, block)
    if values is None:
        return None
    return count_and_sum_colours(values, pixels, n_values, n_colour)


def check_chunks_align(dask_chunks: tuple[tuple[int, ...], ...], zarr_chunks: tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless every dask chunk starts at a multiple of the zarr chunk."""
    for axis, (sizes, step) in enumerate(zip(dask_chunks, zarr_chunks, strict=True)):
        starts = np.cumsum((0, *sizes[:-1]))
        if np.any(starts % step):
            raise ValueError(f"dask chunks {sizes!r} on axis {axis} do not align with zarr chunks of {step}")
