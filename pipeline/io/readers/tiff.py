"""TIFF-based formats (OME-TIFF, SVS, NDPI, QPTIFF, SCN, BIF, Philips): tifffile, tiles by the segment reader.

A one-page level is read by :class:`~pixseg.io.tiff_segments.TiffSegmentReader` (decodes on
the calling thread, so dask's threads decode in parallel); any other level through
``tifffile.imread(aszarr=True)``.

Before anything is decoded, a file whose tiles or strips decode to more than the memory budget
is refused (a small file may declare one 100,000^2 strip); uncompressed strips are exempt, as
they are read a band of rows at a time. Palette (indexed-colour) images are read as RGB through
their colormap, and the GDAL_NODATA tag (42113) gives the image's nodata value. The pixel size
follows the rules of :mod:`pixseg.io.readers.pixel_size`; series and planes those of
:mod:`pixseg.io.readers.selection`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import struct
import zlib
from collections.abc import Callable
from typing import Any

import imagecodecs
import numpy as np
import tifffile
import zarr

from pixseg.errors import InputError
from pixseg.io.readers._base import DEFAULT_CHUNK, RegionReader, check_decode_size, input_errors, read_head
from pixseg.io.readers.pixel_size import scaled_pixel_size
from pixseg.io.readers.pixel_size import tiff_pixel_size as _pixel_size
from pixseg.io.readers.selection import Selection, SeriesInfo, canonical_axes, choose_series, yx
from pixseg.io.remote import is_url, open_file, size
from pixseg.io.tiff_segments import TiffSegmentReader, open_tiff_file, rows_readable, segment_readable

logger = logging.getLogger(__name__)

#: TIFF-based names; a file is read by content first (TIFF magic), these only decide for unrecognised content.
TIFF_SUFFIXES = (
    ".tif", ".tiff", ".svs", ".btf", ".tf8", ".tf2", ".ome.tif", ".ome.tiff", ".ndpi", ".qptiff", ".scn", ".bif",
)  # fmt: skip
#: tifffile's flags of the TIFF flavours it knows, in the order ``pixseg info`` names the first that is set.
_FLAVOURS = ("ome", "svs", "ndpi", "qpi", "scn", "bif", "philips", "imagej")
#: TIFF tag GDAL_NODATA: the nodata value as ASCII text.
GDAL_NODATA_TAG = 42113
_PALETTE = 3
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


def tiff_series(path: str) -> tuple[SeriesInfo, ...]:
    """Every image series of the TIFF at ``path``: index, name, shape and axes.

    Raises
    ------
    InputError
        If the file is corrupt or truncated.
    """
    with input_errors(f"cannot read TIFF {path!r}", TIFF_ERRORS, library="tifffile"), open_tiff_file(path) as tif:
        return _series_of(tif)


def _series_of(tif: Any) -> tuple[SeriesInfo, ...]:
    return tuple(
        SeriesInfo(i, str(s.name or ""), tuple(int(n) for n in s.shape), str(s.axes)) for i, s in enumerate(tif.series)
    )


def open_tiff(path: str, level: int, max_bytes: int, select: Selection) -> RegionReader:
    """Region reader over series ``select.series`` (default 0), pyramid level ``level`` of a TIFF file,
    at the plane ``select.plane`` picks.

    A palette image is read as RGB through its colormap (uint8 when every entry is a multiple
    of 257, else uint16); the reader's ``nodata`` is the GDAL_NODATA tag's value, if any.

    Raises
    ------
    InputError
        If the file is corrupt or truncated, holds no image, the series, plane or ``level`` does
        not exist, a Z or T stack has no plane picked, or one tile or compressed strip decodes to
        more than ``max_bytes``.
    """
    with input_errors(f"cannot read TIFF {path!r}", TIFF_ERRORS, library="tifffile"), open_tiff_file(path) as tif:
        if not tif.series:
            raise InputError(f"input {path!r} holds no image series")
        series = choose_series(path, [s.name for s in _series_of(tif)], select.series)
        levels = tif.series[series].levels
        if level >= len(levels):
            raise InputError(f"--level {level} does not exist in {path!r}: it has {len(levels)} level(s)")
        chosen = levels[level]
        axes = canonical_axes(chosen.axes, chosen.shape, path, select.plane)
        if 0 in chosen.shape:
            raise InputError(f"input {path!r} has an empty shape {tuple(chosen.shape)!r}")
        page = chosen.keyframe
        native = _native_chunks(page, path)
        level_shapes = tuple(yx(lvl.axes, lvl.shape) for lvl in levels)
        dtype = np.dtype(chosen.dtype)
        has_alpha = _has_alpha(page, axes, chosen.shape)
        _check_data(path, chosen.pages)
        _check_segments(path, page)
        base_size = _pixel_size(tif, series)
        flavour = next((name for name in _FLAVOURS if getattr(tif, f"is_{name}", False)), "")
        shape = tuple(int(n) for n in chosen.shape)
        open_native: Callable[[], Any] = functools.partial(_open_level, path, series, level)
        bands = False
        if segment_readable(page, len(chosen.pages)):
            open_native = functools.partial(TiffSegmentReader, path, series=series, level=level)
            _, _, height, width, contig = page.shaped
            axes, shape = "YXC", (int(height), int(width), int(page.shaped[0] * contig))
            bands = rows_readable(page)
        if bands:
            native = _row_bands(path, page, native, max_bytes)
        else:
            check_decode_size(path, "tiles" if page.is_tiled else "strips", page.chunks, dtype, max_bytes)
        colormap = _colormap(page, axes, shape)
        nodata = _gdal_nodata(page, path)
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
        pixel_size=scaled_pixel_size(base_size, level_shapes[0], level_shapes[level]),
        colormap=colormap,
        nodata=nodata,
        plane=select.plane,
        reader="tifffile",
        flavour=flavour,
    )


def _row_bands(path: str, page: Any, native: tuple[int, int], max_bytes: int) -> tuple[int, int]:
    """Native (Y, X) of uncompressed strips read a band of rows at a time: the strips themselves
    when one fits ``max_bytes``, else bands of about ``DEFAULT_CHUNK``^2 pixels that fit it.

    Raises
    ------
    InputError
        If one row alone decodes to more than ``max_bytes``.
    """
    rows, width, samples = page.chunks[-3:] if len(page.chunks) >= 3 else (*page.chunks, 1)
    if math.prod((rows, width, samples)) * page.dtype.itemsize <= max_bytes:
        return native
    check_decode_size(path, "rows", (width, samples), page.dtype, max_bytes)
    row_bytes = int(width) * int(samples) * page.dtype.itemsize
    return max(1, min(native[0], DEFAULT_CHUNK * DEFAULT_CHUNK // int(width), max_bytes // row_bytes)), native[1]


def _colormap(page: Any, axes: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The (N, 3) colour of each index of a one-channel palette page: uint8 when every entry of the
    (uint16) ColorMap is a multiple of 257, else uint16; None for other pages."""
    if int(page.photometric) != _PALETTE or page.colormap is None:
        return None
    if dict(zip(axes, shape, strict=True)).get("C", 1) != 1:
        return None
    table = np.asarray(page.colormap, dtype=np.uint16).reshape(3, -1).T
    if not (table % 257).any():
        return (table // 257).astype(np.uint8)
    return np.ascontiguousarray(table)


def _gdal_nodata(page: Any, path: str) -> float | None:
    """The value of the page's GDAL_NODATA tag, or None (absent, or not a finite number)."""
    tag = page.tags.get(GDAL_NODATA_TAG)
    if tag is None:
        return None
    text = tag.value.decode("ascii", "replace") if isinstance(tag.value, bytes) else str(tag.value)
    try:
        value = float(text.strip().strip("\x00"))
    except ValueError:
        logger.warning("TIFF %r has a GDAL_NODATA tag %r that is not a number; ignored", path, text)
        return None
    return value if math.isfinite(value) else None


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


def _open_level(path: str, series: int, level: int) -> Any:
    store = tifffile.imread(open_file(path) if is_url(path) else path, aszarr=True, series=series, level=level)
    return zarr.open_array(store, mode="r")


def _check_data(path: str, pages: Any) -> None:
    """Refuse a TIFF whose tiles or strips lie beyond the end of the file, or that holds none."""
    file_size = size(path) if is_url(path) else os.path.getsize(path)
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


def _check_segments(path: str, page: Any) -> None:
    """Refuse a page whose tile size tags hold 0, or whose number of strips or tiles is not the
    number its size and tile or strip size call for."""
    tile = [int(page.tags[code].value) for code in (323, 322) if code in page.tags]  # TileLength, TileWidth
    if tile and min(tile) < 1:
        raise InputError(f"TIFF {path!r} declares empty {'x'.join(map(str, tile))} tiles")
    expected = math.prod(int(n) for n in page.chunked)
    found = len(page.dataoffsets)
    if found != expected or len(page.databytecounts) != expected:
        kind = "tiles" if page.is_tiled else "strips"
        raise InputError(
            f"TIFF {path!r} lists {found} {kind} ({len(page.databytecounts)} byte counts) where its size "
            f"needs {expected}: corrupt"
        )


def _has_alpha(page: Any, axes: str, shape: tuple[int, ...]) -> bool:
    channels = dict(zip(axes, shape, strict=True)).get("C", 1)
    extrasamples = tuple(getattr(page, "extrasamples", ()) or ())
    # ExtraSamples 1 (associated) and 2 (unassociated) are alpha; RGBA is 4 channels
    return channels in (2, 4) and any(int(v) in (1, 2) for v in extrasamples)
