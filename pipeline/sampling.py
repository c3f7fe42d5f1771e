"""Deterministic sampling of feature vectors, spread over the whole image, reading a small part of it.

Blocks: the image is cut into square blocks of ``SAMPLE_BLOCK`` pixels, grouped into strata
of ``stride`` x ``stride`` blocks; the sample is drawn from one block per stratum (the block
with the smallest block key), so it is spread evenly over the image and only about
``1 / stride**2`` of the image is read and featurised. The stride is chosen so that at least
``MIN_SAMPLE_BLOCKS`` blocks and ``READ_PER_SAMPLED`` times the sample size are read; small
images are read whole (stride 1).

Pixels: every pixel gets a pseudo-random key from a counter-based hash (splitmix64) of the seed
and its global position ``row * width + column``, divided by its block's weight (pixels of the
stratum / pixels of the block, so a pixel stands for the pixels of its stratum). The sample is
the ``n`` valid pixels with the smallest weighted keys: an unbiased, stratified sample of the
valid pixels, in which each stratum (and, pooled, each image) contributes in proportion to its
valid pixels. Which pixels are drawn depends only on the seed, the image's shape and the
pixels' positions: never on the chunking, the file's tiling, task order, the scheduler or the
number of workers. Features of a block are computed with the halo texture needs, so they equal
the whole image's (see :func:`pixseg.features.compute_features`): how blocks are read
(neighbouring blocks through one window, file tiles shared between windows: see
:mod:`pixseg.sample_reads`; the graph of the pass: :mod:`pixseg.sample_graph`) never changes the sample.

Each block returns only pixels whose weighted key is below a threshold chosen to yield a little
more than ``n`` candidates, so the sample pass moves ~``n`` vectors, not the blocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numba
import numpy as np

from pixseg.features import FeatureSpec
from pixseg.mask_apply import nearest_indices

#: Keys are 53-bit integers scaled to [0, 1).
_KEY_SCALE = 2.0**-53
#: Edge of a sampling block, in pixels of the sampled level.
SAMPLE_BLOCK = 256
#: Fewest blocks a sample is drawn from, when the image has more.
MIN_SAMPLE_BLOCKS = 256
#: Fewest pixels read per sampled pixel, when the image has more.
READ_PER_SAMPLED = 32
#: Most pixels of a mask counted before the first sample pass (see :func:`planned_valid_pixels`).
MAX_COUNTED_MASK = 2**24


@dataclass(frozen=True)
class Candidates:
    """Pixels whose weighted key fell below the threshold, and the valid pixels behind them.

    Attributes
    ----------
    keys : numpy.ndarray
        Shape (n,), float64 >= 0: each pixel's key divided by its block's weight.
    positions : numpy.ndarray
        Shape (n,), int64: ``row * width + column`` of each pixel.
    vectors : numpy.ndarray
        Shape (n, F), float32 feature vectors.
    n_valid : int
        Valid pixels in the blocks read.
    valid_estimate : float
        Valid pixels in the whole image, estimated from the blocks read (each valid pixel counts
        its block's weight; exact when every block is read).
    """

    keys: np.ndarray
    positions: np.ndarray
    vectors: np.ndarray
    n_valid: int
    valid_estimate: float


@dataclass(frozen=True)
class BlockPlan:
    """The blocks a sample is read from: one per stratum of ``stride`` x ``stride`` blocks.

    Attributes
    ----------
    regions : numpy.ndarray
        Shape (n, 4), int64: (top, left, bottom, right) of each block read, in row-major order.
    weights : numpy.ndarray
        Shape (n,), float64: pixels of the block's stratum / pixels of the block (>= 1).
    block : int
        Block edge in pixels.
    """

    regions: np.ndarray
    weights: np.ndarray
    block: int


@dataclass(frozen=True)
class SampleSource:
    """What a sample is drawn from: pixels, the features they give and a mask.

    Attributes
    ----------
    pixels : array-like
        Shape (Y, X, C), read region by region with ``pixels[ys, xs, :]`` inside tasks
        (picklable, thread-safe; e.g. :attr:`pixseg.io.readers.Image.source`).
    spec : FeatureSpec
        The features to sample.
    scale : (float, float)
        Full-resolution pixels per pixel of this level (for texture sigmas).
    mask : dask.array.Array or None
        2-D bool (True = keep) at any resolution that divides the image, or None.
    full_width_reads : bool
        Whether a read decodes whole rows (a striped file): blocks of one block row are then
        read together, once.
    """

    pixels: Any
    spec: FeatureSpec
    scale: tuple[float, float]
    mask: da.Array | None
    full_width_reads: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        """(Y, X)."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


@numba.njit(nogil=True, cache=True)
def _pick(first_feature: np.ndarray, top: int, left: int, width: int, seed: int, limit: float):  # pragma: no cover
    height, chunk_width = first_feature.shape
    picked = np.empty(height * chunk_width, dtype=np.int64)
    keys = np.empty(height * chunk_width, dtype=np.float64)
    seed_mix = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
    n_picked = 0
    n_valid = 0
    for r in range(height):
        for c in range(chunk_width):
            if np.isnan(first_feature[r, c]):
                continue
            n_valid += 1
            z = np.uint64((top + r) * width + left + c) + seed_mix
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
            key = float(z >> np.uint64(11)) * _KEY_SCALE
            if key < limit:
                picked[n_picked] = r * chunk_width + c
                keys[n_picked] = key
                n_picked += 1
    return picked[:n_picked], keys[:n_picked], n_valid


def pixel_keys(rows: np.ndarray, cols: np.ndarray, *, width: int, seed: int) -> np.ndarray:
    """The sampling key of pixels (``rows``, ``cols``) of an image ``width`` pixels wide (numpy reference).

    Returns
    -------
    numpy.ndarray
        float64 in [0, 1), same shape as ``rows``.
    """
    with np.errstate(over="ignore"):
        z = (np.asarray(rows, np.uint64) * np.uint64(width) + np.asarray(cols, np.uint64)) + (
            np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        )
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * _KEY_SCALE


def candidate_threshold(sample_size: int, n_pixels: float) -> float:
    """Weighted-key threshold expected to yield ``sample_size`` plus six standard deviations of
    candidates from an image of ``n_pixels`` valid pixels."""
    if n_pixels <= 0:
        return 1.0
    return min(1.0, (sample_size + 6.0 * math.sqrt(sample_size) + 16.0) / n_pixels)


def planned_valid_pixels(mask: np.ndarray | None, shape: tuple[int, int], plan: BlockPlan) -> float:
    """The valid pixels of an image that ``plan``'s blocks stand for, as far as ``mask`` tells.

    Each block counts the pixels the mask keeps in it (nearest upsampling, as the sample pass
    applies it) times its weight: the valid pixels the pass will find, but for pixels invalid in
    the image itself (alpha, NaN). A first threshold from this count (see
    :func:`candidate_threshold`) needs no second pass on a masked image.

    Parameters
    ----------
    mask : numpy.ndarray or None
        2-D bool (True = keep) at any resolution, or None (every pixel counts: the result is
        then the image's pixel count).
    shape : (int, int)
        (Y, X) of the image.
    plan : BlockPlan
        Blocks of the pass (from :func:`plan_blocks` on ``shape``).
    """
    if mask is None:
        return float(math.prod(shape))
    rows, cols = nearest_indices(shape[0], mask.shape[0]), nearest_indices(shape[1], mask.shape[1])
    total = 0.0
    for (top, left, bottom, right), weight in zip(plan.regions.tolist(), plan.weights.tolist(), strict=True):
        mask_rows, n_rows = np.unique(rows[top:bottom], return_counts=True)
        mask_cols, n_cols = np.unique(cols[left:right], return_counts=True)
        total += weight * float(n_rows @ mask[np.ix_(mask_rows, mask_cols)].astype(np.int64) @ n_cols)
    return total


def sampling_stride(shape: tuple[int, int], sample_size: int, *, block: int | None = None) -> int:
    """Stratum edge in blocks of ``block`` (default ``SAMPLE_BLOCK``) pixels: as coarse as keeps
    ``MIN_SAMPLE_BLOCKS`` blocks and ``READ_PER_SAMPLED * sample_size`` pixels read (1 for small images)."""
    block = block or SAMPLE_BLOCK
    n_blocks = math.ceil(shape[0] / block) * math.ceil(shape[1] / block)
    wanted = max(MIN_SAMPLE_BLOCKS, math.ceil(READ_PER_SAMPLED * sample_size / block**2))
    return max(1, math.isqrt(n_blocks // wanted))


def plan_blocks(shape: tuple[int, int], *, stride: int, seed: int, block: int | None = None) -> BlockPlan:
    """The block of each stratum with the smallest block key (a hash of the seed and the block's index).

    Parameters
    ----------
    shape : (int, int)
        (Y, X) of the image.
    stride : int
        Stratum edge in blocks (see :func:`sampling_stride`).
    seed : int
        The run's seed (>= 0).
    block : int, optional
        Block edge in pixels (default ``SAMPLE_BLOCK``).

    Returns
    -------
    BlockPlan
        Pure function of its arguments.
    """
    block = block or SAMPLE_BLOCK
    height, width = shape
    n_rows, n_cols = math.ceil(height / block), math.ceil(width / block)
    rows, cols = np.divmod(np.arange(n_rows * n_cols), n_cols)
    keys = pixel_keys(rows, cols, width=n_cols, seed=derived_seed(seed, 0)).reshape(n_rows, n_cols)
    block_pixels = np.outer(_block_sizes(height, block), _block_sizes(width, block)).astype(np.float64)
    s_rows, s_cols = math.ceil(n_rows / stride), math.ceil(n_cols / stride)
    padded = np.full((s_rows * stride, s_cols * stride), np.inf)
    padded[:n_rows, :n_cols] = keys
    within = padded.reshape(s_rows, stride, s_cols, stride).transpose(0, 2, 1, 3).reshape(s_rows, s_cols, -1)
    choice = np.argmin(within, axis=-1)
    chosen_rows = (np.arange(s_rows)[:, np.newaxis] * stride + choice // stride).ravel()
    chosen_cols = (np.arange(s_cols)[np.newaxis, :] * stride + choice % stride).ravel()
    stratum_pixels = np.add.reduceat(
        np.add.reduceat(block_pixels, np.arange(0, n_rows, stride), axis=0), np.arange(0, n_cols, stride), axis=1
    ).ravel()
    order = np.lexsort((chosen_cols, chosen_rows))
    chosen_rows, chosen_cols = chosen_rows[order], chosen_cols[order]
    tops, lefts = chosen_rows * block, chosen_cols * block
    regions = np.stack(
        [tops, lefts, np.minimum(tops + block, height), np.minimum(lefts + block, width)], axis=1
    ).astype(np.int64)
    weights = stratum_pixels[order] / block_pixels[chosen_rows, chosen_cols]
    return BlockPlan(regions=regions, weights=weights, block=block)


def _block_sizes(length: int, block: int) -> np.ndarray:
    return np.minimum(block, length - np.arange(0, length, block))


def chunk_candidates(
    chunk: np.ndarray,
    *,
    origin: tuple[int, int],
    width: int,
    seed: int,
    threshold: float,
    weight: float = 1.0,
    mask: np.ndarray | None = None,
) -> Candidates:
    """Candidates of one block of features.

    Parameters
    ----------
    chunk : numpy.ndarray
        Shape (h, w, F), float32, NaN marking invalid pixels.
    origin : tuple of int
        (row, column) of the block's first pixel in the image.
    width : int
        Width of the whole image.
    seed : int
        The run's seed (>= 0).
    threshold : float
        Keep pixels whose weighted key (key / ``weight``) is below it.
    weight : float
        Pixels of the image each pixel of this block stands for.
    mask : numpy.ndarray, optional
        Shape (h, w), bool: pixels where it is False are invalid too (as if NaN).
    """
    first = np.ascontiguousarray(chunk[..., 0]) if mask is None else np.where(mask, chunk[..., 0], np.nan)
    picked, keys, n_valid = _pick(first, origin[0], origin[1], width, seed, threshold * weight)
    rows, cols = np.divmod(picked, chunk.shape[1])
    return Candidates(
        keys=keys / weight,
        positions=(rows + origin[0]) * width + cols + origin[1],
        vectors=chunk[rows, cols],
        n_valid=int(n_valid),
        valid_estimate=float(n_valid) * weight,
    )


def merge_candidates(parts: Sequence[Candidates]) -> Candidates:
    """Concatenate candidates (order does not matter to :func:`take_sample`)."""
    return Candidates(
        keys=np.concatenate([p.keys for p in parts]),
        positions=np.concatenate([p.positions for p in parts]),
        vectors=np.concatenate([p.vectors for p in parts]),
        n_valid=sum(p.n_valid for p in parts),
        valid_estimate=sum(p.valid_estimate for p in parts),
    )


def take_sample(candidates: Candidates, sample_size: int) -> np.ndarray:
    """The ``sample_size`` candidates with the smallest keys (ties by position), in key order.

    Returns
    -------
    numpy.ndarray
        Shape (min(sample_size, n candidates), F), float32.
    """
    order = np.lexsort((candidates.positions, candidates.keys))[:sample_size]
    return candidates.vectors[order]


def cohort_seed(seed: int, index: int) -> int:
    """The sampling seed of image ``index`` (0-based) of a cohort sampled with ``seed``.

    Images of a cohort need keys that are independent of each other (the same position in two
    images must not get the same key), so each image gets its own seed derived by splitmix64
    from the run's seed and the image's index.

    Returns
    -------
    int
        In [0, 2**63).
    """
    return derived_seed(seed, index + 1)


def derived_seed(seed: int, salt: int) -> int:
    """A seed in [0, 2**63) derived from ``seed`` and ``salt`` by splitmix64 (0: the block keys)."""
    mask = (1 << 64) - 1
    z = (seed + salt * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) >> 1


def take_pooled_sample(parts: list[Candidates], sample_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``sample_size`` candidates with the smallest keys over several images.

    Every image's candidates must come from the same key threshold; the keys are uniform in
    [0, 1) in every image, so the smallest keys overall are a uniform sample of the valid pixels
    of all the images together: each image contributes in proportion to its valid pixels.

    Parameters
    ----------
    parts : list of Candidates
        One per image, in cohort order (ties of equal keys go to the earlier image, then the
        smaller position).
    sample_size : int
        Vectors to take.

    Returns
    -------
    sample : numpy.ndarray
        Shape (min(sample_size, n candidates), F), float32, in key order.
    counts : numpy.ndarray
        Shape (len(parts),), int64: vectors taken from each image.
    """
    keys = np.concatenate([p.keys for p in parts])
    positions = np.concatenate([p.positions for p in parts])
    owners = np.concatenate([np.full(len(p.keys), i, dtype=np.int64) for i, p in enumerate(parts)])
    vectors = np.concatenate([p.vectors for p in parts])
    order = np.lexsort((positions, owners, keys))[:sample_size]
    return vectors[order], np.bincount(owners[order], minlength=len(parts)).astype(np.int64)
