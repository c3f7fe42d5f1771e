"""A built-in demo slide: tissue islands cut from scikit-image's real IHC photo, on glass.

The slide is a procedural scene rendered tile by tile at every pyramid level, so it is never
whole in memory and every level is as sharp as a scanner's. Its parts:

- the islands: a smooth field on a coarse grid over the slide (elliptical islands whose edges
  are bent by smoothed noise), interpolated to each pixel; tissue where it is positive;
- the tissue: crops of :func:`skimage.data.immunohistochemistry` (DAB and haematoxylin stained
  colon, 512 x 512; its contrast lowered over a section's own density, see :func:`_section`) on
  a grid of overlapping cells, each crop rotated or flipped, blended across the overlaps so no
  seam shows;
- the glass: near-white, with a line-scan camera's stripes (each slightly brighter or darker,
  shaded towards its edges) and sensor noise over everything.

The layout depends on ``seed`` only, never on ``size``: a small demo is the same slide at a
lower resolution, and :func:`demo_tissue_mask` gives the islands at any resolution.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numba
import numpy as np
import tifffile

from pixseg.errors import OutputError, ParameterError
from pixseg.io.atomic import atomic_file
from pixseg.options import FitOptions
from pixseg.presets import PRESETS

DEMO_TILE = 512
#: The fit options ``pixseg demo`` uses unless given: what a pathologist would pick for a
#: brightfield slide (glass masked, stain densities, K = 5).
DEMO_FIT: dict[str, Any] = {"mask": "auto", "features": ("hed",), "clusters": 5}
#: Micrometres per level-0 pixel (a 20x scan), written as TIFF resolution tags.
DEMO_PIXEL_SIZE_UM = 0.5
#: RGB of blank glass.
GLASS = (235.0, 235.0, 232.0)
#: Reduced levels are added while the long side exceeds this (and the downsampling is at most
#: ``_MAX_SCALE``: the tissue cells below must stay whole pixels).
_SMALLEST_LEVEL_EDGE = 1024
_MAX_SCALE = 64
#: Edge of the island field's grid over the whole slide.
_FIELD_GRID = 256
#: Tissue cells at level 0: crops of ``_CROP`` pixels every ``_STRIDE``, blended over the
#: ``_CROP - _STRIDE`` pixels where neighbours overlap; crop origins are multiples of
#: ``_OFFSET_STEP`` inside the photo, never in its left 64 columns (a lumen as white as glass).
_CROP, _STRIDE, _OFFSET_STEP = 320, 256, 64
_OFFSETS_Y = (0, 64, 128, 192)
_OFFSETS_X = (64, 128, 192)
#: The section's own optical density (R, G, B) under the stain, and the factor on the photo's.
_SECTION_DENSITY, _STAIN_GAIN = (0.28, 0.28, 0.24), 0.6
#: Width in level-0 pixels of a line-scan stripe; relative gain spread between stripes and
#: shading at a stripe's edges.
_STRIPE, _STRIPE_GAIN, _STRIPE_SHADING = 2048, 0.012, 0.025
#: Sensor noise at level 0: standard deviation in 8-bit units.
_NOISE_SIGMA = 3.0
#: Threads rendering tiles ahead of the TIFF writer.
_RENDER_THREADS = 2
#: Level-0 pixels over which an island's edge fades into the glass.
_EDGE_PIXELS = 3.0


def demo_fit_options(fit: FitOptions, given: Collection[str]) -> FitOptions:
    """The demo's fit options: what was given explicitly, then the preset's values, then ``DEMO_FIT``.

    Parameters
    ----------
    fit : FitOptions
        The options as ``segment`` would take them: the explicit ones over the preset's, if any.
    given : collection of str
        The names of the options given explicitly.

    Returns
    -------
    FitOptions
        ``fit`` with each ``DEMO_FIT`` value filling an option neither given nor set by the preset.
    """
    preset = PRESETS[fit.preset] if fit.preset else {}
    return replace(fit, **{name: value for name, value in DEMO_FIT.items() if name not in given and name not in preset})


def demo_level_shapes(size: int) -> list[tuple[int, int]]:
    """(Y, X) of every pyramid level of a ``size`` x ``size`` demo slide, full resolution first.

    Each level halves the one above (rounding up) while the long side exceeds 1024 pixels.
    """
    shapes = [(size, size)]
    while shapes[-1][0] > _SMALLEST_LEVEL_EDGE and 2 ** len(shapes) <= _MAX_SCALE:
        edge = -(-shapes[-1][0] // 2)
        shapes.append((edge, edge))
    return shapes


def demo_tissue_mask(size: int, shape: tuple[int, int], *, seed: int = 0) -> np.ndarray:
    """The tissue islands of the demo slide of edge ``size``, sampled at ``shape`` pixel centres.

    Parameters
    ----------
    size : int
        Edge of the demo slide (level 0) in pixels.
    shape : tuple of int
        (h, w) of the mask, e.g. a pyramid level's or a label level's shape.
    seed : int
        The slide's seed.

    Returns
    -------
    numpy.ndarray
        Shape ``shape``, bool: True on tissue (where the island field is positive).
    """
    field = np.pad(_island_field(seed), 2, mode="edge")
    rows = _grid_coordinates(np.arange(shape[0]), size / shape[0], size) + 2
    cols = _grid_coordinates(np.arange(shape[1]), size / shape[1], size) + 2
    return np.asarray(_interpolate(field, rows, cols) > 0)


def write_demo_tiff(path: str, *, size: int, seed: int = 0) -> None:
    """Write the demo slide as a pyramidal, tiled, JPEG-compressed BigTIFF, tile by tile.

    Level 0 is ``size`` x ``size`` RGB; reduced levels follow as further pages (``subfiletype``
    1, the generic layout OpenSlide, tifffile and vips read) down to about 1024 pixels (see
    :func:`demo_level_shapes`). Every page has 512 x 512 tiles and resolution tags in
    centimetres for :data:`DEMO_PIXEL_SIZE_UM` at level 0. Memory stays at a few tiles.

    Parameters
    ----------
    path : str
        Destination ``.tif``; written under a unique temporary name, then renamed
        (see :func:`pixseg.io.atomic.atomic_file`).
    size : int
        Edge in pixels, at least 512.
    seed : int
        Chooses the islands, the crops and the noise.

    Raises
    ------
    ParameterError
        If ``size`` is below 512.
    OutputError
        If the file cannot be written.
    """
    if size < DEMO_TILE:
        raise ParameterError(f"--size must be at least {DEMO_TILE}, got {size!r}")
    scene = _Scene.build(size, seed)
    try:
        with atomic_file(path, "wb", fsync=False) as handle, tifffile.TiffWriter(handle, bigtiff=True) as writer:
            for level, shape in enumerate(demo_level_shapes(size)):
                per_cm = 1e4 / (DEMO_PIXEL_SIZE_UM * 2**level)
                writer.write(
                    scene.tiles(level, shape),
                    shape=(*shape, 3),
                    dtype=np.uint8,
                    tile=(DEMO_TILE, DEMO_TILE),
                    photometric="rgb",
                    compression="jpeg",
                    compressionargs={"level": 90},
                    resolution=(per_cm, per_cm),
                    resolutionunit="CENTIMETER",
                    subfiletype=1 if level else 0,
                    metadata=None,
                )
    except OSError as err:
        raise OutputError(f"cannot write demo input {path!r}: {err}") from err


@dataclass(frozen=True)
class _Scene:
    """Everything a tile of any level is rendered from."""

    size: int
    seed: int
    field: np.ndarray  # (_FIELD_GRID + 4, _FIELD_GRID + 4) float32, edge-padded by 2: tissue where > 0
    photo: np.ndarray  # (512, 512, 3) float32, the IHC photo
    cells: np.ndarray  # (n, n, 4) int64: per tissue cell, crop origin (y, x), quarter turns, flip
    stripe_gains: np.ndarray  # (n_stripes,) float32

    @classmethod
    def build(cls, size: int, seed: int) -> _Scene:
        from skimage.data import immunohistochemistry

        rng = np.random.default_rng([seed, 1])
        n_cells = size // _STRIDE + 2
        cells = np.stack(
            [
                rng.choice(_OFFSETS_Y, (n_cells, n_cells)),
                rng.choice(_OFFSETS_X, (n_cells, n_cells)),
                rng.integers(0, 4, (n_cells, n_cells)),
                rng.integers(0, 2, (n_cells, n_cells)),
            ],
            axis=-1,
        ).astype(np.int64)
        return cls(
            size=size,
            seed=seed,
            field=np.pad(_island_field(seed), 2, mode="edge").astype(np.float32),
            photo=_section(immunohistochemistry()),
            cells=cells,
            stripe_gains=(1 + _STRIPE_GAIN * rng.standard_normal(size // _STRIPE + 1)).astype(np.float32),
        )

    def tiles(self, level: int, shape: tuple[int, int]) -> Iterator[np.ndarray]:
        """The (512, 512, 3) uint8 tiles of ``level`` (of ``shape``), row by row; edge tiles are cut."""
        scale = 2**level
        photo = _block_mean(self.photo, scale)
        regions = [
            (np.arange(top, min(top + DEMO_TILE, shape[0])), np.arange(left, min(left + DEMO_TILE, shape[1])))
            for top in range(0, shape[0], DEMO_TILE)
            for left in range(0, shape[1], DEMO_TILE)
        ]
        # the kernels release the GIL: render a few tiles ahead on two threads while tifffile encodes
        with ThreadPoolExecutor(max_workers=_RENDER_THREADS) as pool:
            pending: deque[Future[np.ndarray]] = deque()
            for rows, cols in regions:
                pending.append(pool.submit(self.render, rows, cols, scale, photo))
                if len(pending) > 2 * _RENDER_THREADS:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def render(self, rows: np.ndarray, cols: np.ndarray, scale: int, photo: np.ndarray) -> np.ndarray:
        """The (len(rows), len(cols), 3) uint8 pixels of a level downsampled ``scale`` times."""
        field = _interpolate(
            self.field, _grid_coordinates(rows, scale, self.size) + 2, _grid_coordinates(cols, scale, self.size) + 2
        )
        # the field's slope is about 1 / (0.1 * size) per level-0 pixel at an island's edge
        sharpness = np.float32(0.1 * self.size / (_EDGE_PIXELS * scale))
        tissue = np.zeros((len(rows), len(cols), 4), dtype=np.float32)
        if field.max() > -0.5 / sharpness:
            crop, stride = _CROP // scale, _STRIDE // scale
            ramp = np.minimum(1.0, (np.arange(crop) + 0.5) / (crop - stride))
            weights = np.minimum(ramp, ramp[::-1]).astype(np.float32)
            _blend_cells(photo, self.cells, int(rows[0]), int(cols[0]), stride, weights, tissue)
        centres = (cols + 0.5) * scale
        across = (centres % _STRIPE) / _STRIPE - 0.5
        gain = self.stripe_gains[(centres // _STRIPE).astype(np.intp)] * (1 - _STRIPE_SHADING * 4 * across**2)
        pixels = np.empty((len(rows), len(cols), 3), dtype=np.uint8)
        _compose(
            field,
            tissue,
            gain.astype(np.float32),
            np.asarray(GLASS, dtype=np.float32),
            sharpness,
            np.float32(_NOISE_SIGMA / scale),
            np.uint64(self.seed * 64 + scale),
            int(rows[0]),
            int(cols[0]),
            pixels,
        )
        return pixels


@numba.njit(nogil=True, cache=True)
def _blend_cells(
    photo: np.ndarray, cells: np.ndarray, top: int, left: int, stride: int, weights: np.ndarray, tissue: np.ndarray
) -> None:  # pragma: no cover - compiled
    """Add every tissue cell's weighted crop to ``tissue[..., :3]`` and its weight to ``tissue[..., 3]``.

    Cell (i, j) covers ``crop = len(weights)`` pixels from ``(i * stride, j * stride)``: the
    photo's crop at the cell's origin (divided by the level's downsampling, ``512 //
    photo.shape[0]``), turned by quarter turns, then flipped left-right if asked.
    """
    height, width, _ = tissue.shape
    crop = len(weights)
    factor = 512 // photo.shape[0]
    end = crop - 1
    for cell_y in range(max(0, (top - crop) // stride + 1), (top + height - 1) // stride + 1):
        for cell_x in range(max(0, (left - crop) // stride + 1), (left + width - 1) // stride + 1):
            turns, flip = cells[cell_y, cell_x, 2], cells[cell_y, cell_x, 3]
            # the photo pixel of crop pixel (i, j) is (y0 + dy_i * i + dy_j * j, x0 + dx_i * i + dx_j * j)
            y0, x0 = cells[cell_y, cell_x, 0] // factor, cells[cell_y, cell_x, 1] // factor
            dy_i, dy_j, dx_i, dx_j = 1, 0, 0, 1
            if turns == 1:
                dy_i, dy_j, dx_i, dx_j, x0 = 0, 1, -1, 0, x0 + end
            elif turns == 2:
                dy_i, dy_j, dx_i, dx_j, y0, x0 = -1, 0, 0, -1, y0 + end, x0 + end
            elif turns == 3:
                dy_i, dy_j, dx_i, dx_j, y0 = 0, -1, 1, 0, y0 + end
            if flip:  # j -> end - j
                y0, x0, dy_j, dx_j = y0 + dy_j * end, x0 + dx_j * end, -dy_j, -dx_j
            first_y, first_x = cell_y * stride, cell_x * stride
            for y in range(max(top, first_y), min(top + height, first_y + crop)):
                i = y - first_y
                for x in range(max(left, first_x), min(left + width, first_x + crop)):
                    j = x - first_x
                    weight = weights[i] * weights[j]
                    source_y = y0 + dy_i * i + dy_j * j
                    source_x = x0 + dx_i * i + dx_j * j
                    for channel in range(3):
                        tissue[y - top, x - left, channel] += weight * photo[source_y, source_x, channel]
                    tissue[y - top, x - left, 3] += weight


@numba.njit(nogil=True, cache=True)
def _compose(
    field: np.ndarray,
    tissue: np.ndarray,
    gain: np.ndarray,
    glass: np.ndarray,
    sharpness: np.float32,
    sigma: np.float32,
    key: np.uint64,
    top: int,
    left: int,
    pixels: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Tissue over glass by the field's alpha, times the stripes' gain, plus noise, into uint8 ``pixels``.

    The noise of a pixel's channel is a triangular variate of standard deviation ``sigma`` from
    a hash of ``key`` and the pixel's position (10 bits a uniform, two a channel), so it never
    repeats and is the same whichever tile draws it.
    """
    height, width, _ = pixels.shape
    spread = sigma * np.float32(6.0**0.5 / 1024.0)  # a sum of two uniforms on [0, 1) has variance 1/6
    for y in range(height):
        for x in range(width):
            alpha = min(max(np.float32(0.5) + field[y, x] * sharpness, np.float32(0.0)), np.float32(1.0))
            total = tissue[y, x, 3]
            state = key * np.uint64(0x9E3779B97F4A7C15) + np.uint64(((top + y) << 32) | (left + x))
            state = (state ^ (state >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            state = (state ^ (state >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            state ^= state >> np.uint64(31)
            for channel in range(3):
                value = glass[channel]
                if alpha > 0 and total > 0:
                    value += alpha * (tissue[y, x, channel] / total - value)
                bits = state >> np.uint64(20 * channel)
                uniforms = np.float32(bits & np.uint64(1023)) + np.float32((bits >> np.uint64(10)) & np.uint64(1023))
                value = value * gain[x] + (uniforms - np.float32(1023.0)) * spread
                pixels[y, x, channel] = np.uint8(min(max(value + np.float32(0.5), np.float32(0.0)), np.float32(255.0)))


def _section(photo: np.ndarray) -> np.ndarray:
    """The photo as a slide's section: its optical densities scaled by ``_STAIN_GAIN`` on top of
    ``_SECTION_DENSITY``, so pale stroma stands apart from glass as in a real section (and the
    automatic mask keeps it). Returns float32 of the same shape."""
    density = -np.log(np.clip(photo.astype(np.float64), 1, 255) / 255)
    return (255 * np.exp(-(np.asarray(_SECTION_DENSITY) + _STAIN_GAIN * density))).astype(np.float32)


def _island_field(seed: int) -> np.ndarray:
    """The island field on a ``_FIELD_GRID`` square grid over the slide: positive on tissue.

    Six to eight ellipses, kept apart, each ``1 - r`` for its normalised radius ``r``, their
    maximum bent by smoothed noise at two scales so edges are irregular but smooth.
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng([seed, 0])
    grid = (np.arange(_FIELD_GRID) + 0.5) / _FIELD_GRID
    y, x = np.meshgrid(grid, grid, indexing="ij")
    field = np.full((_FIELD_GRID, _FIELD_GRID), -1.0)
    placed: list[tuple[float, float, float]] = []
    wanted = int(rng.integers(6, 9))
    for _ in range(200):
        if len(placed) == wanted:
            break
        radius = rng.uniform(0.07, 0.15)
        centre_y, centre_x = rng.uniform(radius + 0.05, 0.95 - radius, 2)
        if any(np.hypot(centre_y - cy, centre_x - cx) < radius + r + 0.04 for cy, cx, r in placed):
            continue
        placed.append((centre_y, centre_x, radius))
        angle, aspect = rng.uniform(0, np.pi), rng.uniform(0.55, 1.0)
        along = (y - centre_y) * np.cos(angle) + (x - centre_x) * np.sin(angle)
        across = -(y - centre_y) * np.sin(angle) + (x - centre_x) * np.cos(angle)
        field = np.maximum(field, 1 - np.hypot(along / radius, across / (radius * aspect)))
    noise = 0.0
    for sigma, amplitude in ((10.0, 0.30), (3.0, 0.12)):
        smooth = gaussian_filter(rng.standard_normal((_FIELD_GRID, _FIELD_GRID)), sigma, mode="wrap")
        noise = noise + amplitude * smooth / smooth.std()
    return np.asarray(field + noise)


def _grid_coordinates(pixels: np.ndarray, scale: float, size: int) -> np.ndarray:
    """Field-grid coordinates of the centres of ``pixels`` of a level downsampled ``scale`` times."""
    return (pixels + 0.5) * scale / size * _FIELD_GRID - 0.5


def _interpolate(field: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Separable cubic (Keys, a = -0.5) interpolation of ``field`` at grid coordinates ``rows`` x
    ``cols``: (len(rows), len(cols)) float32. Each coordinate must be at least 1 and at most the
    field's edge - 3 (pad the field)."""
    row_index, row_weights = _cubic_taps(rows)
    col_index, col_weights = _cubic_taps(cols)
    values = np.empty((len(rows), len(cols)), dtype=np.float32)
    _interpolate_taps(field.astype(np.float32, copy=False), row_index, row_weights, col_index, col_weights, values)
    return values


def _cubic_taps(coordinates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The four grid indices and weights, each (len(coordinates), 4), of Keys' cubic convolution."""
    base = np.floor(coordinates).astype(np.intp)
    index = base[:, np.newaxis] + np.arange(-1, 3)
    distance = np.abs(coordinates[:, np.newaxis] - index)
    weights = np.where(
        distance <= 1,
        1.5 * distance**3 - 2.5 * distance**2 + 1,
        -0.5 * distance**3 + 2.5 * distance**2 - 4 * distance + 2,
    )
    return index, weights.astype(np.float32)


@numba.njit(nogil=True, cache=True)
def _interpolate_taps(
    field: np.ndarray,
    row_index: np.ndarray,
    row_weights: np.ndarray,
    col_index: np.ndarray,
    col_weights: np.ndarray,
    values: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """``values[y, x] = sum over taps a, b of row_weights[y, a] * col_weights[x, b] * field[row_index[y, a],
    col_index[x, b]]``, along the columns first for the rows used."""
    first, last = row_index.min(), row_index.max()
    along = np.zeros((last - first + 1, col_index.shape[0]), dtype=np.float32)
    for row in range(first, last + 1):
        for x in range(col_index.shape[0]):
            for tap in range(4):
                along[row - first, x] += col_weights[x, tap] * field[row, col_index[x, tap]]
    for y in range(row_index.shape[0]):
        for x in range(col_index.shape[0]):
            total = np.float32(0.0)
            for tap in range(4):
                total += row_weights[y, tap] * along[row_index[y, tap] - first, x]
            values[y, x] = total


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """``image`` averaged over ``factor`` x ``factor`` blocks (its edges divide by ``factor``)."""
    if factor == 1:
        return image
    height, width, channels = image.shape
    blocks = image.reshape(height // factor, factor, width // factor, factor, channels)
    return np.asarray(blocks.mean(axis=(1, 3), dtype=np.float32))
