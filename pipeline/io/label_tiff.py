"""Pyramidal tiled BigTIFF label images, written by one ``TiffWriter`` from tile generators.

Two layouts:

- ``generic`` (default): full resolution first, each reduced level as a further page with
  ``subfiletype=1`` (no SubIFDs), the layout OpenSlide reads as a pyramid;
- ``ome``: OME-TIFF with the reduced levels in SubIFDs, for QuPath / Bio-Formats.

The file is written under a unique temporary name and renamed when finished, so an interrupted
write never leaves a file that looks complete; :func:`interrupted_tiff_write` finds such a write.
pixseg's metadata is JSON in a private ASCII tag.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tifffile

from pixseg.errors import OutputError
from pixseg.io.atomic import atomic_file, partial_files

#: Private tag (in the reusable range 65000-65535) holding pixseg's JSON metadata.
PIXSEG_TAG = 65000


def write_label_tiff(
    path: str,
    levels: Sequence[Any],
    *,
    metadata: dict[str, Any],
    pixel_size: tuple[float, float] | None,
    flavour: str = "generic",
    tile: int = 512,
    compression: str = "zstd",
) -> None:
    """Write a label pyramid as a tiled BigTIFF.

    Parameters
    ----------
    path : str
        Destination ``.tif``/``.tiff``; written under a unique temporary name beside it and renamed
        at the end (see :func:`pixseg.io.atomic.atomic_file`). Temporary files of interrupted
        writes to ``path`` are removed first: the caller holds the output's lock.
    levels : sequence of array-like
        (Y, X) label arrays, full resolution first, each sliceable (zarr arrays): read one band
        of ``tile`` rows at a time, so memory stays at a band.
    metadata : dict
        pixseg's metadata, stored as JSON in tag ``PIXSEG_TAG`` of the first page.
    pixel_size : tuple of float or None
        (Y, X) micrometres per level-0 pixel, for the resolution tags (and OME PhysicalSize).
    flavour : str
        ``"generic"`` or ``"ome"``.
    tile : int
        256 or 512.
    compression : str
        ``"zstd"`` or ``"zlib"`` (never lossy for labels).
    """
    payload = json.dumps({**metadata, "complete": True})
    try:
        for stale in _partial_tiffs(path):  # of an interrupted write: superseded by this one
            os.remove(stale)
        with (
            atomic_file(path, "wb", fsync=False) as handle,
            tifffile.TiffWriter(handle, bigtiff=True, ome=flavour == "ome") as writer,
        ):
            for level, array in enumerate(levels):
                factor = 2**level
                options: dict[str, Any] = {
                    "shape": tuple(array.shape),
                    "dtype": np.dtype(array.dtype),
                    "tile": (tile, tile),
                    "compression": compression,
                    "photometric": "minisblack",
                }
                if pixel_size is not None:
                    # pixels per centimetre: 1e4 micrometres
                    options["resolution"] = (1e4 / (pixel_size[1] * factor), 1e4 / (pixel_size[0] * factor))
                    options["resolutionunit"] = "CENTIMETER"
                if level == 0:
                    options["extratags"] = [(PIXSEG_TAG, "s", 0, payload, True)]
                    if flavour == "ome":
                        options["subifds"] = len(levels) - 1
                        options["metadata"] = _ome_metadata(pixel_size)
                    else:
                        options["description"] = "pixseg label image"
                        options["metadata"] = None
                else:
                    options["subfiletype"] = 1
                    options["metadata"] = None
                writer.write(_tiles(array, tile), **options)
    except OSError as err:
        raise OutputError(f"cannot write TIFF output {path!r}: {err}") from err


def interrupted_tiff_write(path: str) -> bool:
    """Whether a TIFF write to ``path`` was interrupted (or is running): its temporary file exists.

    Parameters
    ----------
    path : str
        The TIFF output.
    """
    return bool(_partial_tiffs(path))


def _partial_tiffs(path: str) -> list[str]:
    """Temporary files of writes to ``path``: the unique names only pixseg's writes use
    (:func:`pixseg.io.atomic.partial_files`; a file a user named ``path + ".partial"`` is not one)."""
    return partial_files(path)


def _ome_metadata(pixel_size: tuple[float, float] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"axes": "YX", "Name": "pixseg labels"}
    if pixel_size is not None:
        meta.update(
            PhysicalSizeY=pixel_size[0], PhysicalSizeYUnit="µm", PhysicalSizeX=pixel_size[1], PhysicalSizeXUnit="µm"
        )
    return meta


def _tiles(labels: Any, tile: int) -> Iterator[np.ndarray]:
    height, width = labels.shape
    for top in range(0, height, tile):
        band = np.asarray(labels[top : top + tile, :])
        for left in range(0, width, tile):
            yield band[:, left : left + tile]


def read_label_tiff_status(path: str) -> dict[str, Any] | None:
    """pixseg's metadata of a TIFF label output, with ``levels``/``dtype``/``tile``, or ``None``."""
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            tag = page.tags.get(PIXSEG_TAG)
            if tag is None:
                return None
            meta = json.loads(tag.value)
            return {
                **meta,
                "levels": [tuple(level.shape) for level in tif.series[0].levels],
                "dtype": str(page.dtype),
                "tile": (page.tilelength, page.tilewidth),
                "flavour": "ome" if tif.is_ome else "generic",
            }
    except (tifffile.TiffFileError, OSError, ValueError):
        return None
