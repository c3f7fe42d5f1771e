"""Pixel sizes from a file's own metadata; never invented.

pixseg reports areas in square micrometres only when the file says how large a pixel is. Each
format's own metadata is read, in this order for a TIFF:

1. OME-XML: ``PhysicalSizeX``/``PhysicalSizeY`` of the series' ``Pixels``, in their units (µm by default).
2. Aperio SVS: ``MPP = 0.25`` in the series' ImageDescription.
3. Leica SCN: the ``view`` size (nm) of the series' image over its full-resolution pixel count.
4. The resolution tags (NDPI, QPTIFF, Philips and plain TIFFs), under these rules:

   - unit NONE, or no tags (tifffile reports (1, 1) then, in inches): unknown;
   - unit CENTIMETER: trusted, unless it is a whole number of dots per inch below
     :data:`MIN_SCANNER_DPI` written in centimetres (28.3465/cm is 72 dpi), a screen default;
   - unit INCH: trusted only at :data:`MIN_SCANNER_DPI` or more. Screens write 72 or 96 dpi, printers
     and office scanners 150-600 dpi; no slide scanner or microscope camera images pixels as coarse as
     25.4 µm (1000 dpi), so a value below that is a writer's default, not a measurement.

OME-Zarr's ``coordinateTransformations`` scale counts only with a length unit on the Y and X axes
(see :mod:`pixseg.io.readers.zarr_store`). Anything else is unknown: ``pixel_size=None``, and areas
are in pixels unless ``--pixel-size`` sets it. A pyramid level's pixel size is level 0's times the
level's downsampling.
"""

from __future__ import annotations

import re
from typing import Any
from xml.etree import ElementTree

#: Micrometres per unit, for OME-XML and OME-Zarr length units.
MICROMETRES = {
    "m": 1e6, "meter": 1e6, "cm": 1e4, "centimeter": 1e4, "mm": 1e3, "millimeter": 1e3,
    "\u00b5m": 1.0, "\u03bcm": 1.0, "um": 1.0, "micrometer": 1.0, "micron": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "inch": 25400.0, "in": 25400.0,
}  # fmt: skip
#: The coarsest resolution (dots per inch) taken for a measurement: 25.4 µm per pixel.
MIN_SCANNER_DPI = 1000.0
_INCH, _CENTIMETER = 2, 3


def tiff_pixel_size(tif: Any, series: int) -> tuple[float, float] | None:
    """(Y, X) micrometres per pixel of level 0 of series ``series`` of an open ``tifffile.TiffFile``, or None."""
    page = tif.series[series].levels[0].keyframe
    size = None
    if tif.is_ome and tif.ome_metadata:
        size = _xml_pixels(tif.ome_metadata, series, _ome_size)
    elif tif.is_scn and tif.scn_metadata:
        size = _xml_pixels(tif.scn_metadata, series, _scn_size)
    elif tif.is_svs:
        match = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", page.description or "")
        if match and float(match.group(1)) > 0:
            size = float(match.group(1)), float(match.group(1))
    return size or resolution_pixel_size(int(page.resolutionunit), page.resolution)


def resolution_pixel_size(unit: int, resolution: tuple[float, float]) -> tuple[float, float] | None:
    """(Y, X) micrometres per pixel from TIFF resolution tags ((X, Y) pixels per ``unit``), or None
    when they are absent or a default (see the module's rules)."""
    per_inch = {_INCH: 1.0, _CENTIMETER: 2.54}.get(unit)
    if per_inch is None or not all(value > 0 for value in resolution) or tuple(resolution) == (1, 1):
        return None
    dpi = [value * per_inch for value in resolution]
    if unit == _INCH and min(dpi) < MIN_SCANNER_DPI:
        return None
    if all(d < MIN_SCANNER_DPI and abs(d - round(d)) < 1e-3 for d in dpi):
        return None
    return 25400.0 / dpi[1], 25400.0 / dpi[0]


def scaled_pixel_size(
    base: tuple[float, float] | None, base_shape: tuple[int, int], shape: tuple[int, int]
) -> tuple[float, float] | None:
    """Pixel size of a pyramid level from the full-resolution one and the (Y, X) shapes."""
    if base is None:
        return None
    return base[0] * base_shape[0] / shape[0], base[1] * base_shape[1] / shape[1]


def _xml_pixels(xml: str, series: int, size_of: Any) -> tuple[float, float] | None:
    """``size_of(image)`` of the ``series``-th image element of an OME or SCN XML document."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    images = [el for el in root.iter() if _local(el.tag) == "Image" or _local(el.tag) == "image"]
    if series >= len(images):
        return None
    return size_of(images[series])  # type: ignore[no-any-return]


def _ome_size(image: ElementTree.Element) -> tuple[float, float] | None:
    pixels = next((el for el in image if _local(el.tag) == "Pixels"), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib or "PhysicalSizeY" not in pixels.attrib:
        return None
    try:
        size_x = float(pixels.attrib["PhysicalSizeX"]) * MICROMETRES[pixels.attrib.get("PhysicalSizeXUnit", "µm")]
        size_y = float(pixels.attrib["PhysicalSizeY"]) * MICROMETRES[pixels.attrib.get("PhysicalSizeYUnit", "µm")]
    except (KeyError, ValueError):
        return None
    return (size_y, size_x) if size_x > 0 and size_y > 0 else None


def _scn_size(image: ElementTree.Element) -> tuple[float, float] | None:
    view = next((el for el in image if _local(el.tag) == "view"), None)
    pixels = next((el for el in image if _local(el.tag) == "pixels"), None)
    if view is None or pixels is None:
        return None
    try:
        size = [float(view.attrib[f"size{a}"]) / float(pixels.attrib[f"size{a}"]) * 1e-3 for a in ("Y", "X")]
    except (KeyError, ValueError, ZeroDivisionError):
        return None
    return (size[0], size[1]) if min(size) > 0 else None


def _local(tag: str) -> str:
    """An XML tag without its namespace."""
    return tag.rpartition("}")[2]
