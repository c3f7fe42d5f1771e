"""Fit cost: pixseg's ``fit_model`` alone, timed in this process.

:func:`time_fit` times it on a uniform sample of an image's pixels (``python -m benchmarks`` uses it).
``python -m benchmarks.fitcost [--repeats 3]`` prints a markdown table of ``fit_model`` (default
restarts) on 200,000-row samples of the synthetic field (``channels``: 3 columns; ``hed,texture``: 11)
at K = 4 and 8: restarts side by side (the default) against every restart in the calling thread
(``workers=1``, the same model), interleaved, best of ``--repeats``, with the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from benchmarks import CLUSTERS
from pixseg.features import FeatureSpec, make_feature_spec
from pixseg.kmeans_fit import fit_model

#: pixseg's ``channels`` features of an 8-bit image: values / 255.
_UINT8_SCALE = 255.0


@dataclass(frozen=True)
class FitTiming:
    """One in-process fit.

    Attributes
    ----------
    sample_size : int
        Pixels fitted on.
    fit_s : float
        Seconds in ``pixseg.kmeans_fit.fit_model`` (k-means++ seeds, dask-ml's Lloyd iterations, the
        restarts side by side).
    n_iter : int
        Lloyd iterations.
    """

    sample_size: int
    fit_s: float
    n_iter: int


def time_fit(image_path: Path, sample_size: int, *, clusters: int = CLUSTERS, seed: int = 0) -> FitTiming:
    """Time ``fit_model`` on ``sample_size`` pixels drawn without replacement from an RGB uint8 TIFF.

    Parameters
    ----------
    image_path : pathlib.Path
        The image (read whole).
    sample_size : int
        Pixels in the sample, at most the image's pixel count.
    clusters, seed : int
        K, and the seed of both the draw and the fit.

    Returns
    -------
    FitTiming
    """
    image = tifffile.imread(image_path)
    pixels = image.reshape(-1, image.shape[-1])
    rows = np.random.default_rng(seed).choice(len(pixels), size=sample_size, replace=False)
    sample = pixels[np.sort(rows)] / _UINT8_SCALE
    spec = make_feature_spec("channels", n_channels=image.shape[-1], has_alpha=False, dtype=image.dtype)
    started = time.perf_counter()
    model = fit_model(sample, spec, n_clusters=clusters, seed=seed)
    return FitTiming(sample_size=sample_size, fit_s=time.perf_counter() - started, n_iter=model.n_iter)


def compare_threads(sample: np.ndarray, spec: FeatureSpec, *, clusters: int, repeats: int) -> tuple[float, float]:
    """Best wall times of ``fit_model`` with its restarts side by side and one after the other
    (``workers=1``), interleaved; raises if their models differ.

    Returns
    -------
    (float, float)
        Seconds: side by side, one after the other.
    """
    times: dict[int | None, list[float]] = {None: [], 1: []}
    models = {}
    for _ in range(repeats):
        for workers, spent in times.items():
            started = time.perf_counter()
            models[workers] = fit_model(sample, spec, n_clusters=clusters, seed=0, workers=workers)
            spent.append(time.perf_counter() - started)
    if not np.array_equal(models[None].centroids, models[1].centroids):
        raise AssertionError("the restarts side by side gave another model than one after the other")
    return min(times[None]), min(times[1])


def main(argv: list[str] | None = None) -> int:
    from benchmarks.bench_auto_k import slide_cases

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="best of N (default 3)")
    args = parser.parse_args(argv)
    samples = [(name, sample, spec) for name, _, sample, spec in slide_cases(features=("channels", "hed,texture"))]
    fit_model(samples[0][1][:2000], samples[0][2], n_clusters=3, seed=0)  # imports dask-ml outside the timings
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores")
    print("| sample | rows x cols | K | restarts side by side (s) | one after the other (s) | speed-up |")
    print("|---|---|---|---|---|---|")
    for name, sample, spec in samples:
        for clusters in (4, 8):
            side, serial = compare_threads(sample, spec, clusters=clusters, repeats=args.repeats)
            rows, cols = sample.shape
            print(
                f"| {name} | {rows} x {cols} | {clusters} | {side:.2f} | {serial:.2f} | {serial / side:.2f}x |",
                flush=True,
            )
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
