"""OME-Zarr (NGFF 0.5, zarr v3) label images, written chunk by chunk, metadata last.

A label group is created with ``attrs["pixseg"]["complete"] = False`` and no ``ome``
metadata; the ``ome`` metadata and ``complete = True`` are written only after every chunk
is stored, so a viewer or ``pixseg info`` never takes an interrupted output for a result.
"""

from __future__ import annotations

import math
import os
import shutil
from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.delayed import Delayed

from pipeline.colours import label_colours
from pipeline.errors import OutputError

NGFF_VERSION = "0.5"
LEVEL0_PATH = "0"


def create_label_zarr(
    path: str, *, shape: tuple[int, int], chunks: tuple[int, int], dtype: np.dtype, attrs: dict[str, Any]
) -> zarr.Array:
    """Create an empty, incomplete label group with its full-resolution array.

    Parameters
    ----------
    path : str
        The ``.zarr`` directory to create (must not exist).
    shape, chunks : tuple of int
        (Y, X) of the label image and of its zarr chunks.
    dtype : numpy.dtype
        uint8 or uint16.
    attrs : dict
        pixseg's own metadata (model, input...), stored under ``attrs["pixseg"]``.

    Returns
    -------
    zarr.Array
        The level-0 array, fill value 0 (= no data).
    """
    try:
        group = zarr.open_group(path, mode="w-", zarr_format=3)
        group.attrs["pixseg"] = {**attrs, "complete": False}
        return group.create_array(
            LEVEL0_PATH,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            fill_value=0,
            compressors=zarr.codecs.ZstdCodec(level=1),
            dimension_names=("y", "x"),
            # all-zero (fully masked) chunks are written too, so chunk counts measure progress
            config={"write_empty_chunks": True},
        )
    except (OSError, zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError) as err:
        raise OutputError(f"cannot create output {path!r}: {err}") from err


def store_labels(labels: da.Array, array: zarr.Array) -> Delayed:
    """Lazily store ``labels`` into ``array`` chunk by chunk.

    Parameters
    ----------
    labels : dask.array.Array
        Shape (Y, X); every dask chunk boundary must fall on a zarr chunk boundary.
    array : zarr.Array
        Destination of the same shape and dtype.

    Returns
    -------
    dask.delayed.Delayed
        Computing it writes the chunks; nothing is computed here.

    Raises
    ------
    ValueError
        If the chunkings do not line up (storing would corrupt chunks shared by two tasks).
    """
    check_chunks_align(labels.chunks, array.chunks)
    return da.store(labels, array, lock=False, compute=False)


def check_chunks_align(dask_chunks: tuple[tuple[int, ...], ...], zarr_chunks: tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless every dask chunk starts at a multiple of the zarr chunk."""
    for axis, (sizes, step) in enumerate(zip(dask_chunks, zarr_chunks, strict=True)):
        starts = np.cumsum((0, *sizes[:-1]))
        if np.any(starts % step):
            raise ValueError(f"dask chunks {sizes!r} on axis {axis} do not align with zarr chunks of {step}")


def finalise_label_zarr(path: str, *, n_labels: int, name: str) -> None:
    """Write the OME-Zarr metadata and mark the output complete (call after every chunk is stored).

    Parameters
    ----------
    path : str
        A group made by :func:`create_label_zarr`.
    n_labels : int
        K: labels 1..K get a colour.
    name : str
        The multiscale's name.
    """
    group = zarr.open_group(path, mode="r+")
    colours = label_colours(n_labels)
    group.attrs["ome"] = {
        "version": NGFF_VERSION,
        "multiscales": [
            {
                "name": name,
                "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                "datasets": [
                    {"path": LEVEL0_PATH, "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0]}]}
                ],
            }
        ],
        "image-label": {
            "colors": [{"label-value": i + 1, "rgba": list(rgba)} for i, rgba in enumerate(colours)],
            "properties": [{"label-value": i + 1, "name": f"cluster {i + 1}"} for i in range(n_labels)],
        },
    }
    group.attrs["pixseg"] = {**group.attrs["pixseg"], "complete": True}


def read_label_zarr_status(path: str) -> dict[str, Any] | None:
    """pixseg's metadata of a label output plus chunk progress, or ``None`` if ``path`` is not one.

    Returns
    -------
    dict or None
        ``attrs["pixseg"]`` with ``shape``, ``chunks``, ``dtype``, ``chunks_written`` and
        ``chunks_total`` added.
    """
    try:
        group = zarr.open_group(path, mode="r")
    except Exception:  # not a zarr group at all
        return None
    meta = group.attrs.get("pixseg")
    if not isinstance(meta, dict):
        return None
    status = dict(meta)
    if LEVEL0_PATH in group:
        array = group[LEVEL0_PATH]
        assert isinstance(array, zarr.Array)
        status.update(
            shape=tuple(array.shape),
            chunks=tuple(array.chunks),
            dtype=str(array.dtype),
            chunks_written=int(array.nchunks_initialized),
            chunks_total=math.prod(array.cdata_shape),
        )
    return status


def open_label_level0(path: str) -> zarr.Array:
    """The full-resolution label array of an output group, read-only."""
    array = zarr.open_group(path, mode="r")[LEVEL0_PATH]
    assert isinstance(array, zarr.Array)
    return array


def remove_output(path: str) -> None:
    """Delete an existing output (a directory tree or a file)."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
    except OSError as err:
        raise OutputError(f"cannot remove existing output {path!r}: {err}") from err
