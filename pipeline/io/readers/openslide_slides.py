"""Whole-slide formats tifffile cannot read, through OpenSlide: MRXS, VMS/VMU, DICOM WSI, Sakura SVSlide.

The TIFF family (SVS, NDPI, SCN, BIF, Philips, generic tiled TIFF) never comes here: it is
sniffed first and read by tifffile, which measured faster (``benchmarks/bench_readers.py``).
OpenSlide decides what a file is by its content (``OpenSlide.detect_format``). A DICOM WSI is a
directory of instances (one per pyramid level, plus label and overview): a directory is read
through its first DICOM file, from which OpenSlide finds the other instances of the series; a
single ``.dcm`` file reads the same way. An MRXS slide is a ``.mrxs`` file next to a directory of
the same name.

Regions come from ``read_region`` as RGBA with straight (not premultiplied) colour: OpenSlide
un-premultiplies its internal ARGB. Pixels with alpha 0 are where the scanner took no image (the
gaps between MRXS or sparse DICOM tiles); they are kept as an alpha channel, so they are no data
(label 0), not glass: a model fitted on these slides has RGB + alpha. ``--level N`` reads OpenSlide's
level N; a region of a reduced level is read at the level-0 position ``round(x * downsample)``.
That is exact when the downsample is a whole number (the power-of-two levels of MRXS and DICOM
pyramids). Where it is not (a level of 2221 columns under 4443 has 2.0005), OpenSlide resamples a
region that starts between level-0 pixels, shifting it by a fraction of a pixel; one warning says
so. The pixel size is ``openslide.mpp-x`` and ``openslide.mpp-y`` (µm) when the file has them,
else unknown.
"""

from __future__ import annotations

import functools
import logging
import math
import os

import numpy as np
import openslide

from pixseg.errors import InputError
from pixseg.io.readers._base import RegionReader, check_decode_size, input_errors, is_dicom_head, read_head
from pixseg.io.readers.pixel_size import scaled_pixel_size
from pixseg.io.readers.selection import Selection, canonical_axes, choose_series

logger = logging.getLogger(__name__)

#: Name endings of the formats read here; content decides first, these only name them in messages.
OPENSLIDE_SUFFIXES = (".mrxs", ".vms", ".vmu", ".dcm", ".svslide")
#: What OpenSlide raises for a file it cannot open or a region it cannot decode
#: (``OpenSlideUnsupportedFormatError`` subclasses ``OpenSlideError``); OSError for an unreadable file.
OPENSLIDE_ERRORS: tuple[type[BaseException], ...] = (openslide.OpenSlideError, OSError)
#: Tile edge assumed when a slide does not state its tile size.
_DEFAULT_TILE = 256


def sniff_openslide(path: str) -> bool:
    """Whether OpenSlide recognises the file at ``path`` as a slide it reads (TIFF files never get
    here: :data:`~pixseg.io.readers.formats.FORMATS` tries the TIFF family first)."""
    return _vendor(path) is not None


def sniff_dicom_directory(path: str) -> bool:
    """Whether the directory ``path`` holds a DICOM WSI instance OpenSlide reads."""
    return _dicom_instance(path) is not None


def open_openslide(path: str, level: int, max_bytes: int, select: Selection) -> RegionReader:
    """Region reader over pyramid level ``level`` of the slide at ``path`` (a file, or a directory
    of DICOM instances), axes (Y, X, RGBA).

    Raises
    ------
    InputError
        If OpenSlide cannot open the file (``OpenSlideUnsupportedFormatError``: not a format it
        reads; ``OpenSlideError``: corrupt), the series, plane or ``level`` does not exist, or one
        tile decodes to more than ``max_bytes``.
    """
    slide_path = _slide_file(path)
    with input_errors(f"cannot read slide {path!r} with OpenSlide", OPENSLIDE_ERRORS, library="openslide"):
        slide = _open_slide(path, slide_path)
        try:
            choose_series(path, ["main image"], select.series)
            n_levels = slide.level_count
            if level >= n_levels:
                raise InputError(f"--level {level} does not exist in {path!r}: it has {n_levels} level(s)")
            level_shapes = tuple((int(h), int(w)) for w, h in slide.level_dimensions)
            properties = dict(slide.properties)
        finally:
            slide.close()
    downsample = float(properties.get(f"openslide.level[{level}].downsample", "1"))
    if abs(downsample - round(downsample)) > 1e-9:
        logger.warning(
            "level %d of %s has a downsample of %.4f, not a whole number: OpenSlide resamples its regions by "
            "a fraction of a pixel (read level 0, or a level with a whole-number downsample, for exact pixels)",
            level,
            path,
            downsample,
        )
    shape = (*level_shapes[level], 4)
    canonical_axes("YXC", shape, path, select.plane)
    tile = _tile_size(properties, level)
    check_decode_size(path, "tiles", (*tile, 4), np.uint8, max_bytes)
    return RegionReader(
        path=path,
        kind="openslide",
        open_native=functools.partial(OpenSlideLevel, slide_path, level),
        native_axes="YXC",
        native_shape=shape,
        dtype=np.dtype(np.uint8),
        native_chunks=tile,
        level_shapes=level_shapes,
        has_alpha=True,
        decode_errors=OPENSLIDE_ERRORS,
        pixel_size=scaled_pixel_size(_mpp(properties), level_shapes[0], level_shapes[level]),
        plane=select.plane,
        reader="openslide",
        flavour=str(properties.get(openslide.PROPERTY_NAME_VENDOR, "")),
    )


class OpenSlideLevel:
    """One pyramid level of an open slide as an array of shape (Y, X, 4), uint8 RGBA.

    Parameters
    ----------
    path : str
        The slide file OpenSlide opens.
    level : int
        The pyramid level (0 = full resolution).
    """

    def __init__(self, path: str, level: int) -> None:
        self._slide = openslide.OpenSlide(path)
        self._level = level
        self._downsample = float(self._slide.level_downsamples[level])
        width, height = self._slide.level_dimensions[level]
        self.shape = (int(height), int(width), 4)

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        ys, xs, cs = key
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0), 4), np.uint8)[:, :, cs]
        location = (round(x0 * self._downsample), round(y0 * self._downsample))
        region = self._slide.read_region(location, self._level, (x1 - x0, y1 - y0))
        return np.asarray(region)[:, :, cs]


def _open_slide(path: str, slide_path: str) -> openslide.OpenSlide:
    """``OpenSlide(slide_path)``; what it raises becomes one line naming the exception and ``path``.

    Raises
    ------
    InputError
        ``OpenSlideUnsupportedFormatError`` (not a format OpenSlide reads), ``OpenSlideError``
        (a damaged slide) or OSError, by name.
    """
    try:
        return openslide.OpenSlide(slide_path)
    except OPENSLIDE_ERRORS as err:
        raise InputError(f"cannot read slide {path!r} with OpenSlide: {type(err).__name__}: {err}") from err


def _vendor(path: str) -> str | None:
    """OpenSlide's name for the format of ``path``, or None (also when it cannot be read)."""
    try:
        return openslide.OpenSlide.detect_format(path)
    except OPENSLIDE_ERRORS:
        return None


def _dicom_instance(directory: str) -> str | None:
    """The first file (by name) of ``directory`` that is a DICOM file OpenSlide reads, or None."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return None
    for name in names:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and is_dicom_head(read_head(candidate, 132)) and _vendor(candidate):
            return candidate
    return None


def _slide_file(path: str) -> str:
    """The file OpenSlide opens for ``path``: the path itself, or a directory's first DICOM instance."""
    if not os.path.isdir(path):
        return path
    instance = _dicom_instance(path)
    if instance is None:
        raise InputError(f"directory {path!r} holds no DICOM WSI instance that OpenSlide reads")
    return instance


def _tile_size(properties: dict[str, str], level: int) -> tuple[int, int]:
    """(Y, X) of the level's tiles as the slide states them, else :data:`_DEFAULT_TILE` a side."""
    sizes = []
    for axis in ("height", "width"):
        value = properties.get(f"openslide.level[{level}].tile-{axis}", "")
        sizes.append(int(value) if value.isdigit() and int(value) > 0 else _DEFAULT_TILE)
    return sizes[0], sizes[1]


def _mpp(properties: dict[str, str]) -> tuple[float, float] | None:
    """(Y, X) micrometres per pixel of level 0 from ``openslide.mpp-y``/``mpp-x``, or None when
    either is absent or not a positive finite number."""
    sizes = []
    for name in (openslide.PROPERTY_NAME_MPP_Y, openslide.PROPERTY_NAME_MPP_X):
        try:
            value = float(properties.get(name, "nan"))
        except ValueError:
            return None
        if not (math.isfinite(value) and value > 0):
            return None
        sizes.append(value)
    return sizes[0], sizes[1]
