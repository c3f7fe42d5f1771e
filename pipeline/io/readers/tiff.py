"""TIFF, BigTIFF, OME-TIFF and SVS: tifffile's metadata, tiles decoded by the segment reader.

A one-page level is read by :class:`~pixseg.io.tiff_segments.TiffSegmentReader` (decodes on
the calling thread, so dask's threads decode in parallel); any other level through
``tifffile.imread(aszarr=True)``.
"""

from __future__ import annotations

import functools
import os
import re
import struct
import zlib
from collections.abc import Callable
from typing import Any
from xml.etree import ElementTree

import imagecodecs
import numpy as np
import tifffile
import zarr

from pixseg.errors import InputError
from pixseg.io.readers._base import MICROMETRES, RegionReader, canonical_axes, input_errors, read_head, yx
from pixseg.io.tiff_segments import TiffSegmentReader, segment_readable

TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".btf", ".tf8", ".tf2", ".ome.tif", ".ome.tiff")
#: Byte orders and versions a TIFF file starts with: classic (42) and BigTIFF (43).
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

#: What tifffile (and the codecs it calls) raise for a damaged file, as seen by fuzzing tiled,
#: striped, JPEG, planar, BigTIFF and OME-TIFF files (bytes flipped, files cut short):
#: ``TiffFileError`` (a ValueError) and ValueError, KeyError, IndexError, ZeroDivisionError,
#: OverflowError and struct.error from tags with impossible values; OSError/EOFError from short
#: reads; MemoryError from absurd declared sizes; RuntimeError from imagecodecs (every codec error,
#: e.g. ``DeflateError``, ``Jpeg8Error``, subclasses it, as do NotImplementedError for an unsupported
#: layout and tifffile's "incompatible keyframe"); zlib.error from the standard-library codec;
#: ImportError (``imagecodecs.DelayedImportError``) when the codec a file needs is not installed.
#: AttributeError is absent, and a TypeError counts only when tifffile itself raises it (see
#: ``input_errors``): anywhere else they are bugs in pixseg, and surface as such.
TIFF_ERRORS: tuple[type[BaseException], ...] = (
    tifffile.TiffFileError,
    ValueError,
    KeyError,
    IndexError,
    ZeroDivisionError,
    OverflowError,
    struct.error,
    OSError,
    EOFError,
    MemoryError,
    RuntimeError,
    zlib.error,
    imagecodecs.DelayedImportError,
)


def sniff_tiff(path: str) -> bool:
    """Whether the file at ``path`` starts like a TIFF or BigTIFF."""
    return read_head(path, 4) in _TIFF_MAGIC


def open_tiff(path: str, level: int) -> RegionReader:
    """Region reader over series 0, pyramid level ``level`` of a TIFF file.

    Raises
    ------
    InputError
        If the file is corrupt or truncated, holds no image, or ``level`` does not exist.
    """
    with input_errors(f"cannot read TIFF {path!r}", TIFF_ERRORS, library="tifffile"), tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise InputError(f"input {path!r} holds no image series")
        levels = tif.series[0].levels
        if level >= len(levels):
            raise InputError(f"--level {level} does not exist in {path!r}: it has {len(levels)} level(s)")
        chosen = levels[level]
        axes = canonical_axes(chosen.axes, chosen.shape, path)
        page = chosen.keyframe
        native = _native_chunks(page, path)
        level_shapes = tuple(yx(lvl.axes, lvl.shape) for lvl in levels)
        dtype = np.dtype(chosen.dtype)
        has_alpha = _has_alpha(page, axes, chosen.shape)
        _check_data(path, chosen.pages)
        base_size = _pixel_size(tif, levels[0].keyframe)
        shape = tuple(int(n) for n in chosen.shape)
        open_native: Callable[[], Any] = functools.partial(_open_level, path, level)
        if segment_readable(page, len(chosen.pages)):
            open_native = functools.partial(TiffSegmentReader, path, level=level)
            _, _, height, width, contig = page.shaped
            axes, shape = "YXC", (int(height), int(width), int(page.shaped[0] * contig))
    return RegionReader(
        path=path,
        kind="tiff",
        open_native=open_native,
        native_axes=axes,
        native_shape=shape,
        dtype=dtype,
        native_chunks=native,
        level_shapes=level_shapes,
        has_alpha=has_alpha,
        decode_errors=TIFF_ERRORS,
        pixel_size=_scaled_pixel_size(base_size, level_shapes[0], level_shapes[level]),
    )


def _native_chunks(page: Any, path: str) -> tuple[int, int]:
    """(Y, X) of the page's tiles, or of its strips (full width)."""
    if page.is_tiled:
        native = (page.tilelength, page.tilewidth)
    else:
        native = (page.rowsperstrip or page.imagelength, page.imagewidth)
    if not all(isinstance(n, int | np.integer) for n in native):
        raise InputError(f"TIFF {path!r} has malformed tile or strip size tags: {native!r}")
    if page.is_tiled:
        if min(native) < 1:
            raise InputError(f"TIFF {path!r} declares empty {native[0]}x{native[1]} tiles")
        return int(native[0]), int(native[1])
    return max(1, min(int(native[0]), int(page.imagelength))), int(native[1])


def _open_level(path: str, level: int) -> Any:
    store = tifffile.imread(path, aszarr=True, series=0, level=level)
    return zarr.open_array(store, mode="r")


def _check_data(path: str, pages: Any) -> None:
    """Refuse a TIFF whose tiles or strips lie beyond the end of the file, or that holds none."""
    file_size = os.path.getsize(path)
    total = 0
    for page in pages:
        if page is None:
            continue
        offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        counts = np.asarray(page.databytecounts, dtype=np.int64)
        total += int(counts.sum())
        if offsets.size and int((offsets + counts).max()) > file_size:
            raise InputError(
                f"TIFF {path!r} declares pixel data beyond the end of the file ({file_size} bytes): "
                "truncated or corrupt"
            )
    if total == 0:
        raise InputError(f"TIFF {path!r} holds no pixel data")


def _scaled_pixel_size(
    base: tuple[float, float] | None, base_shape: tuple[int, int], shape: tuple[int, int]
) -> tuple[float, float] | None:
    """Pixel size of a pyramid level from the full-resolution one and the shapes."""
    if base is None:
        return None
    return base[0] * base_shape[0] / shape[0], base[1] * base_shape[1] / shape[1]


def _pixel_size(tif: Any, page: Any) -> tuple[float, float] | None:
    """(Y, X) micrometres per pixel from OME-XML, an Aperio MPP, or the resolution tags."""
    if tif.is_ome and tif.ome_metadata:
        size = _ome_xml_pixel_size(tif.ome_metadata)
        if size is not None:
            return size
    if tif.is_svs:
        match = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", page.description)
        if match and float(match.group(1)) > 0:
            return float(match.group(1)), float(match.group(1))
    if int(page.resolutionunit) in (2, 3):  # inch, centimetre
        per_um_x, per_um_y = page.get_resolution("micrometer")
        if per_um_x > 0 and per_um_y > 0:
            return 1.0 / per_um_y, 1.0 / per_um_x
    return None


def _ome_xml_pixel_size(xml: str) -> tuple[float, float] | None:
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib or "PhysicalSizeY" not in pixels.attrib:
        return None
    try:
        size_x = float(pixels.attrib["PhysicalSizeX"]) * MICROMETRES[pixels.attrib.get("PhysicalSizeXUnit", "µm")]
        size_y = float(pixels.attrib["PhysicalSizeY"]) * MICROMETRES[pixels.attrib.get("PhysicalSizeYUnit", "µm")]
    except (KeyError, ValueError):
        return None
    return (size_y, size_x) if size_x > 0 and size_y > 0 else None


def _has_alpha(page: Any, axes: str, shape: tuple[int, ...]) -> bool:
    channels = dict(zip(axes, shape, strict=True)).get("C", 1)
    extrasamples = tuple(getattr(page, "extrasamples", ()) or ())
    # ExtraSamples 1 (associated) and 2 (unassociated) are alpha; RGBA is 4 channels
    return channels in (2, 4) and any(int(v) in (1, 2) for v in extrasamples)
