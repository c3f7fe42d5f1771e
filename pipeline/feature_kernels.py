"""The per-chunk kernels of the feature groups: pure numpy functions, arrays in and arrays out.

Each kernel belongs to one entry of :data:`pixseg.features.FEATURE_REGISTRY`, which says what
the kernel reads:

- colour kernels take the scaled colour channels of the pixels, shape (h, w, C) float32, and
  return (h, w, k) float32;
- position kernels take the region's shape, origin and the image shape, and return
  (h, w, k) float32;
- texture kernels take, at one scale, the Gaussian filterings of the intensity image their
  entry lists (:class:`GaussianFilter`, computed by :func:`gaussian_filters` on the chunk with
  its halo), each cut to the returned region, (h, w) float32, and return k (h, w) float32
  arrays; they are pointwise in the filterings.

No kernel modifies its inputs. Sums over channels are written out (:func:`_mix`) rather than
left to BLAS, whose results vary with array size and alignment and would make a pixel's
features depend on the chunk it falls in.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

#: Gaussian kernels stop at ``truncate * sigma`` (scipy.ndimage's default).
TRUNCATE = 4.0
#: Luminance weights of skimage.color.rgb2gray (ITU-R BT.709).
_GREY_WEIGHTS = np.array([[0.2125, 0.7154, 0.0721]], dtype=np.float32)
#: sRGB (linear) to CIE XYZ, and the D65 white point, as in skimage.color.
_RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])
#: Haematoxylin, eosin and DAB optical densities of RGB (Ruifrok & Johnston), as skimage.color.rgb_from_hed.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
#: skimage.color.hed_from_rgb, transposed for :func:`_mix` (``stains = od @ hed_from_rgb``), float32.
_HED_MIX_32 = np.linalg.inv(_RGB_FROM_HED).T.astype(np.float32)
_HED_LOG_FLOOR = 1e-6
#: Reflected columns added on the right before filtering: more than OpenCV's scalar row tail (see
#: :func:`gaussian_filters`).
_TAIL_PAD = 32
#: Squares are taken about the middle of the scaled intensity range: in float32 the local variance
#: ``mean of squares - squared mean`` then loses 4x fewer digits to cancellation than about 0.
SQUARES_CENTRE = 0.5
#: ``cv2.filter2D`` may filter by Fourier transform from 50 weights on (see :func:`_correlate`).
_DIRECT_TAPS = 50
_UNIT_WEIGHT = np.ones(1, dtype=np.float32)


class GaussianFilter(NamedTuple):
    """One Gaussian filtering of the intensity image that a texture kernel reads.

    Attributes
    ----------
    order : (int, int)
        Derivative order along rows and columns.
    squared : bool
        Filter the squared deviation of the intensity from :data:`SQUARES_CENTRE` instead (for
        local variances).
    """

    order: tuple[int, int] = (0, 0)
    squared: bool = False


#: The filterings texture kernels read: the local mean, the local mean of (centred) squares and derivatives.
MEAN = GaussianFilter()
MEAN_OF_SQUARES = GaussianFilter(squared=True)
D_ROW = GaussianFilter((1, 0))
D_COL = GaussianFilter((0, 1))
D_ROW_ROW = GaussianFilter((2, 0))
D_COL_COL = GaussianFilter((0, 2))
D_ROW_COL = GaussianFilter((1, 1))


def gaussian_filters(
    intensity: np.ndarray,
    sigmas: Sequence[float],
    gaussians: Sequence[GaussianFilter],
    *,
    scale: tuple[float, float],
    rows: slice,
    band_rows: int,
) -> Iterator[tuple[slice, int, dict[GaussianFilter, np.ndarray]]]:
    """The Gaussian filterings ``gaussians`` of the rows ``rows`` of an intensity image, band by band.

    Each filtering is separable: one 1-D pass along the rows (axis 0) with its row order, then
    one along the columns with its column order, as ``scipy.ndimage.gaussian_filter`` runs them.
    Filterings that share a source and a row order share that first pass (``MEAN``, ``D_COL``
    and ``D_COL_COL`` all start with the plain row smoothing): the six filterings of the
    ``texture`` groups take 10 passes instead of 12. Each pass is a float32 OpenCV correlation
    (:func:`_correlate`, SIMD: 5-10x faster than scipy's float64 ``correlate1d``) with scipy's
    Gaussian derivative weights and scipy's ``"reflect"`` border (OpenCV's ``BORDER_REFLECT``).
    The results equal ``gaussian_filter``'s to float32 rounding (within 3e-6 of the largest
    value), and a pixel's result does not depend on where the image was cut: OpenCV computes
    the last few columns of a row in a scalar loop that rounds differently from its vector
    loop, so the image is first extended on the right by ``_TAIL_PAD`` reflected columns,
    which are dropped.

    The image is filtered in bands of ``band_rows`` rows, so that the passes' outputs stay in the
    processor's cache (about 0.3 MB each for 64 rows of 1024 columns, not a chunk's worth, and
    only the source images are chunk-sized): the first pass
    of a band reads the band and ``radius`` rows on either side (the image's own rows, reflected
    only at its edges, as for the whole image), and keeps the band's rows, whose values are
    those of filtering the whole image, bit for bit.

    Parameters
    ----------
    intensity : numpy.ndarray
        Shape (H, W), float32; not modified.
    sigmas : sequence of float
        Scales in full-resolution pixels; the filters use ``sigma / scale`` on each axis.
    gaussians : sequence of GaussianFilter
        Which filterings, each once.
    scale : (float, float)
        How many full-resolution pixels one pixel of ``intensity`` spans, (rows, columns).
    rows : slice
        The rows whose filterings are wanted (``start`` and ``stop`` given; step 1).
    band_rows : int
        Rows per band.

    Yields
    ------
    (slice, int, dict)
        Band by band, and for each band sigma by sigma: the band's rows of ``intensity``, the
        index of the sigma, and each filtering of those rows, shape (rows, W), float32:
        ``scipy.ndimage.gaussian_filter`` of the whole image with ``mode="reflect"`` and
        ``truncate=TRUNCATE`` (of its squared deviation from ``SQUARES_CENTRE`` for ``squared``);
        derivatives per full-resolution pixel. The arrays are views into buffers that the next
        step overwrites: use them before advancing.
    """
    import cv2  # imported on first use: --help must not pay for it

    height, width = intensity.shape
    radii = [_gaussian_weights(sigma / scale[0], 0, 1.0).size // 2 for sigma in sigmas]
    extended = cv2.copyMakeBorder(intensity, 0, 0, 0, _TAIL_PAD, cv2.BORDER_REFLECT)
    sources = {False: extended}
    if any(gaussian.squared for gaussian in gaussians):
        sources[True] = np.square(extended - np.float32(SQUARES_CENTRE))
    first_pass = np.empty((min(height, band_rows + 2 * max(radii)), extended.shape[1]), dtype=np.float32)
    buffers = np.empty((len(gaussians), min(band_rows, rows.stop - rows.start), extended.shape[1]), dtype=np.float32)
    # filterings grouped by their first pass, which is computed once into ``first_pass``
    by_first_pass: dict[tuple[bool, int], list[int]] = {}
    for index, gaussian in enumerate(gaussians):
        by_first_pass.setdefault((gaussian.squared, gaussian.order[0]), []).append(index)
    for top in range(rows.start, rows.stop, band_rows):
        band = slice(top, min(top + band_rows, rows.stop))
        size = band.stop - band.start
        for sigma_index, (sigma, radius) in enumerate(zip(sigmas, radii, strict=True)):
            first_row, last_row = max(0, band.start - radius), min(height, band.stop + radius)
            kept = slice(band.start - first_row, band.stop - first_row)
            for (squared, row_order), indices in by_first_pass.items():
                source = sources[squared][first_row:last_row]
                _correlate(source, sigma, row_order, scale[0], axis=0, out=first_pass[: last_row - first_row])
                for index in indices:
                    order = gaussians[index].order[1]
                    _correlate(first_pass[kept], sigma, order, scale[1], axis=1, out=buffers[index, :size])
            yield (
                band,
                sigma_index,
                {gaussian: buffers[index, :size, :width] for index, gaussian in enumerate(gaussians)},
            )


def _correlate(source: np.ndarray, sigma: float, order: int, scale: float, *, axis: int, out: np.ndarray) -> None:
    """One pass of :func:`gaussian_filters`: ``source`` (2-D float32) correlated along ``axis``
    with the Gaussian derivative weights of ``sigma / scale`` and ``order``, reflected at the
    edges, written into ``out``.

    ``cv2.filter2D`` with a one-row or one-column kernel is the fastest pass, but from
    ``_DIRECT_TAPS`` weights on OpenCV may switch it to a Fourier transform, whose rounding
    depends on the image size; longer filters go through ``cv2.sepFilter2D`` with one unit
    weight on the other axis, which is always direct.
    """
    import cv2

    weights = _gaussian_weights(sigma / scale, order, scale)
    if weights.size < _DIRECT_TAPS:
        kernel = weights.reshape((-1, 1) if axis == 0 else (1, -1))
        cv2.filter2D(source, cv2.CV_32F, kernel, dst=out, borderType=cv2.BORDER_REFLECT)
    else:
        row_weights, col_weights = (weights, _UNIT_WEIGHT) if axis == 0 else (_UNIT_WEIGHT, weights)
        cv2.sepFilter2D(source, cv2.CV_32F, col_weights, row_weights, dst=out, borderType=cv2.BORDER_REFLECT)


@functools.cache
def _gaussian_weights(sigma: float, order: int, scale: float) -> np.ndarray:
    """The correlation weights of ``scipy.ndimage.gaussian_filter1d`` (radius ``int(TRUNCATE * sigma + 0.5)``)
    for derivative ``order``, divided by ``scale ** order`` (per full-resolution pixel); float32, read-only."""
    radius = int(TRUNCATE * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (sigma * sigma) * x * x)
    phi /= phi.sum()
    # the derivatives of exp(-x^2 / 2 sigma^2): phi times a Hermite polynomial of x / sigma
    polynomial = {0: 1.0, 1: -x / sigma**2, 2: (x * x - sigma * sigma) / sigma**4}[order]
    weights = (polynomial * phi)[::-1] / scale**order  # scipy correlates with the reversed kernel
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


def channels(colour: np.ndarray) -> np.ndarray:
    """The scaled colour channels themselves, (h, w, C) float32."""
    return colour


def grey(colour: np.ndarray) -> np.ndarray:
    """Intensity, (h, w, 1) float32: ``skimage.color.rgb2gray`` for RGB, else the channel mean."""
    if colour.shape[-1] == 3:
        return _mix(colour, _GREY_WEIGHTS)
    return colour.mean(axis=-1, dtype=np.float32, keepdims=True)


def grey_tables(levels: np.ndarray) -> tuple[np.ndarray, float] | None:
    """:func:`grey` as lookup tables (see :func:`mix_tables`) and its lower bound, for RGB only."""
    if levels.shape[0] != 3:
        return None  # the mean of other channel counts is not a mix of per-channel terms
    return mix_tables(levels, _GREY_WEIGHTS), -np.inf


def rgb_to_lab(colour: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65, 2 degree observer) of sRGB values in [0, 1], (h, w, 3) float32, as ``skimage.color.rgb2lab``."""
    rgb = np.clip(colour, 0.0, 1.0).astype(np.float64)
    linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = _mix(linear, _RGB_TO_XYZ) / _D65_WHITE
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    lightness = np.where(xyz[..., 1] > 0.008856, 116.0 * f[..., 1] - 16.0, 903.3 * xyz[..., 1])
    lab = np.stack([lightness, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], axis=-1)
    return lab.astype(np.float32)


def rgb_to_hsv(colour: np.ndarray) -> np.ndarray:
    """Hue, saturation, value in [0, 1] of RGB values in [0, 1], (h, w, 3) float32, as ``skimage.color.rgb2hsv``."""
    rgb = np.clip(colour, 0.0, 1.0).astype(np.float64)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(axis=-1)
    delta = value - rgb.min(axis=-1)
    flat = delta == 0.0
    safe = np.where(flat, 1.0, delta)
    # skimage assigns the red, green, blue cases in turn, so the last channel equal to the maximum wins
    hue = np.where(
        blue == value,
        4.0 + (red - green) / safe,
        np.where(green == value, 2.0 + (blue - red) / safe, (green - blue) / safe),
    )
    hue = np.where(flat, 0.0, (hue / 6.0) % 1.0)
    saturation = np.where(flat, 0.0, delta / np.where(value == 0.0, 1.0, value))
    return np.stack([hue, saturation, value], axis=-1).astype(np.float32)


def rgb_to_hed(colour: np.ndarray) -> np.ndarray:
    """Haematoxylin, eosin, DAB densities of RGB values in [0, 1], (h, w, 3) float32, as ``skimage.color.rgb2hed``."""
    stains = _mix_planes(_hed_density(np.moveaxis(colour, -1, 0)), _HED_MIX_32)
    return np.moveaxis(np.maximum(stains, np.float32(0.0), out=stains), 0, -1)


def hed_tables(levels: np.ndarray) -> tuple[np.ndarray, float]:
    """:func:`rgb_to_hed` as lookup tables (see :func:`mix_tables`) and its lower bound, 0."""
    return mix_tables(_hed_density(levels), _HED_MIX_32), 0.0


def _hed_density(planes: np.ndarray) -> np.ndarray:
    """Optical densities scaled as scikit-image's, of scaled channel values (C, ...), as contiguous planes."""
    # in float32 (within 2e-7 of scikit-image's float64): the logarithm is most of the group's cost
    density = np.empty(planes.shape, dtype=np.float32)
    np.clip(planes, _HED_LOG_FLOOR, 1.0, out=density)
    np.log(density, out=density)
    density *= np.float32(1.0 / np.log(_HED_LOG_FLOOR))
    return density


def coordinates(shape: tuple[int, int], origin: tuple[int, int], image_shape: tuple[int, int]) -> np.ndarray:
    """Pixel centres scaled to [0, 1] by the image size, (h, w, 2) float32: the same values at every pyramid level.

    Parameters
    ----------
    shape : (int, int)
        (h, w) of the region.
    origin : (int, int)
        (row, column) in the image of the region's first pixel.
    image_shape : (int, int)
        (Y, X) of the image.
    """
    rows = (origin[0] + np.arange(shape[0], dtype=np.float64) + 0.5) / image_shape[0]
    cols = (origin[1] + np.arange(shape[1], dtype=np.float64) + 0.5) / image_shape[1]
    grid = np.empty((*shape, 2), dtype=np.float32)
    grid[..., 0] = rows[:, np.newaxis]
    grid[..., 1] = cols[np.newaxis, :]
    return grid


def smooth(mean: np.ndarray) -> tuple[np.ndarray]:
    """Gaussian-smoothed intensity (reads ``MEAN``)."""
    return (mean,)


def local_std(mean: np.ndarray, mean_of_squares: np.ndarray) -> tuple[np.ndarray]:
    """Gaussian-weighted local standard deviation (reads ``MEAN``, ``MEAN_OF_SQUARES``)."""
    variance = mean - np.float32(SQUARES_CENTRE)  # one temporary, updated in place
    np.multiply(variance, variance, out=variance)
    np.subtract(mean_of_squares, variance, out=variance)
    np.maximum(variance, np.float32(0.0), out=variance)
    return (np.sqrt(variance, out=variance),)


def gradient_magnitude(d_row: np.ndarray, d_col: np.ndarray) -> tuple[np.ndarray]:
    """Gaussian gradient magnitude (reads ``D_ROW``, ``D_COL``)."""
    magnitude = d_row * d_row
    magnitude += d_col * d_col
    return (np.sqrt(magnitude, out=magnitude),)


def laplacian(d_row_row: np.ndarray, d_col_col: np.ndarray) -> tuple[np.ndarray]:
    """Laplacian of Gaussian (reads ``D_ROW_ROW``, ``D_COL_COL``)."""
    return (d_row_row + d_col_col,)


def hessian_eigenvalues(
    d_row_row: np.ndarray, d_col_col: np.ndarray, d_row_col: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The larger and the smaller Hessian eigenvalue (reads ``D_ROW_ROW``, ``D_COL_COL``, ``D_ROW_COL``)."""
    half_trace = (d_row_row + d_col_col) / 2.0
    root = np.sqrt(((d_row_row - d_col_col) / 2.0) ** 2 + d_row_col * d_row_col)
    return half_trace + root, half_trace - root


def _mix(pixels: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``pixels @ matrix.T`` as explicit sums in channel order (see the module docstring).

    Returns a (..., len(matrix)) view of channel planes: each output channel is contiguous.
    """
    planes = np.empty((pixels.shape[-1], *pixels.shape[:-1]), dtype=pixels.dtype)
    planes[...] = np.moveaxis(pixels, -1, 0)
    return np.moveaxis(_mix_planes(planes, matrix), 0, -1)


def mix_tables(planes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The terms :func:`_mix_planes` sums, for channel values given as planes (C, N): every level of an input.

    Returns
    -------
    numpy.ndarray
        Shape (C, N, len(matrix)), float32, C-contiguous: ``tables[c, v, k] = planes[c, v] * matrix[k, c]``,
        the product :func:`_mix_planes` computes for output ``k`` of a pixel whose channel ``c`` is at
        level ``v``. Summed over ``c`` in channel order (:func:`pixseg.colour_tables.mix_rgb_tables`),
        the terms give :func:`_mix_planes`' result bit for bit.
    """
    terms = planes[:, :, np.newaxis] * np.asarray(matrix).T[:, np.newaxis, :]
    return np.ascontiguousarray(terms, dtype=np.result_type(planes, matrix))


def _mix_planes(planes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """:func:`_mix` of channel planes (C, ...) into planes (len(matrix), ...): contiguous, so vectorised."""
    mixed = np.empty((len(matrix), *planes.shape[1:]), dtype=np.result_type(planes, matrix))
    for k, row in enumerate(matrix):
        np.multiply(planes[0], row[0], out=mixed[k])
        for j in range(1, len(planes)):
            mixed[k] += planes[j] * row[j]
    return mixed
