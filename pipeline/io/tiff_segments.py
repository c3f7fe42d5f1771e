"""Regions of a one-page TIFF level, decoded tile by tile (or strip by strip) in the calling thread.

``tifffile.imread(aszarr=True)`` read through zarr 3 decodes every tile on zarr's single
event-loop thread, so dask's threads wait on one core (measured here: 2 threads read a
16384^2 zlib TIFF no faster than 1). This reader reads each segment's bytes with
``os.pread`` (no shared file position, no lock; see :func:`read_at` for systems without it), or
for a URL as concurrent range requests of the object (:class:`~pixseg.io.remote.RangeSource`:
the header and IFDs are parsed through a small-block file object, pixel data is never
downloaded whole), and decodes it with tifffile's own per-page decoder (which handles every compression,
predictor, JPEG tables and byte order tifffile reads), so concurrent reads of different
regions decode on different cores.

Uncompressed strips whose byte counts match their rows (see :func:`rows_readable`) are read a
band of rows at a time, straight from the file: a strip of any size costs only the rows a
region needs.
"""

from __future__ import annotations

import math
import os
import posixpath
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from pixseg.io.remote import RangeSource, is_url, open_file, public_url

#: Only tifffile's public ``TiffPage.decode`` is called: edge tiles may decode smaller than the
#: tile, and :meth:`TiffSegmentReader._place` copies only the part inside the image either way.
_JPEG_COMPRESSIONS = (6, 7, 34892, 33007)


def read_at(fd: int, offset: int, count: int, lock: threading.Lock) -> bytes:
    """Read ``count`` bytes of the open file ``fd`` starting at ``offset``.

    With ``os.pread`` (POSIX) the read neither uses nor moves the shared file position, so
    threads read concurrently; where it does not exist (Windows) it seeks and reads under
    ``lock``, which must then guard every read of ``fd``.
    """
    pread = getattr(os, "pread", None)
    if pread is not None:
        return pread(fd, count, offset)
    with lock:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, count)


def segment_readable(page: Any, n_pages: int) -> bool:
    """Whether :class:`TiffSegmentReader` can read this level: one 2-D page (tiled or striped),
    chunky or planar samples, a dtype tifffile decodes."""
    import tifffile

    return (
        n_pages == 1
        and isinstance(page, tifffile.TiffPage)
        and page.imagedepth == 1
        and page.dtype is not None
        and len(page.dataoffsets) > 0
    )


def rows_readable(page: Any) -> bool:
    """Whether every strip of ``page`` is uncompressed, byte-aligned and exactly as long as its rows,
    so that any band of rows can be read from the file without decoding a whole strip."""
    if page.is_tiled or page.compression != 1 or page.fillorder != 1 or page.dtype is None:
        return False
    if page.bitspersample != np.dtype(page.dtype).itemsize * 8:
        return False
    planes, _, height, width, contig = (int(n) for n in page.shaped)
    rows = min(int(page.rowsperstrip or height), height)
    per_plane = math.ceil(height / rows)
    counts = np.asarray(page.databytecounts, dtype=np.int64)
    if counts.size != planes * per_plane:
        return False
    strip_rows = np.minimum(rows, height - np.arange(per_plane, dtype=np.int64) * rows)
    expected = np.tile(strip_rows * (width * contig * np.dtype(page.dtype).itemsize), planes)
    return bool(np.array_equal(counts, expected))


class FileSource:
    """Byte ranges of a local file, read with :func:`read_at` (the local twin of
    :class:`pixseg.io.remote.RangeSource`)."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._lock = threading.Lock()  # used only where os.pread does not exist

    def read(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of each ``(offset, count)`` range, in order."""
        return [read_at(self._fd, offset, count, self._lock) if count else b"" for offset, count in ranges]

    def close(self) -> None:
        """Release the file handle."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


def open_tiff_file(path: str) -> Any:
    """``tifffile.TiffFile`` over a local path, or over a URL read a block at a time (never the whole object).

    Raises
    ------
    InputNotFoundError, InputError
        If a URL's object does not exist or cannot be read.
    """
    import tifffile

    if not is_url(path):
        return tifffile.TiffFile(path)
    return tifffile.TiffFile(open_file(path), name=posixpath.basename(public_url(path)))


class TiffSegmentReader:
    """Array-like over one TIFF page, shape (Y, X, S), that decodes only the segments a region needs.

    Parameters
    ----------
    path : str
        The TIFF file (opened read-only, never modified), or its URL.
    series : int
        Series index (pixseg reads series 0).
    level : int
        Pyramid level of the series; it must satisfy :func:`segment_readable`.

    Notes
    -----
    Thread-safe: each ``__getitem__`` fetches the byte ranges of the segments a region needs
    in one call (a local file's positional reads, or concurrent range requests of a URL's
    :class:`~pixseg.io.remote.RangeSource`) and decodes them independently, in the calling thread.
    """

    _source: Any = None
    _tif: Any = None

    def __init__(self, path: str, *, series: int = 0, level: int = 0) -> None:
        self._tif = open_tiff_file(path)
        page: Any = self._tif.series[series].levels[level].pages[0]  # a TiffPage (see segment_readable)
        self._decode = page.decode
        self._decode_args: dict[str, Any] = {}
        if page.compression in _JPEG_COMPRESSIONS:
            self._decode_args.update(jpegtables=page.jpegtables, jpegheader=page.jpegheader)
        self._offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        self._counts = np.asarray(page.databytecounts, dtype=np.int64)
        planes, _, height, width, contig = page.shaped
        self._planes = int(planes)
        self.shape = (int(height), int(width), int(planes * contig))
        self.dtype = np.dtype(page.dtype).newbyteorder("=")
        self.ndim = 3
        if page.is_tiled:
            self._segment = (int(page.tilelength), int(page.tilewidth))
        else:
            self._segment = (min(int(page.rowsperstrip or height), int(height)), int(width))
        self._grid = (math.ceil(height / self._segment[0]), math.ceil(width / self._segment[1]))
        self._fill = page.nodata or 0
        self._row_dtype: np.dtype | None = None
        if rows_readable(page):
            self._row_dtype = np.dtype(page.dtype).newbyteorder(self._tif.byteorder)
            self._row_shape = (int(width), int(contig))
        self._source = RangeSource(path) if is_url(path) else FileSource(path)

    def close(self) -> None:
        """Release the file handles."""
        if self._source is not None:
            self._source.close()
        if self._tif is not None:
            self._tif.close()

    def __del__(self) -> None:
        self.close()

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        """Decode the region ``key`` (three slices with step 1), shape (h, w, len(channels))."""
        ys, xs, cs = (k.indices(n) for k, n in zip(key, self.shape, strict=True))
        top, bottom, left, right = ys[0], ys[1], xs[0], xs[1]
        region = np.empty((bottom - top, right - left, self.shape[2]), dtype=self.dtype)
        seg_h, seg_w = self._segment
        per_plane = self._grid[0] * self._grid[1]
        indices = [
            plane * per_plane + row * self._grid[1] + col
            for row in range(top // seg_h, (bottom - 1) // seg_h + 1 if bottom > top else 0)
            for col in range(left // seg_w, (right - 1) // seg_w + 1 if right > left else 0)
            for plane in range(self._planes)
        ]
        if self._row_dtype is not None:
            ranges = [self._row_range(index, top, bottom) for index in indices]
            for index, data in zip(indices, self._source.read(ranges), strict=True):
                self._place_rows(region, index, top, left, data)
        else:
            ranges = [(int(self._offsets[index]), int(self._counts[index])) for index in indices]
            for index, data in zip(indices, self._source.read(ranges), strict=True):
                self._place(region, index, top, left, data or None)
        return region[..., cs[0] : cs[1] : cs[2]]

    def _place(self, region: np.ndarray, index: int, top: int, left: int, data: bytes | memoryview | None) -> None:
        """Decode segment ``index`` from its bytes ``data`` (None: not stored) and copy its overlap
        with ``region`` (whose corner is (top, left))."""
        segment, position, _ = self._decode(data, index, **self._decode_args)
        plane, _, seg_top, seg_left, _ = position
        seg_h, seg_w = self._segment
        y0, y1 = max(seg_top, top), min(seg_top + seg_h, top + region.shape[0], self.shape[0])
        x0, x1 = max(seg_left, left), min(seg_left + seg_w, left + region.shape[1], self.shape[1])
        channels = slice(plane, plane + 1) if self._planes > 1 else slice(None)
        target = region[y0 - top : y1 - top, x0 - left : x1 - left, channels]
        if segment is None:
            target[...] = self._fill
        else:
            target[...] = segment[0, y0 - seg_top : y1 - seg_top, x0 - seg_left : x1 - seg_left]

    def _rows_of(self, index: int, top: int, bottom: int) -> tuple[int, int, int]:
        """Plane, first and end row (of the image) of uncompressed strip ``index`` within rows [top, bottom)."""
        plane, strip = divmod(index, self._grid[0])
        seg_top = strip * self._segment[0]
        return plane, max(seg_top, top), min(seg_top + self._segment[0], bottom, self.shape[0])

    def _row_range(self, index: int, top: int, bottom: int) -> tuple[int, int]:
        """The (offset, count) of the rows of uncompressed strip ``index`` within rows [top, bottom)."""
        assert self._row_dtype is not None
        _, y0, y1 = self._rows_of(index, top, bottom)
        row_bytes = math.prod(self._row_shape) * self._row_dtype.itemsize
        seg_top = (index % self._grid[0]) * self._segment[0]
        return int(self._offsets[index]) + (y0 - seg_top) * row_bytes, (y1 - y0) * row_bytes

    def _place_rows(self, region: np.ndarray, index: int, top: int, left: int, data: bytes | memoryview) -> None:
        """Copy the rows of uncompressed strip ``index`` (``data``, from :meth:`_row_range`) into ``region``."""
        assert self._row_dtype is not None
        plane, y0, y1 = self._rows_of(index, top, top + region.shape[0])
        rows = np.frombuffer(data, dtype=self._row_dtype).reshape(y1 - y0, *self._row_shape)
        channels = slice(plane, plane + 1) if self._planes > 1 else slice(None)
        right = min(left + region.shape[1], self.shape[1])
        region[y0 - top : y1 - top, : right - left, channels] = rows[:, left:right]
