"""Pyramidal tiled BigTIFF label images, written by one ``TiffWriter`` from tile generators.

Two layouts:

- ``generic`` (default): full resolution first, each reduced level as a further page with
  ``subfiletype=1`` (no SubIFDs), the layout OpenSlide reads as a pyramid;
- ``ome``: OME-TIFF with the reduced levels in SubIFDs, for QuPath / Bio-Formats.

The file is written under a unique temporary name and renamed when finished, so an interrupted
write never leaves a file that looks complete; :func:`interrupted_tiff_write` finds such a write.
pixseg's metadata is JSON in a private ASCII tag.

With display colours, every page is a palette image (photometric 3) whose ColorMap holds them:
viewers show the labels in colour (OpenSlide returns them as RGBA) while the samples stay the
label values, which tifffile reads as they are (pixseg's own reader expands a palette, so read
label TIFFs with :class:`LabelTiffLevels`). Label 0 (masked) and unused entries are black.
libtiff's RGBA interface, and so OpenSlide, reads 8-bit palettes only and refuses a 16-bit one:
uint16 labels (K > 255) are therefore written greyscale, which OpenSlide still opens (scaled to
8 bits); their colours are in the OME-Zarr output and the statistics.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tifffile
import zarr

from pixseg.colours import colour_lookup
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
    colours: Sequence[Sequence[int]] | None = None,
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
    colours : sequence of RGBA, optional
        Display colours of labels 1..K (0-255): written as the pages' ColorMap (photometric
        palette, 256 entries, label 0 black) for uint8 labels. Without them, or for uint16
        labels, the pages are greyscale.
    """
    payload = json.dumps({**metadata, "complete": True})
    colormap = None
    if colours is not None and levels and np.dtype(levels[0].dtype).itemsize == 1:
        table = colour_lookup(colours, 256, masked=(0, 0, 0, 255))[:, :3]
        colormap = table.T.astype(np.uint16) * 257  # TIFF ColorMap entries are 16-bit
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
                    "photometric": "minisblack" if colormap is None else "palette",
                }
                if colormap is not None:
                    options["colormap"] = colormap
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


class LabelTiffLevels:
    """The label levels of a pixseg TIFF, full resolution first: ``levels[n]`` is a read-only zarr
    array of the stored label values (a palette is not applied). One open file, shared by the
    levels (reads are locked) and closed with :meth:`close` or when this object is dropped.

    Parameters
    ----------
    path : str
        The TIFF.
    """

    def __init__(self, path: str) -> None:
        self._tif = tifffile.TiffFile(path)
        series = self._tif.series[0]
        self._levels = [zarr.open_array(series.aszarr(level=n), mode="r") for n in range(len(series.levels))]

    def __len__(self) -> int:
        return len(self._levels)

    def __getitem__(self, level: int) -> zarr.Array:
        return self._levels[level]

    def close(self) -> None:
        """Close the file."""
        self._tif.close()

    def __del__(self) -> None:
        if hasattr(self, "_tif"):  # not when the open failed
            self.close()


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
