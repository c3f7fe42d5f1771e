"""PNG and JPEG: the header read with Pillow, the pixels decoded whole with imagecodecs."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from pixseg.errors import InputError
from pixseg.io.readers._base import DEFAULT_CHUNK, RegionReader, check_decode_size, input_errors, read_head
from pixseg.io.readers.selection import Selection, canonical_axes, choose_series

PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg")
#: PNG/JPEG files are decoded whole; above this many pixels the user is told to tile them.
MAX_PLAIN_PIXELS = 64 * 2**20
#: The first bytes of a PNG file and of a JPEG file.
_PLAIN_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")

#: What Pillow raises for a header it cannot read: UnidentifiedImageError (an OSError) for an
#: unknown or empty file, OSError for a truncated one, ValueError and SyntaxError from damaged
#: chunks, and DecompressionBombError (a bare Exception) for absurd declared sizes.
PIL_HEADER_ERRORS: tuple[type[BaseException], ...] = (
    UnidentifiedImageError,
    OSError,
    ValueError,
    SyntaxError,
    PILImage.DecompressionBombError,
)
#: What imagecodecs raises for damaged pixel data: every codec error (``PngError``, ``Jpeg8Error``...)
#: subclasses RuntimeError; ValueError when no codec recognises the data; OSError on a short read;
#: ImportError (``DelayedImportError``) when the codec is not installed.
PLAIN_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    RuntimeError,
    ValueError,
    OSError,
    imagecodecs.DelayedImportError,
)


def sniff_plain(path: str) -> bool:
    """Whether the file at ``path`` starts like a PNG or a JPEG."""
    return read_head(path, 8).startswith(_PLAIN_MAGIC)


def open_plain(path: str, level: int, max_bytes: int, select: Selection) -> RegionReader:
    """Region reader over a PNG or JPEG file, decoded whole on first use.

    Raises
    ------
    InputError
        If the file is unreadable or corrupt (Pillow's decompression-bomb check included), larger
        than :data:`MAX_PLAIN_PIXELS`, decodes to more than ``max_bytes``, or ``level`` is not 0.
    """
    with input_errors(f"cannot read image {path!r}", PIL_HEADER_ERRORS, library="PIL"), PILImage.open(path) as pil:
        width, height = pil.size
        mode = pil.mode
        bands = len(pil.getbands())
        fmt = (pil.format or Path(path).suffix.lstrip(".")).lower()
    if level != 0:
        raise InputError(f"--level {level} does not exist in {path!r}: PNG/JPEG files have 1 level")
    if width * height > MAX_PLAIN_PIXELS:
        raise InputError(
            f"image {path!r} is {width}x{height} pixels, too large to decode whole "
            f"(limit {MAX_PLAIN_PIXELS // 2**20} Mpx; PNG/JPEG cannot be read a tile at a time); convert it to a "
            "tiled pyramidal TIFF first, e.g. `vips tiffsave IN OUT.tif --tile --pyramid --bigtiff --compression zstd` "
            "or `gdal_translate -co TILED=YES -co BIGTIFF=YES IN OUT.tif`, then run pixseg on that"
        )
    # a palette expands to RGB(A); 16- and 32-bit modes take two and four bytes a sample
    sample_dtype = np.uint16 if mode.startswith("I;16") else np.uint32 if mode in ("I", "F") else np.uint8
    samples = max(bands, 3 if mode == "P" else 1)
    check_decode_size(path, "the whole image", (height, width, samples), sample_dtype, max_bytes)
    with input_errors(f"cannot decode image {path!r}", PLAIN_DECODE_ERRORS, library="imagecodecs"):
        sample = _decode(path)
    if sample.shape[:2] != (height, width):
        raise InputError(f"image {path!r} decodes to {sample.shape!r}, not the declared {height}x{width}")
    choose_series(path, [os.path.basename(path)], select.series)
    canonical_axes("YXC", sample.shape, path, select.plane)
    return RegionReader(
        path=path,
        kind="jpeg" if fmt in ("jpeg", "jpg", "mpo") else "png",
        open_native=functools.partial(_DecodedPlain, path),
        native_axes="YXC",
        native_shape=sample.shape,
        dtype=sample.dtype,
        native_chunks=(min(DEFAULT_CHUNK, height), min(DEFAULT_CHUNK, width)),
        level_shapes=((height, width),),
        has_alpha=sample.shape[2] in (2, 4) and mode != "CMYK",
        decode_errors=PLAIN_DECODE_ERRORS,
        reader="imagecodecs",
    )


class _DecodedPlain:
    """A small PNG/JPEG decoded on first use (once per process)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __getitem__(self, key: Any) -> np.ndarray:
        return _decode(self.path)[key]


@functools.lru_cache(maxsize=4)
def _decode(path: str) -> np.ndarray:
    pixels = np.asarray(imagecodecs.imread(path))
    return pixels if pixels.ndim == 3 else pixels[..., np.newaxis]
