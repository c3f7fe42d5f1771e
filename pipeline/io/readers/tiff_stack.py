"""TIFF Z-stacks (OME-TIFF, ImageJ hyperstacks, plain multi-page TIFFs) read as volumes through tifffile.

The first series is read through ``series.aszarr()``, so a chunk reads only the pages (and tiles)
it covers; the file is opened per read and closed again. Its ``Z`` axis is the volume's Z (a
plain multi-page stack's page axis, ``I`` or ``Q``, when there is no ``Z``); ``C`` or ``S``
become the channels; any other axis must have length 1. Voxel size: OME-XML
``PhysicalSizeZ/Y/X`` in their units, or an ImageJ stack's ``spacing`` and resolution tags in its
``unit``; unknown sizes are 1 mm with a warning.
"""

from __future__ import annotations

import logging
import os
from typing import Any
from xml.etree import ElementTree

import numpy as np

from pixseg.errors import InputError
from pixseg.io.readers.pixel_size import MICROMETRES
from pixseg.io.readers.volume import Volume, check_spacing, lazy_volume, volume_chunks

logger = logging.getLogger(__name__)


def open_tiff_volume(path: str, *, chunk: int | None) -> Volume:
    """The first series of a TIFF Z-stack as a (Z, Y, X, C) volume, lazily.

    Raises
    ------
    InputError
        If tifffile cannot read it, or it has no stack axis or another axis longer than 1.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, shape, dtype = series.axes, series.shape, np.dtype(series.dtype)
            spacing = _spacing(tif, axes)
    except (OSError, ValueError, tifffile.TiffFileError) as err:
        raise InputError(f"cannot read TIFF {path!r}: {err}") from err
    stack = "Z" if "Z" in axes else next((a for a in "IQ" if a in axes), None)
    if stack is None or "Y" not in axes or "X" not in axes:
        raise InputError(f"TIFF {path!r} has axes {axes!r}; a volume needs a Z (or page) axis, Y and X")
    channel = next((a for a in "CS" if a in axes), None)
    extra = [a for a, n in zip(axes, shape, strict=True) if a not in (stack, "Y", "X", channel) and n > 1]
    if extra:
        raise InputError(f"TIFF {path!r} has axes {axes!r}; {', '.join(extra)} must have length 1 for a volume")
    regions = TiffStackRegions(path, axes=axes, shape=shape, dtype=dtype, roles=(stack, "Y", "X", channel))
    token = (os.path.abspath(path), os.stat(path).st_mtime_ns)
    data = lazy_volume(
        regions,
        shape=regions.shape,
        dtype=dtype,
        chunks=volume_chunks(regions.shape[:3], chunk, whole_slices=True),
        token=token,
    )
    if spacing is None:
        logger.warning("voxel size of %s unknown: volumes in voxels (1 mm each)", path)
        spacing = (1.0, 1.0, 1.0)
    spacing = check_spacing(spacing, path)
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    return Volume(path=path, kind="tiff", data=data, spacing=spacing, affine=affine, reader="tifffile")


class TiffStackRegions:
    """Picklable array-like reading (Z, Y, X, C) regions of the first series of a TIFF stack.

    Each read opens the file and reads the region through ``series.aszarr()`` (only the pages and
    tiles it covers), and closes it again.
    """

    def __init__(
        self, path: str, *, axes: str, shape: tuple[int, ...], dtype: np.dtype, roles: tuple[str, str, str, str | None]
    ) -> None:
        self.path, self.axes, self.roles, self.dtype = path, axes, roles, np.dtype(dtype)
        sizes = dict(zip(axes, shape, strict=True))
        self.shape = (*(sizes[a] for a in roles[:3]), sizes[roles[3]] if roles[3] else 1)
        self.ndim = 4

    def __getitem__(self, key: tuple[slice, slice, slice, slice]) -> np.ndarray:
        import tifffile
        import zarr

        by_role = dict(zip(self.roles, key, strict=True))
        native = tuple(by_role.get(a, 0) for a in self.axes)
        kept: list[str | None] = [a for a in self.axes if a in by_role]
        try:
            with tifffile.TiffFile(self.path) as tif, tif.series[0].aszarr() as store:
                block = np.asarray(zarr.open_array(store, mode="r")[native])
        except (OSError, ValueError, tifffile.TiffFileError) as err:
            raise InputError(f"cannot decode TIFF {self.path!r}: {err}") from err
        if self.roles[3] is None:
            block, kept = block[..., np.newaxis][..., key[3]], [*kept, None]
        return np.ascontiguousarray(block.transpose([kept.index(a) for a in self.roles]))


def _spacing(tif: Any, axes: str) -> tuple[float, float, float] | None:
    """(z, y, x) millimetres per voxel from OME-XML or ImageJ metadata, or None."""
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ElementTree.fromstring(tif.ome_metadata)
        except ElementTree.ParseError:
            return None
        pixels = next((el for el in root.iter() if el.tag.rpartition("}")[2] == "Pixels"), None)
        if pixels is None:
            return None
        try:
            return tuple(  # type: ignore[return-value]
                float(pixels.attrib[f"PhysicalSize{a}"])
                * MICROMETRES[pixels.attrib.get(f"PhysicalSize{a}Unit", "µm")]
                / 1e3
                for a in "ZYX"
            )
        except (KeyError, ValueError):
            return None
    metadata = tif.imagej_metadata
    if metadata and "spacing" in metadata:
        page = tif.pages.first
        x_res, y_res = page.tags["XResolution"].value, page.tags["YResolution"].value
        unit = MICROMETRES.get(str(metadata.get("unit", "")).replace("\\u00B5", "µ"), None)
        if unit is None:
            return None
        return (
            float(metadata["spacing"]) * unit / 1e3,
            y_res[1] / y_res[0] * unit / 1e3,
            x_res[1] / x_res[0] * unit / 1e3,
        )
    return None
