"""The formats pixseg reads, tried by content first, then by suffix; and which reader a path gets.

The TIFF family is tried before OpenSlide, so tifffile reads SVS, NDPI, SCN and BIF (it measured
faster on the same SVS: ``benchmarks/bench_readers.py``); OpenSlide reads what tifffile cannot.
OpenSlide and libCZI open local paths only: a URL of one of their formats (by content or suffix)
is refused with a line saying so, before anything is downloaded.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from pixseg.errors import InputError, UnsupportedFormatError
from pixseg.io.readers._base import RegionReader
from pixseg.io.readers.czi import CZI_SUFFIXES, czi_series, open_czi, sniff_czi
from pixseg.io.readers.openslide_slides import (
    OPENSLIDE_SUFFIXES,
    open_openslide,
    sniff_dicom_directory,
    sniff_openslide,
)
from pixseg.io.readers.plain import PLAIN_SUFFIXES, open_plain, sniff_plain
from pixseg.io.readers.selection import Selection, SeriesInfo
from pixseg.io.readers.tiff import TIFF_SUFFIXES, open_tiff, sniff_tiff, tiff_series
from pixseg.io.readers.zarr_store import ZARR_MARKERS, ZARR_SUFFIXES, open_zarr, sniff_zarr, zarr_series
from pixseg.io.remote import is_dir, is_url, public_url


@dataclass(frozen=True)
class Format:
    """One family of input formats pixseg reads.

    Attributes
    ----------
    name : str
        How error messages name it.
    suffixes : tuple of str
        Lower-case name endings that select it when the content is not recognised.
    sniff : callable
        ``sniff(path) -> bool``: whether the content at ``path`` is of this format.
    open : callable
        ``open(path, level, max_bytes, select) -> RegionReader`` of the series and plane
        ``select`` (a :class:`~pixseg.io.readers.selection.Selection`) picks; raises
        :class:`~pixseg.errors.InputError`, also when one tile, strip or chunk would decode to
        more than ``max_bytes``.
    series : callable
        ``series(path) -> tuple of SeriesInfo``: every series of a file holding several, else empty.
    directory : bool
        Whether inputs of this format are directories (stores) rather than files.
    local_only : bool
        Whether its reader opens local paths only (OpenSlide, libCZI), never URLs.
    """

    name: str
    suffixes: tuple[str, ...]
    sniff: Callable[[str], bool]
    open: Callable[[str, int, int, Selection], RegionReader]
    series: Callable[[str], tuple[SeriesInfo, ...]] = lambda path: ()
    directory: bool = False
    local_only: bool = False


#: Every format pixseg reads, tried in this order: by content first, then by suffix.
FORMATS: tuple[Format, ...] = (
    Format("TIFF/BigTIFF/OME-TIFF/SVS/NDPI/QPTIFF/SCN/BIF", TIFF_SUFFIXES, sniff_tiff, open_tiff, tiff_series),
    Format("zarr/OME-Zarr/bioformats2raw directory", ZARR_SUFFIXES, sniff_zarr, open_zarr, zarr_series, True),
    Format("DICOM WSI directory", (), sniff_dicom_directory, open_openslide, directory=True, local_only=True),
    Format("PNG/JPEG", PLAIN_SUFFIXES, sniff_plain, open_plain),
    Format("Zeiss CZI", CZI_SUFFIXES, sniff_czi, open_czi, czi_series, local_only=True),
    Format("MRXS/VMS/VMU/DICOM WSI/SVSlide", OPENSLIDE_SUFFIXES, sniff_openslide, open_openslide, local_only=True),
)
#: Why a URL of a format read through OpenSlide or libCZI is refused, and what to do instead.
LOCAL_ONLY = "OpenSlide and CZI read local files only; copy it to a local disk and give that path"


def check_file_kind(path: str) -> None:
    """Refuse an input that is neither a regular file nor a directory: reading a FIFO, a device
    (``/dev/zero``) or a socket could block or never end."""
    mode = os.stat(path).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
        kind = next((name for test, name in (*kinds, (stat.S_ISSOCK, "a socket")) if test(mode)), "not a file")
        raise InputError(f"input {path!r} is {kind}, not a regular file or directory; pixseg reads image files")


def select_format(path: str) -> Format:
    """The :class:`Format` of an existing ``path``: the first whose content sniff matches, else by suffix.

    Raises
    ------
    UnsupportedFormatError
        If neither the content nor the suffix is of a format pixseg reads; the message lists them.
        Also for a URL of a format read only from local files (:data:`LOCAL_ONLY`), and for a URL
        prefix that is not a zarr store (a DICOM WSI directory can only be recognised locally).
    """
    is_directory = is_dir(path)
    candidates = [fmt for fmt in FORMATS if fmt.directory == is_directory]
    lower = path.lower().rstrip("/" + os.sep)
    found = next((fmt for fmt in candidates if fmt.sniff(path)), None)
    found = found or next((fmt for fmt in candidates if lower.endswith(fmt.suffixes)), None)
    remote = is_url(path)
    if found is not None and not (remote and found.local_only):
        return found
    if found is not None:
        raise UnsupportedFormatError(f"input {public_url(path)!r} is {found.name}: {LOCAL_ONLY}")
    if is_directory and remote:
        problem = f"is a prefix but not a zarr store (no {', '.join(ZARR_MARKERS)}); if it is a DICOM WSI, {LOCAL_ONLY}"
        raise UnsupportedFormatError(f"input {public_url(path)!r} {problem}")
    if is_directory:
        problem = (
            f"is a directory but not a zarr store (no {', '.join(ZARR_MARKERS)}) nor a DICOM WSI (no DICOM instance)"
        )
    else:
        problem = f"has an unknown suffix {os.path.splitext(lower)[1]!r} and content"
    raise UnsupportedFormatError(f"input {public_url(path)!r} {problem}; pixseg reads {supported_formats()}")


def supported_formats() -> str:
    """One line naming every format of :data:`FORMATS` with its suffixes."""
    return "; ".join(f"{fmt.name} ({', '.join(fmt.suffixes)})" if fmt.suffixes else fmt.name for fmt in FORMATS)
