"""Tiled BigTIFF label images, written by one ``TiffWriter`` from a tile generator.

The file is written under a temporary name and renamed when finished, so an interrupted
write never leaves a file that looks complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import tifffile

from pipeline.errors import OutputError

TIFF_TILE = 512
#: First line of the ImageDescription of a pixseg label TIFF; JSON metadata follows.
#: (A description starting with "{" would be taken by tifffile for its own shaped format.)
DESCRIPTION_HEADER = "pixseg-labels\n"


def write_label_tiff(path: str, labels: Any, *, metadata: dict[str, Any], tile: int = TIFF_TILE) -> None:
    """Write a 2-D label array as a tiled, zstd-compressed BigTIFF.

    Parameters
    ----------
    path : str
        Destination ``.tif``/``.tiff``; written as ``path + ".partial"`` and renamed at the end.
    labels : array-like
        Shape (Y, X), uint8 or uint16, sliceable (a zarr array): read one band of ``tile`` rows
        at a time, so memory stays at a band.
    metadata : dict
        pixseg's metadata, stored as JSON in the ImageDescription tag after ``DESCRIPTION_HEADER``.
    tile : int
        Tile edge, a multiple of 16.
    """
    height, width = labels.shape
    partial = path + ".partial"
    description = DESCRIPTION_HEADER + json.dumps({**metadata, "complete": True})
    try:
        with tifffile.TiffWriter(partial, bigtiff=True) as writer:
            writer.write(
                _tiles(labels, tile),
                shape=(height, width),
                dtype=np.dtype(labels.dtype),
                tile=(tile, tile),
                compression="zstd",
                photometric="minisblack",
                description=description,
                metadata=None,
            )
        os.replace(partial, path)
    except OSError as err:
        raise OutputError(f"cannot write TIFF output {path!r}: {err}") from err


def _tiles(labels: Any, tile: int) -> Iterator[np.ndarray]:
    height, width = labels.shape
    for top in range(0, height, tile):
        band = np.asarray(labels[top : top + tile, :])
        for left in range(0, width, tile):
            yield band[:, left : left + tile]


def read_label_tiff_status(path: str) -> dict[str, Any] | None:
    """pixseg's metadata of a TIFF label output, with ``shape``/``dtype``/``tile``, or ``None``."""
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            description = page.description
            if not description.startswith(DESCRIPTION_HEADER):
                return None
            meta = json.loads(description[len(DESCRIPTION_HEADER) :])
            return {
                **meta,
                "shape": tuple(page.shape),
                "dtype": str(page.dtype),
                "tile": (page.tilelength, page.tilewidth),
                "levels": len(tif.series[0].levels),
            }
    except (tifffile.TiffFileError, OSError, ValueError):
        return None
