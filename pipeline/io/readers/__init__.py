"""Open images lazily as chunked dask arrays with canonical axes (Y, X, C).

Every reader returns an :class:`Image`: nothing is decoded until a chunk is computed.
TIFF tiles and zarr chunks are read through a small picklable region reader, so the
same graph runs on threads and on distributed worker processes, and a decode failure
surfaces as :class:`~pixseg.errors.InputError` naming the file.

Adding an input format: write a module with a ``sniff(path) -> bool`` and an
``open(path, level, max_bytes, select) -> RegionReader`` (which refuses, with
:func:`~pixseg.io.readers._base.check_decode_size`, a file whose tiles, strips or chunks decode
to more than ``max_bytes`` each, and reads the series and plane ``select`` picks), and add one
:class:`~pixseg.io.readers.formats.Format` to :data:`~pixseg.io.readers.formats.FORMATS`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from pixseg.errors import InputError, InputNotFoundError
from pixseg.io.readers._base import DEFAULT_CHUNK
from pixseg.io.readers.formats import FORMATS, Format, check_file_kind, select_format, supported_formats
from pixseg.io.readers.plain import MAX_PLAIN_PIXELS, PLAIN_SUFFIXES
from pixseg.io.readers.selection import Selection, SeriesInfo
from pixseg.io.readers.tiff import TIFF_SUFFIXES
from pixseg.io.remote import is_url, public_url, version_token
from pixseg.options import ReadOptions

__all__ = [
    "DEFAULT_CHUNK",
    "FORMATS",
    "MAX_PLAIN_PIXELS",
    "PLAIN_SUFFIXES",
    "TIFF_SUFFIXES",
    "Format",
    "Image",
    "Selection",
    "SeriesInfo",
    "describe_chunks",
    "list_series",
    "open_image",
    "open_input",
    "is_pixel_dtype",
    "select_format",
    "supported_formats",
]


@dataclass(frozen=True)
class Image:
    """A lazily opened image.

    Attributes
    ----------
    path : str
        Where the image was read from.
    kind : str
        ``"tiff"``, ``"zarr"``, ``"ome-zarr"``, ``"png"``, ``"jpeg"``, ``"openslide"`` or ``"czi"``.
    data : dask.array.Array
        Shape (Y, X, C), the file's dtype, chunked for processing; C in one chunk.
    source : array-like
        The same pixels as an array-like that reads any region ``source[ys, xs, :]`` on demand
        (picklable and thread-safe), for work that reads a few regions rather than whole chunks.
    native_chunks : tuple of int
        The (Y, X) size of the file's own tiles, strips or chunks.
    level : int
        The pyramid level ``data`` holds (0 = full resolution).
    level_shapes : tuple of tuple of int
        (Y, X) of every pyramid level in the file, level 0 first.
    has_alpha : bool
        Whether the last channel is an alpha channel (alpha == 0 means masked).
    pixel_size : tuple of float or None
        (Y, X) size of a pixel of the selected level in micrometres, when the file says.
    nodata : float or None
        The value whose pixels are marked invalid (the ``nodata`` argument of :func:`open_image`,
        else the file's own), or None.
    selection : Selection
        The series, plane and channels read (to open another level of the same image).
    reader : str
        The library that decodes the file: ``tifffile``, ``zarr``, ``imagecodecs``, ``openslide`` or
        ``pylibCZIrw``.
    flavour : str
        What the file's metadata says it is (``ome``, ``svs``, ``ndpi``, ``bioformats2raw``...), or empty.
    """

    path: str
    kind: str
    data: da.Array
    source: Any
    native_chunks: tuple[int, int]
    level: int
    level_shapes: tuple[tuple[int, int], ...]
    has_alpha: bool
    pixel_size: tuple[float, float] | None = None
    nodata: float | None = None
    selection: Selection = field(default_factory=Selection)
    reader: str = ""
    flavour: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        """(Y, X, C) of the selected level."""
        return tuple(int(n) for n in self.data.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        """The pixel dtype as stored."""
        return np.dtype(self.data.dtype)


def is_pixel_dtype(dtype: np.dtype) -> bool:
    """Whether pixseg segments pixels of ``dtype``: an integer or float dtype, not bool."""
    return dtype != np.bool_ and (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating))


def open_input(
    path: str | os.PathLike[str], read: ReadOptions, *, level: int | None = None, nodata: float | None = None
) -> Image:
    """:func:`open_image` with a run's read options: its chunk, tile memory budget, nodata, series,
    plane and channels.

    ``level`` (default ``read.level``) and ``nodata`` (default ``read.nodata``) stand in for them
    when another level or an already resolved nodata value is read.
    """
    return open_image(
        path,
        level=read.level if level is None else level,
        chunk=read.chunk,
        max_tile_memory=read.max_tile_memory,
        nodata=read.nodata if nodata is None else nodata,
        series=read.series,
        plane=read.plane,
        channels=read.channels,
    )


def list_series(path: str | os.PathLike[str]) -> tuple[SeriesInfo, ...]:
    """Every series of a file that holds several (a multi-image OME-TIFF, an SVS, a bioformats2raw
    store); empty for a file holding one image.

    Raises
    ------
    InputNotFoundError, UnsupportedFormatError, InputError
        As :func:`open_image`.
    """
    path_str = os.fspath(path)
    _check_exists(path_str)
    return select_format(path_str).series(path_str)


def open_image(
    path: str | os.PathLike[str],
    *,
    level: int = 0,
    chunk: int | None = None,
    max_tile_memory: int = ReadOptions.max_tile_memory,
    nodata: float | None = None,
    series: int | None = None,
    plane: Mapping[str, int] | None = None,
    channels: tuple[int, ...] | None = None,
) -> Image:
    """Open an image lazily.

    Parameters
    ----------
    path : path-like
        A TIFF-family file (OME-TIFF, SVS, NDPI...), a zarr array or OME-Zarr group, a PNG/JPEG file,
        a slide OpenSlide reads (MRXS, DICOM WSI...) or a CZI;
        or the URL of one (``s3://``, ``gs://``, ``https://``; see :mod:`pixseg.io.remote`).
    level : int, optional
        Pyramid level to read (0 = full resolution).
    chunk : int, optional
        Edge of the square processing chunks. By default chunks of about
        ``DEFAULT_CHUNK`` pixels a side, made of whole file tiles.
    max_tile_memory : int, optional
        Memory budget in MB of one decoded tile, strip or chunk (``--max-tile-memory``): a file
        whose own units decode to more is refused before anything is decoded (uncompressed
        strips are read a band of rows at a time instead).
    nodata : float, optional
        Pixels whose colour channels all equal it are invalid (NaN in float images; alpha 0 in
        integer images, an alpha channel being added when there is none). By default the
        value the file declares (the GDAL_NODATA tag of a TIFF), if any.
    series : int, optional
        Index of the image series to read (``--series``); by default the first.
    plane : mapping of str to int, optional
        The plane to read of a Z or T stack (``--plane``, e.g. ``{"z": 3}``); required for a stack.
    channels : tuple of int, optional
        The channels to read, in this order (``--channels``); by default all.

    Returns
    -------
    Image
        Axes (Y, X, C); computes nothing.

    Raises
    ------
    InputNotFoundError
        If the path does not exist.
    UnsupportedFormatError
        If it is not in any format of :data:`FORMATS`, by content or by suffix.
    InputError
        If it is corrupt, not a regular file or directory (a FIFO, device or socket), of
        unsupported dtype or dimensionality, or its tiles decode to more than ``max_tile_memory``,
        if ``level``, ``chunk`` or ``max_tile_memory`` is out of range, if ``series``, the plane or
        a channel does not exist, or if it is a Z or T stack and ``plane`` picks no plane.
    """
    path_str = os.fspath(path)
    if level < 0:
        raise InputError(f"--level must be >= 0, got {level!r}")
    if chunk is not None and chunk < 16:
        raise InputError(f"--chunk must be at least 16 pixels, got {chunk!r}")
    if max_tile_memory < 1:
        raise InputError(f"--max-tile-memory must be at least 1 MB, got {max_tile_memory!r}")
    version = _check_exists(path_str)
    select = Selection(series=series, plane=dict(plane or {}), channels=channels)
    source = select_format(path_str).open(path_str, level, max_tile_memory * 2**20, select)
    if channels is not None:
        source = source.selecting_channels(channels)
    nodata = source.nodata if nodata is None else nodata
    if nodata is not None:
        source = source.marking_nodata(nodata)
    dtype = np.dtype(source.dtype)
    if not is_pixel_dtype(dtype):
        raise InputError(f"input {path_str!r} has dtype {dtype.name!r}; expected an integer or float image")
    height, width, n_channels = source.shape
    if height < 1 or width < 1 or n_channels < 1:
        raise InputError(f"input {path_str!r} has an empty shape {source.shape!r}")
    chunks = _processing_chunks(source.native_chunks, (height, width), chunk)
    data = da.from_array(
        source,
        chunks=(chunks[0], chunks[1], n_channels),
        asarray=False,
        lock=False,
        fancy=False,
        meta=np.empty((0, 0, 0), dtype=dtype),
        name=f"read-{tokenize(path_str, version, level, chunks, nodata, select)}",
    )
    if chunk is None and chunks[1] == width > DEFAULT_CHUNK and chunks[0] < THIN_BAND_ROWS:
        data = _squares_of_bands(data)
    return Image(
        path=path_str,
        kind=source.kind,
        data=data,
        source=source,
        native_chunks=source.native_chunks,
        level=level,
        level_shapes=source.level_shapes,
        has_alpha=source.has_alpha,
        pixel_size=source.pixel_size,
        nodata=nodata,
        selection=select,
        reader=source.reader,
        flavour=source.flavour,
    )


def _check_exists(path: str) -> str:
    """Refuse a missing input, or a local one that is not a regular file or directory; return a
    token that changes when the input does (modification time, or a URL's size and ETag)."""
    if is_url(path):
        token = version_token(path)
        if not token:
            raise InputNotFoundError(f"input {public_url(path)!r} does not exist")
        return token
    if not os.path.exists(path):
        raise InputNotFoundError(f"input {path!r} does not exist")
    check_file_kind(path)
    return str(os.stat(path).st_mtime_ns)


#: Bytes of pixels in one row of the square chunks that full-width bands are regrouped into.
BAND_ROW_BYTES = 128 * 2**20
#: Full-width bands thinner than this are regrouped into near-square chunks: the halos of texture
#: features would cost more than the regrouping (measured in benchmarks/RESULTS.md, 2026-11-29).
THIN_BAND_ROWS = 128


def _processing_chunks(native: tuple[int, int], shape: tuple[int, int], chunk: int | None) -> tuple[int, int]:
    """Processing chunk (Y, X): ``chunk`` if given, else whole file tiles grouped to about 1 Mpx.

    A striped layout (a native chunk spanning the full width) is read in full-width bands,
    so each strip is decoded once (:func:`open_image` then regroups thin ones into near-square chunks).
    """
    if chunk is not None:
        return min(chunk, shape[0]), min(chunk, shape[1])
    native_y, native_x = native
    if native_x >= shape[1] and shape[1] > DEFAULT_CHUNK:
        rows = max(native_y, (DEFAULT_CHUNK * DEFAULT_CHUNK // shape[1]) // native_y * native_y)
        return min(rows, shape[0]), shape[1]
    return (
        min(max(1, round(DEFAULT_CHUNK / native_y)) * native_y, shape[0]),
        min(max(1, round(DEFAULT_CHUNK / native_x)) * native_x, shape[1]),
    )


def _squares_of_bands(bands: da.Array) -> da.Array:
    """Full-width bands of whole strips regrouped into chunks of about ``DEFAULT_CHUNK`` pixels a side.

    Used for bands thinner than ``THIN_BAND_ROWS`` (images wider than about 8192 pixels). Each
    strip is still decoded once per pass (by its band's task) and shared by every chunk of its
    row, while features and labels work on near-square chunks, whose halos cost far less than
    those of thin bands (measured in benchmarks/RESULTS.md). A chunk row is made of whole bands
    and holds at most ``BAND_ROW_BYTES`` of pixels (fewer rows for a very wide image), so memory
    stays bounded by a few chunk rows.
    """
    band, width, n_channels = (int(n) for n in bands.chunksize)
    row_bytes = width * n_channels * bands.dtype.itemsize
    rows = max(band, min(DEFAULT_CHUNK, BAND_ROW_BYTES // row_bytes) // band * band)
    return bands.rechunk((min(rows, bands.shape[0]), DEFAULT_CHUNK, n_channels))


def describe_chunks(image: Image) -> str:
    """One line describing the native and processing chunking of ``image``."""
    py, px = image.data.chunksize[:2]
    n_chunks = math.prod(image.data.numblocks[:2])
    return f"native tiles {image.native_chunks[0]}x{image.native_chunks[1]}, processing chunks {py}x{px} ({n_chunks})"
