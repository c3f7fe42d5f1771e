"""Fit quality and fit cost of pixseg's seeding, against a full scikit-learn fit, over many seeds.

Run as ``python -m benchmarks.fit_quality IMAGE.tif [--clusters 4,8] [--seeds 20] [--restarts 1,3]``.
For each K it fits scikit-learn's ``KMeans`` on every pixel (the in-memory recipe,
``benchmarks.inmemory``: one k-means++ init, ``random_state=0``), then fits pixseg's
:class:`~pixseg.PixelKMeans` (its deterministic sample and dask-ml fit) with each seed and each
restart count, and reports each fit's all-pixel inertia over the reference's. The issue's guard:
the median within 1%, no seed worse than 2%.

``--compare-kmeans-parallel`` also times ``fit_model`` with dask-ml's own k-means|| seeding (the
fit before 2026-11-29) on the same sample, interleaved with the k-means++ seeding, so the two
costs are a ratio measured in one run. The machine's load average is recorded with each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from unittest import mock

import numpy as np
import tifffile

#: pixseg's ``channels`` features of an 8-bit image: values / 255.
_UINT8_SCALE = 255.0


def all_pixel_inertia(pixels: np.ndarray, centroids: np.ndarray) -> float:
    """Sum over ``pixels`` (n, F) of the squared distance to the nearest of ``centroids`` (K, F), in float64."""
    from pixseg.kmeans_fit import squared_inertia

    return squared_inertia(np.asarray(pixels, dtype=np.float64), np.asarray(centroids, dtype=np.float64))


def reference_inertia(pixels: np.ndarray, clusters: int) -> tuple[float, float]:
    """All-pixel inertia of scikit-learn's full fit (the in-memory recipe) and its fit seconds."""
    from sklearn.cluster import KMeans

    started = time.perf_counter()
    model = KMeans(n_clusters=clusters, n_init=1, random_state=0).fit(pixels)
    fit_s = time.perf_counter() - started
    return all_pixel_inertia(pixels, model.cluster_centers_), fit_s


def pixseg_fit(image: np.ndarray, clusters: int, *, seed: int, restarts: int) -> tuple[np.ndarray, float]:
    """pixseg's centroids in raw 0..255 units for ``image`` and the seconds of sample + fit."""
    from pixseg import PixelKMeans

    started = time.perf_counter()
    estimator = PixelKMeans(n_clusters=clusters, seed=seed, restarts=restarts).fit(image)
    return estimator.cluster_centers_ * _UINT8_SCALE, time.perf_counter() - started


def _kmeans_parallel(
    scaled: np.ndarray, n_clusters: int, *, seed: int, restart: int, tol: float
) -> tuple[np.ndarray, int]:
    """The fit before 2026-11-29: dask-ml's k-means|| on a shuffled copy, 100,000-row chunks, threads."""
    import dask
    import dask.array as da
    from dask_ml.cluster import KMeans

    from pixseg.kmeans_fit import _RESTART_STRIDE

    shuffled = scaled[np.random.default_rng([seed, restart]).permutation(len(scaled))]
    estimator = KMeans(
        n_clusters=n_clusters,
        init="k-means||",
        random_state=(seed + restart * _RESTART_STRIDE) % 2**32,
        tol=tol,
        max_iter=300,
    )
    with dask.config.set(scheduler="threads"):
        estimator.fit(da.from_array(shuffled, chunks=(100_000, shuffled.shape[1])))
    return np.asarray(estimator.cluster_centers_, dtype=np.float64), int(estimator.n_iter_)


@contextmanager
def _seeding(name: str) -> Iterator[None]:
    """Fit with pixseg's seeding (``"k-means++"``) or with the former k-means|| one (``"k-means||"``)."""
    if name == "k-means++":
        yield
        return
    with mock.patch("pixseg.kmeans_fit._fit_kmeans", _kmeans_parallel):
        yield


def compare_seedings(pixels: np.ndarray, clusters: int, *, sample_size: int, repeats: int) -> dict[str, Any]:
    """``fit_model`` seconds and all-pixel inertia with each seeding, interleaved, on one uniform sample."""
    from pixseg.features import make_feature_spec
    from pixseg.kmeans_fit import fit_model

    rng = np.random.default_rng(0)
    sample = pixels[np.sort(rng.choice(len(pixels), size=sample_size, replace=False))] / _UINT8_SCALE
    spec = make_feature_spec("channels", n_channels=pixels.shape[1], has_alpha=False, dtype=np.dtype(np.uint8))
    times: dict[str, list[float]] = {"k-means++": [], "k-means||": []}
    inertia: dict[str, list[float]] = {"k-means++": [], "k-means||": []}
    for repeat in range(repeats):
        for name in times:
            with _seeding(name):
                started = time.perf_counter()
                model = fit_model(sample, spec, n_clusters=clusters, seed=repeat)
                times[name].append(time.perf_counter() - started)
            inertia[name].append(all_pixel_inertia(pixels, model.centroids * _UINT8_SCALE))
    return {
        "clusters": clusters,
        "sample_size": sample_size,
        "median_s": {name: statistics.median(values) for name, values in times.items()},
        "k-means|| / k-means++ time": statistics.median(times["k-means||"]) / statistics.median(times["k-means++"]),
        "median_inertia": {name: statistics.median(values) for name, values in inertia.items()},
        "load": os.getloadavg(),
    }


def seed_sweep(image: np.ndarray, clusters: int, *, seeds: int, restarts: Sequence[int]) -> dict[str, Any]:
    """Every seed's all-pixel inertia over the full scikit-learn fit's, for each restart count."""
    pixels = image.reshape(-1, image.shape[-1]).astype(np.float64)
    reference, reference_s = reference_inertia(pixels, clusters)
    rows = []
    for count in restarts:
        ratios, seconds = [], []
        for seed in range(seeds):
            centroids, fit_s = pixseg_fit(image, clusters, seed=seed, restarts=count)
            ratios.append(all_pixel_inertia(pixels, centroids) / reference)
            seconds.append(fit_s)
        rows.append(
            {
                "restarts": count,
                "median_ratio": statistics.median(ratios),
                "worst_ratio": max(ratios),
                "best_ratio": min(ratios),
                "median_fit_s": statistics.median(seconds),
                "load": os.getloadavg(),
            }
        )
    return {"clusters": clusters, "reference_fit_s": reference_s, "rows": rows}


def _integers(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def main(argv: Sequence[str] | None = None) -> int:
    """Print the seed sweep (and the seeding comparison) of the image named on the command line as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fit_quality", description=__doc__.splitlines()[0])
    parser.add_argument("image", help="an RGB uint8 TIFF, read whole")
    parser.add_argument("--clusters", type=_integers, default=[4, 8], help="K values, comma-separated")
    parser.add_argument("--seeds", type=int, default=20, help="seeds per K and restart count")
    parser.add_argument("--restarts", type=_integers, default=[1, 3], help="restart counts, comma-separated")
    parser.add_argument("--compare-kmeans-parallel", action="store_true", help="also time the former seeding")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats of the seeding comparison")
    args = parser.parse_args(argv)
    image = tifffile.imread(args.image)
    result: dict[str, Any] = {"image": args.image, "shape": list(image.shape), "load_at_start": os.getloadavg()}
    if args.compare_kmeans_parallel:
        pixels = image.reshape(-1, image.shape[-1])
        result["seedings"] = [
            compare_seedings(pixels, k, sample_size=200_000, repeats=args.repeats) for k in args.clusters
        ]
    result["sweeps"] = [seed_sweep(image, k, seeds=args.seeds, restarts=args.restarts) for k in args.clusters]
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
