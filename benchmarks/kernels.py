"""Microbenchmark of nearest-centroid kernels on one core: pixseg's numba loop vs the alternatives.

Pixels are 1 Mpx of the synthetic stained-tissue field (scaled to 0..1, float32); centroids
are the K centres scikit-learn fits on a subsample of them. Every kernel runs with BLAS and
OpenMP limited to one thread, so the figures are per core.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from benchmarks.synthetic import TILE, render_tile
from pixseg.predict import predict_chunk

#: A labeller maps pixels (n, F) float32 to labels (n,) in 0..K-1.
Labeller = Callable[[np.ndarray], np.ndarray]
#: A kernel prepares a labeller for centroids (K, F) float32; only the labeller is timed.
Kernel = Callable[[np.ndarray], Labeller]


@dataclass(frozen=True)
class KernelTiming:
    """One kernel at one K.

    Attributes
    ----------
    kernel : str
        Its name.
    clusters : int
        K.
    pixels : int
        Pixels labelled per call.
    best_s : float
        The fastest of the timed calls, in seconds.
    mpx_per_s : float
        Megapixels per second at ``best_s``, on one thread.
    optimal : float
        Fraction of pixels given a nearest centroid (checked in float64; of two exactly tied
        centroids either counts as nearest).
    """

    kernel: str
    clusters: int
    pixels: int
    best_s: float
    mpx_per_s: float
    optimal: float


def measure_kernels(
    *, clusters: Sequence[int] = (4, 8), repeats: int = 5, tiles: int = 2, seed: int = 0
) -> list[KernelTiming]:
    """Time every kernel at every K on ``tiles`` x ``tiles`` synthetic tiles of pixels.

    Parameters
    ----------
    clusters : sequence of int
        The values of K to try.
    repeats : int
        Timed calls per kernel and K (after one untimed warm-up call); the best counts.
    tiles : int
        Edge of the block of ``TILE``-pixel tiles used as data (2 gives 1024 x 1024 pixels).
    seed : int
        Seeds the pixels and the choice of centroids.

    Returns
    -------
    list of KernelTiming
        In the order pixseg numba, scikit-learn ``KMeans.predict``, numpy expanded formula, per K.
    """
    pixels = _sample_pixels(tiles, seed)
    timings = []
    with threadpool_limits(limits=1):
        for k in clusters:
            centroids = _fit_centroids(pixels, k, seed)
            distances = _exact_distances(pixels, centroids)
            for name, kernel in KERNELS.items():
                best, labels = _best_time(kernel(centroids), pixels, repeats=repeats)
                optimal = _optimal_fraction(distances, labels)
                timings.append(KernelTiming(name, k, len(pixels), best, len(pixels) / 1e6 / best, optimal))
    return timings


def numba_kernel(centroids: np.ndarray) -> Labeller:
    """pixseg's kernel, :func:`pixseg.predict.predict_chunk`, with unit feature weights."""
    weights = np.ones(centroids.shape[1], dtype=np.float32)

    def label(pixels: np.ndarray) -> np.ndarray:
        image = pixels.reshape(1, -1, pixels.shape[1])
        return predict_chunk(image, centroids, weights, np.dtype(np.uint8)).ravel() - np.uint8(1)

    return label


def sklearn_kernel(centroids: np.ndarray) -> Labeller:
    """scikit-learn's ``KMeans.predict`` on float32, the model's centres set to ``centroids``.

    The estimator is fitted here (on the centroids themselves, so the centres do not move),
    under the caller's thread limits: scikit-learn fixes its thread count at fit time.
    """
    model = KMeans(n_clusters=len(centroids), init=centroids, n_init=1, max_iter=1).fit(centroids)
    model.cluster_centers_ = centroids
    return model.predict


def expanded_kernel(centroids: np.ndarray) -> Labeller:
    """numpy expanded squared distance ``x.x - 2 x.c + c.c`` (one BLAS product), then argmin."""
    centroid_norms = np.einsum("ij,ij->i", centroids, centroids)[np.newaxis, :]
    twice_centroids_t = np.ascontiguousarray(2.0 * centroids.T)

    def label(pixels: np.ndarray) -> np.ndarray:
        distances = np.einsum("ij,ij->i", pixels, pixels)[:, np.newaxis] - pixels @ twice_centroids_t
        distances += centroid_norms
        return np.argmin(distances, axis=1)

    return label


KERNELS: dict[str, Kernel] = {
    "pixseg numba (predict_chunk)": numba_kernel,
    "scikit-learn KMeans.predict": sklearn_kernel,
    "numpy expanded formula": expanded_kernel,
}


def _sample_pixels(tiles: int, seed: int) -> np.ndarray:
    blocks = [render_tile(row, col, seed=seed) for row in range(tiles) for col in range(tiles)]
    pixels = np.concatenate([block.reshape(TILE * TILE, 3) for block in blocks])
    return np.ascontiguousarray(pixels, dtype=np.float32) / np.float32(255.0)


def _fit_centroids(pixels: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    model = KMeans(n_clusters=clusters, n_init=1, random_state=seed).fit(pixels[::50])
    return np.ascontiguousarray(model.cluster_centers_, dtype=np.float32)


def _exact_distances(pixels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Squared distances (n, K) in float64 from the float32 values."""
    differences = pixels.astype(np.float64)[:, np.newaxis, :] - centroids.astype(np.float64)[np.newaxis, :, :]
    return np.einsum("ikf,ikf->ik", differences, differences)


def _optimal_fraction(distances: np.ndarray, labels: np.ndarray) -> float:
    chosen = np.take_along_axis(distances, labels.astype(np.intp)[:, np.newaxis], axis=1)[:, 0]
    return float(np.mean(chosen <= distances.min(axis=1)))


def _best_time(label: Labeller, pixels: np.ndarray, *, repeats: int) -> tuple[float, np.ndarray]:
    labels = label(pixels)  # warm-up: compilation, caches
    best = np.inf
    for _ in range(repeats):
        started = time.perf_counter()
        labels = label(pixels)
        best = min(best, time.perf_counter() - started)
    return best, labels
