"""Deep Zoom tiles made on demand from pyramid levels: pure functions over a region reader.

The Deep Zoom (DZI) scheme: level ``n`` of an image of level-0 shape (H, W) is the image
downsampled by ``scale = 2**(max_level - n)`` (``max_level = ceil(log2(max(H, W)))``), of shape
``ceil(H / scale) x ceil(W / scale)``, cut into ``tile_size`` squares that overlap their
neighbours by ``overlap`` pixels. A tile is made from the coarsest stored pyramid level that is
still at least as fine as its DZI level, reading only the region the tile covers: labels by
nearest neighbour (only values that are stored), slide pixels resampled by Pillow.

When no stored level is close enough (a slide without a pyramid), the region is read with a
stride, so a tile never reads more than about ``(MAX_OVERSAMPLING * tile_size)**2`` pixels,
whatever the image size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: A stored pyramid level is read at most this many of its pixels per tile pixel along an axis;
#: beyond that the read is strided.
MAX_OVERSAMPLING = 4
#: ``read(level, rows, columns) -> array``: a (h, w) or (h, w, C) region of a stored level.
RegionRead = Callable[[int, slice, slice], np.ndarray]


@dataclass(frozen=True)
class Pyramid:
    """Stored levels of one image, read region by region.

    Attributes
    ----------
    shape : tuple of int
        (Y, X) of level 0, the viewer's coordinates.
    downsamples : tuple of tuple of float
        (Y, X) level-0 pixels per pixel of each stored level, level 0 (1, 1) first, increasing.
    level_shapes : tuple of tuple of int
        (Y, X) of each stored level.
    read : callable
        ``read(level, rows, columns)``: that region of a stored level (slices may have a step).
    """

    shape: tuple[int, int]
    downsamples: tuple[tuple[float, float], ...]
    level_shapes: tuple[tuple[int, int], ...]
    read: RegionRead


@dataclass(frozen=True)
class TileSpan:
    """Where a DZI tile lies: its pixel box in its DZI level and that level's scale.

    Attributes
    ----------
    scale : int
        Level-0 pixels per pixel of the DZI level (a power of two).
    rows, columns : tuple of int
        ``[start, stop)`` of the tile in the DZI level's pixels (overlap included).
    """

    scale: int
    rows: tuple[int, int]
    columns: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        """(h, w) of the tile in pixels."""
        return self.rows[1] - self.rows[0], self.columns[1] - self.columns[0]


def dzi_max_level(shape: tuple[int, int]) -> int:
    """The full-resolution DZI level of an image of level-0 ``shape`` (Y, X): ``ceil(log2(max side))``."""
    return max(0, math.ceil(math.log2(max(shape))))


def dzi_level_shape(shape: tuple[int, int], level: int) -> tuple[int, int]:
    """(Y, X) of DZI ``level`` of an image of level-0 ``shape``: the shape divided by the scale, rounded up."""
    scale = 2 ** (dzi_max_level(shape) - level)
    return -(-shape[0] // scale), -(-shape[1] // scale)


def tile_exists(shape: tuple[int, int], level: int, column: int, row: int, *, tile_size: int) -> bool:
    """Whether tile (``column``, ``row``) exists in DZI ``level`` of an image of level-0 ``shape``."""
    if not 0 <= level <= dzi_max_level(shape) or column < 0 or row < 0:
        return False
    height, width = dzi_level_shape(shape, level)
    return row * tile_size < height and column * tile_size < width


def tile_span(shape: tuple[int, int], level: int, column: int, row: int, *, tile_size: int, overlap: int) -> TileSpan:
    """The :class:`TileSpan` of a DZI tile (as OpenSeadragon's ``DziTileSource`` cuts them).

    Raises
    ------
    ValueError
        If the tile does not exist (check with :func:`tile_exists`).
    """
    if not tile_exists(shape, level, column, row, tile_size=tile_size):
        raise ValueError(f"no tile ({column}, {row}) at DZI level {level} of an image of shape {shape!r}")
    height, width = dzi_level_shape(shape, level)

    def axis(index: int, size: int) -> tuple[int, int]:
        start = index * tile_size - (overlap if index else 0)
        return start, min((index + 1) * tile_size + overlap, size)

    return TileSpan(scale=2 ** (dzi_max_level(shape) - level), rows=axis(row, height), columns=axis(column, width))


def pick_level(downsamples: Sequence[tuple[float, float]], scale: float) -> int:
    """The coarsest stored level at least as fine as ``scale`` (level-0 pixels per displayed pixel)."""
    fine_enough = [i for i, (dy, dx) in enumerate(downsamples) if max(dy, dx) <= scale * (1 + 1e-6)]
    return fine_enough[-1] if fine_enough else 0


def label_tile(pyramid: Pyramid, span: TileSpan) -> np.ndarray:
    """The labels of a tile by nearest neighbour: shape ``span.shape``, the stored dtype.

    Each tile pixel takes the stored label under its centre, from the level :func:`pick_level` chooses.
    """
    level = pick_level(pyramid.downsamples, span.scale)
    (row_slice, row_index), (column_slice, column_index) = (
        _read_plan(_sample_indices(axis_span, span.scale, downsample, size), span.scale / downsample)
        for axis_span, downsample, size in zip(
            (span.rows, span.columns), pyramid.downsamples[level], pyramid.level_shapes[level], strict=True
        )
    )
    region = np.asarray(pyramid.read(level, row_slice, column_slice))
    return region[row_index[:, np.newaxis], column_index[np.newaxis, :]]


def slide_tile(pyramid: Pyramid, span: TileSpan) -> np.ndarray:
    """The slide pixels of a tile, resampled (bilinear, antialiased) from the level :func:`pick_level`
    chooses: shape ``span.shape + (3,)``, uint8 (see :func:`to_rgb8`)."""
    from PIL import Image

    level = pick_level(pyramid.downsamples, span.scale)
    boxes = []
    slices = []
    for (start, stop), downsample, size in zip(
        (span.rows, span.columns), pyramid.downsamples[level], pyramid.level_shapes[level], strict=True
    ):
        first, last = start * span.scale / downsample, min(stop * span.scale / downsample, size)
        ratio = span.scale / downsample
        step = _step(ratio)
        begin, end = int(first), min(math.ceil(last), size)
        slices.append(slice(begin, end, step))
        boxes.append(((first - begin) / step, (last - begin) / step))
    region = to_rgb8(np.asarray(pyramid.read(level, *slices)))
    height, width = region.shape[:2]
    (top, bottom), (left, right) = boxes
    box = (left, top, min(right, width), min(bottom, height))
    resized = Image.fromarray(region, mode="RGB").resize(span.shape[::-1], Image.Resampling.BILINEAR, box=box)
    return np.asarray(resized)


def colour_labels(labels: np.ndarray, colours: Sequence[tuple[int, int, int, int]], hidden: set[int]) -> np.ndarray:
    """RGBA pixels of a label array: label ``i`` (1..K) in ``colours[i - 1]``; 0, hidden labels and
    values above K transparent. Shape ``labels.shape + (4,)``, uint8."""
    table = np.zeros((len(colours) + 2, 4), dtype=np.uint8)
    table[1 : len(colours) + 1] = colours
    table[[label for label in hidden if 1 <= label <= len(colours)]] = 0
    return table[np.minimum(labels, len(colours) + 1)]


def to_rgb8(region: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 of a (h, w, C) slide region, for display.

    The first three channels (one or two channels: the first, as grey; an alpha channel after the
    colours is dropped). uint8 as is; other integers scaled from ``[0, dtype max]``; floats from
    ``[0, 1]`` (NaN black).
    """
    colour = region[..., :3] if region.shape[2] >= 3 else np.repeat(region[..., :1], 3, axis=2)
    if colour.dtype == np.uint8:
        return np.ascontiguousarray(colour)
    if np.issubdtype(colour.dtype, np.integer):
        top = float(np.iinfo(colour.dtype).max)
        return np.clip(colour.astype(np.float32) * (255.0 / top), 0, 255).round().astype(np.uint8)
    scaled = np.nan_to_num(colour.astype(np.float32), nan=0.0) * 255.0
    return np.clip(scaled, 0, 255).round().astype(np.uint8)


def label_at(pyramid: Pyramid, x: int, y: int) -> int | None:
    """The level-0 label at column ``x``, row ``y`` (one small read), or None outside the image."""
    if not (0 <= y < pyramid.shape[0] and 0 <= x < pyramid.shape[1]):
        return None
    return int(np.asarray(pyramid.read(0, slice(y, y + 1), slice(x, x + 1))).reshape(-1)[0])


def dzi_descriptor(shape: tuple[int, int], *, tile_size: int, overlap: int, image_format: str) -> str:
    """The ``.dzi`` XML of an image of level-0 ``shape`` (Y, X)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="{image_format}" '
        f'Overlap="{overlap}" TileSize="{tile_size}">'
        f'<Size Width="{shape[1]}" Height="{shape[0]}"/></Image>\n'
    )


def _sample_indices(span: tuple[int, int], scale: int, downsample: float, size: int) -> np.ndarray:
    """Index in a stored level (``size`` long, ``downsample`` level-0 pixels per pixel) under the centre
    of each tile pixel ``span[0]..span[1] - 1`` of a DZI level of ``scale``."""
    centres = (np.arange(span[0], span[1], dtype=np.float64) + 0.5) * scale
    return np.clip(np.floor(centres / downsample).astype(np.int64), 0, size - 1)


def _read_plan(indices: np.ndarray, ratio: float) -> tuple[slice, np.ndarray]:
    """The slice to read for ``indices`` (increasing) of one axis and their positions in what it reads;
    strided when a tile pixel spans more than ``MAX_OVERSAMPLING`` stored pixels (``ratio``)."""
    step = _step(ratio)
    start = int(indices[0])
    return slice(start, int(indices[-1]) + 1, step), (indices - start) // step


def _step(ratio: float) -> int:
    """The read stride for ``ratio`` stored pixels per tile pixel: 1 up to ``MAX_OVERSAMPLING``."""
    return max(1, math.ceil(ratio / MAX_OVERSAMPLING))
