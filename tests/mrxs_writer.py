"""A minimal MIRAX (3DHISTECH ``.mrxs``) writer for tests, following OpenSlide's own parser
(``src/openslide-vendor-mirax.c`` in openslide/openslide): no public MRXS slide is small enough to
commit (``tests/data/README.md``).

A slide ``NAME.mrxs`` is a marker file (OpenSlide checks only its name and existence, never its
content; this writer puts one line of text in it) next to a directory ``NAME/`` holding:

- ``Slidedat.ini``: the ``[GENERAL]`` grid of camera images, the ``[HIERARCHICAL]`` "Slide zoom
  level" with one section per level (image size, format, concat exponent, overlap, MPP, fill
  colour), and the ``[DATAFILE]`` list.
- ``Index.dat``: ``"01.02"`` + the slide id, then a pointer to the hierarchical table (one pointer
  per zoom level to a ``[0, first page]`` list head) and a pointer to the (empty) non-hierarchical
  table. Each page is ``[count, next page (0 = last)]`` then ``count`` records of
  ``(image index, offset, length, file number)``; all integers are little-endian int32.
- ``Data0000.dat``: the encoded images back to back.

What it writes is the simplest layout OpenSlide reads: one image per camera position
(``CameraImageDivisionsPerSide=1``), no overlap and no position buffer, so OpenSlide places image
``(x, y)`` at ``(x * width, y * height)``; level ``k`` concatenates ``2^k x 2^k`` images of level 0,
each downsampled by a block mean (as a scanner's pyramid), into one image of the same size.
"""

from __future__ import annotations

import io
import struct
import uuid
from pathlib import Path

import numpy as np
from PIL import Image
from slides import downsample

#: The Index.dat version OpenSlide requires.
_INDEX_VERSION = b"01.02"
#: The image formats OpenSlide's MIRAX reader decodes, by their Slidedat.ini name and Pillow's.
_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "BMP24": "BMP"}


def write_mrxs(
    path: str | Path,
    pixels: np.ndarray,
    *,
    image_size: int = 256,
    levels: int = 2,
    image_format: str = "PNG",
    mpp: tuple[float, float] = (0.25, 0.25),
    quality: int = 95,
) -> Path:
    """Write ``pixels`` as the MRXS slide ``path`` (``NAME.mrxs`` plus the directory ``NAME/``).

    Parameters
    ----------
    path : path-like
        The ``.mrxs`` file to write.
    pixels : numpy.ndarray
        (H, W, 3) uint8 RGB; H and W multiples of ``image_size``.
    image_size : int
        Edge of each camera image (the tiles OpenSlide reports).
    levels : int
        Pyramid levels; level ``k`` is downsampled ``2^k`` times.
    image_format : {"PNG", "JPEG", "BMP24"}
        How the images are encoded; PNG keeps the pixels exactly.
    mpp : (float, float)
        Micrometres per pixel, (Y, X), of level 0.
    quality : int
        JPEG quality.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    height, width = pixels.shape[:2]
    if path.suffix != ".mrxs" or pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError("write_mrxs writes (H, W, 3) uint8 pixels to a NAME.mrxs path")
    if height % image_size or width % image_size:
        raise ValueError(f"the image {height}x{width} is not a whole number of {image_size}-pixel images")
    images_y, images_x = height // image_size, width // image_size
    slide_id = str(uuid.uuid4())
    directory = path.with_suffix("")
    directory.mkdir(parents=True, exist_ok=True)
    data = bytearray()
    pages = []
    for level in range(levels):
        concat = 2**level
        records = []
        for y in range(0, images_y, concat):
            for x in range(0, images_x, concat):
                block = _padded(pixels, y * image_size, x * image_size, concat * image_size)
                encoded = _encode(downsample(block, concat) if concat > 1 else block, image_format, quality)
                records.append((y * images_x + x, len(data), len(encoded), 0))
                data += encoded
        pages.append(records)
    (directory / "Data0000.dat").write_bytes(bytes(data))
    (directory / "Index.dat").write_bytes(_index(slide_id, pages))
    (directory / "Slidedat.ini").write_text(
        _slidedat(slide_id, images_x, images_y, levels, image_size, image_format, mpp), encoding="utf-8"
    )
    path.write_text(f"MIRAX slide {slide_id}: see {directory.name}/Slidedat.ini\n", encoding="ascii")
    return path


def _padded(pixels: np.ndarray, y0: int, x0: int, size: int) -> np.ndarray:
    """The ``size`` x ``size`` block of ``pixels`` at (y0, x0), padded with white past the edges."""
    block = np.full((size, size, 3), 255, np.uint8)
    part = pixels[y0 : y0 + size, x0 : x0 + size]
    block[: part.shape[0], : part.shape[1]] = part
    return block


def _encode(image: np.ndarray, image_format: str, quality: int) -> bytes:
    """``image`` encoded by Pillow in the named MIRAX image format."""
    buffer = io.BytesIO()
    options = {"quality": quality} if image_format == "JPEG" else {}
    Image.fromarray(image).save(buffer, format=_FORMATS[image_format], **options)
    return buffer.getvalue()


def _index(slide_id: str, pages: list[list[tuple[int, int, int, int]]]) -> bytes:
    """Index.dat: header, the two table pointers, one list head and one page per zoom level."""
    header = _INDEX_VERSION + slide_id.encode("ascii")
    hier_table = len(header) + 8  # after the hierarchical and non-hierarchical root pointers
    nonhier_table = hier_table + 4 * len(pages)
    body = bytearray()
    heads = []
    position = nonhier_table + 4  # after the non-hierarchical table's one (null) pointer
    for records in pages:
        heads.append(position)
        page = position + 8
        body += struct.pack("<2i", 0, page)
        body += struct.pack("<2i", len(records), 0)
        for record in records:
            body += struct.pack("<4i", *record)
        position = nonhier_table + 4 + len(body)
    tables = struct.pack(f"<{len(pages)}i", *heads) + struct.pack("<i", 0)
    return header + struct.pack("<2i", hier_table, nonhier_table) + tables + bytes(body)


def _slidedat(
    slide_id: str,
    images_x: int,
    images_y: int,
    levels: int,
    image_size: int,
    image_format: str,
    mpp: tuple[float, float],
) -> str:
    """Slidedat.ini for a slide of ``images_x`` x ``images_y`` camera images and ``levels`` zoom levels."""
    lines = [
        "[GENERAL]",
        "SLIDE_VERSION=01.02",
        f"SLIDE_ID={slide_id}",
        f"IMAGENUMBER_X={images_x}",
        f"IMAGENUMBER_Y={images_y}",
        "OBJECTIVE_MAGNIFICATION=20",
        "CameraImageDivisionsPerSide=1",
        "",
        "[HIERARCHICAL]",
        "HIER_COUNT=1",
        "NONHIER_COUNT=0",
        "INDEXFILE=Index.dat",
        "HIER_0_NAME=Slide zoom level",
        f"HIER_0_COUNT={levels}",
    ]
    for level in range(levels):
        lines += [f"HIER_0_VAL_{level}=ZoomLevel_{level}", f"HIER_0_VAL_{level}_SECTION=LAYER_0_LEVEL_{level}_SECTION"]
    lines += ["", "[DATAFILE]", "FILE_COUNT=1", "FILE_0=Data0000.dat"]
    for level in range(levels):
        lines += [
            "",
            f"[LAYER_0_LEVEL_{level}_SECTION]",
            f"IMAGE_CONCAT_FACTOR={0 if level == 0 else 1}",  # exponent over the level above
            "OVERLAP_X=0",
            "OVERLAP_Y=0",
            f"MICROMETER_PER_PIXEL_X={mpp[1] * 2**level}",
            f"MICROMETER_PER_PIXEL_Y={mpp[0] * 2**level}",
            f"IMAGE_FORMAT={image_format}",
            "IMAGE_FILL_COLOR_BGR=16777215",
            f"DIGITIZER_WIDTH={image_size}",
            f"DIGITIZER_HEIGHT={image_size}",
        ]
    return "\n".join(lines) + "\n"
