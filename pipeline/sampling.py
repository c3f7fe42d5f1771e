"""Deterministic sampling of feature vectors, spread over the whole image.

Every pixel gets a pseudo-random key from a counter-based hash (splitmix64) of the seed and
its global position ``row * width + column``. The sample is the ``n`` valid pixels with the
smallest keys: a uniform sample without replacement, so each chunk contributes in proportion
to its valid pixels, and which pixels are drawn depends only on the seed and the pixels'
positions: never on the chunking, the file's tiling, task order, the scheduler or the
number of workers.

Each chunk returns only pixels whose key is below a threshold chosen to yield a little more
than ``n`` candidates, so the sample pass moves ~``n`` vectors, not the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import dask
import dask.array as da
import numba
import numpy as np
from dask.delayed import Delayed

#: Keys are 53-bit integers scaled to [0, 1).
_KEY_SCALE = 2.0**-53


@dataclass(frozen=True)
class Candidates:
    """Pixels whose key fell below the threshold, and the image's count of valid pixels.

    Attributes
    ----------
    keys : numpy.ndarray
        Shape (n,), float64 in [0, 1).
    positions : numpy.ndarray
        Shape (n,), int64: ``row * width + column`` of each pixel.
    vectors : numpy.ndarray
        Shape (n, F), float32 feature vectors.
    n_valid : int
        Valid pixels in the whole image.
    """

    keys: np.ndarray
    positions: np.ndarray
    vectors: np.ndarray
    n_valid: int


@numba.njit(nogil=True, cache=True)
def _pick(first_feature: np.ndarray, top: int, left: int, width: int, seed: int, threshold: float):  # pragma: no cover
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
            if key < threshold:
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


def candidate_threshold(sample_size: int, n_pixels: int) -> float:
    """Key threshold expected to yield ``sample_size`` plus six standard deviations of candidates."""
    if n_pixels <= 0:
        return 1.0
    return min(1.0, (sample_size + 6.0 * math.sqrt(sample_size) + 16.0) / n_pixels)


def chunk_candidates(
    chunk: np.ndarray, *, origin: tuple[int, int], width: int, seed: int, threshold: float
) -> Candidates:
    """Candidates of one chunk.

    Parameters
    ----------
    chunk : numpy.ndarray
        Shape (h, w, F), float32, NaN marking invalid pixels.
    origin : tuple of int
        (row, column) of the chunk's first pixel in the image.
    width : int
        Width of the whole image.
    seed : int
        The run's seed (>= 0).
    threshold : float
        Keep pixels whose key is below it.
    """
    first = np.ascontiguousarray(chunk[..., 0])
    picked, keys, n_valid = _pick(first, origin[0], origin[1], width, seed, threshold)
    rows, cols = np.divmod(picked, chunk.shape[1])
    return Candidates(
        keys=keys,
        positions=(rows + origin[0]) * width + cols + origin[1],
        vectors=chunk[rows, cols],
        n_valid=int(n_valid),
    )


def merge_candidates(parts: list[Candidates]) -> Candidates:
    """Concatenate per-chunk candidates (order does not matter to :func:`take_sample`)."""
    return Candidates(
        keys=np.concatenate([p.keys for p in parts]),
        positions=np.concatenate([p.positions for p in parts]),
        vectors=np.concatenate([p.vectors for p in parts]),
        n_valid=sum(p.n_valid for p in parts),
    )


def build_candidates(features: da.Array, *, threshold: float, seed: int) -> Delayed:
    """Lazily gather the candidates of every chunk.

    Parameters
    ----------
    features : dask.array.Array
        Shape (Y, X, F), float32, NaN marking invalid pixels; F in one chunk.
    threshold : float
        Key threshold (see :func:`candidate_threshold`).
    seed : int
        The run's seed (>= 0).

    Returns
    -------
    dask.delayed.Delayed
        Computes to one :class:`Candidates`; nothing is computed here.
    """
    row_starts = np.cumsum((0, *features.chunks[0][:-1]))
    col_starts = np.cumsum((0, *features.chunks[1][:-1]))
    width = int(features.shape[1])
    blocks = features.to_delayed()
    pick = dask.delayed(chunk_candidates, pure=True)
    parts = [
        pick(blocks[i, j, 0], origin=(int(top), int(left)), width=width, seed=seed, threshold=threshold)
        for i, top in enumerate(row_starts)
        for j, left in enumerate(col_starts)
    ]
    return dask.delayed(merge_candidates, pure=True)(parts)


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
    mask = (1 << 64) - 1
    z = (seed + (index + 1) * 0x9E3779B97F4A7C15) & mask
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
