"""``--clusters auto``: which criterion finds the true K, and what choosing K costs.

``python -m benchmarks.bench_auto_k [--range 2-12] [--repeats 3]`` prints two markdown tables:

1. For each case, the K each criterion chooses (:func:`pixseg.choose_k.best_k`: ``silhouette``,
   ``calinski_harabasz``, and the knee of ``inertia``) against the true K. Cases: well-separated
   synthetic samples (3-D, centres at least 0.3 apart, spread 0.02) with K = 3, 5 and 8; the test
   suite's blob image (four colours); and the synthetic slides of ``benchmarks.bench_presets``
   (their known classes), each sampled as ``pixseg segment`` samples it with its preset's options.
2. The time of ``--clusters auto`` on those samples (:func:`choose_clusters` then the final fit)
   against one fit at the true K (:func:`pixseg.kmeans_fit.fit_model`, default restarts), best of
   ``--repeats`` interleaved rounds: the target is at most 3x. Also timed: slide-like samples of 200,000
   rows (``hed,smooth`` and ``hed,texture`` features of the synthetic field of :mod:`benchmarks.synthetic`,
   "true K": glass and its three stains), and both with every k-means run one after the other in the
   calling thread (``workers=1``, the ``serial`` columns), which gives the same models and table as the
   default fits side by side. The machine's load average is printed before the table.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.bench_presets import MASK, NORMALISE, make_image, n_clusters
from pixseg.choose_k import best_k, choose_clusters
from pixseg.features import FeatureSpec, make_feature_spec
from pixseg.kmeans_fit import fit_model

CRITERIA = ("silhouette", "calinski_harabasz", "inertia")


def well_separated(k: int, *, n: int = 200_000, seed: int = 0) -> np.ndarray:
    """``n`` points around ``k`` centres in the unit cube, at least 0.3 apart, spread 0.02."""
    rng = np.random.default_rng(seed)
    centres: list[np.ndarray] = []
    while len(centres) < k:
        candidate = rng.uniform(0, 1, 3)
        if all(np.linalg.norm(candidate - c) > 0.3 for c in centres):
            centres.append(candidate)
    return np.asarray(centres)[rng.integers(0, k, n)] + rng.normal(0, 0.02, (n, 3))


def image_sample(pixels: np.ndarray, **options: Any) -> tuple[np.ndarray, FeatureSpec]:
    """The sample and feature spec ``pixseg segment`` would fit for ``pixels`` with ``options``."""
    from pixseg.estimator import image_from_array
    from pixseg.fitting import draw_sample, prepare_fit
    from pixseg.options import FitOptions, ReadOptions

    fit = FitOptions(**options)
    image = image_from_array(pixels, chunk=128)
    spec, _, source = prepare_fit(image, fit, read=ReadOptions(chunk=128), progress=False)
    return draw_sample(source, sample_size=fit.sample_size, seed=fit.seed, progress=False), spec


def cases() -> list[tuple[str, int, np.ndarray, FeatureSpec]]:
    """(name, true K, sample, spec) of every case."""
    channels = make_feature_spec(
        "channels", n_channels=3, has_alpha=False, dtype=np.dtype("float32"), value_range=(0.0, 1.0)
    )
    found = [(f"well separated, K={k}", k, well_separated(k, seed=k), channels) for k in (3, 5, 8)]
    sys.path.insert(0, "tests")
    from conftest import make_blob_image

    found.append(("blob image (tests)", 4, *image_sample(make_blob_image(150, 230), features=["channels"])))
    from pixseg.presets import PRESETS

    for kind in ("brightfield-he", "brightfield-ihc", "fluorescence", "rgb-photo"):
        pixels, truth = make_image(kind, 384)
        preset = PRESETS[kind]
        sample, spec = image_sample(pixels, features=preset["features"], mask=MASK[kind], normalise=NORMALISE[kind])
        true_k = n_clusters(truth, MASK[kind])
        found.append((f"{kind} slide ({'+'.join(preset['features'])})", true_k, sample, spec))
    return found


def slide_cases(
    size: int = 1024, features: tuple[str, ...] = ("hed,smooth", "hed,texture")
) -> list[tuple[str, int, np.ndarray, FeatureSpec]]:
    """(name, K, sample, spec) of the synthetic field's top-left ``size`` x ``size`` pixels (a multiple
    of its tile), sampled with each of ``features``; K: glass and the field's stains."""
    from benchmarks.synthetic import STAINS, TILE, render_tile

    tiles = size // TILE
    pixels = np.concatenate([np.concatenate([render_tile(r, c) for c in range(tiles)], axis=1) for r in range(tiles)])
    k = 1 + len(STAINS)
    return [
        (f"synthetic field {size}^2 ({groups.replace(',', '+')})", k, *image_sample(pixels, features=groups.split(",")))
        for groups in features
    ]


def best_times(functions: list[Callable[[], Any]], repeats: int) -> list[float]:
    """The shortest wall time of each of ``functions`` over ``repeats`` rounds, each round calling them in turn."""
    times: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for function, spent in zip(functions, times, strict=True):
            started = time.perf_counter()
            function()
            spent.append(time.perf_counter() - started)
    return [min(spent) for spent in times]


def auto_fit(sample: np.ndarray, spec: FeatureSpec, *, k_range: tuple[int, int], workers: int | None) -> None:
    """What ``--clusters auto`` fits: :func:`choose_clusters`, then the final fit at the K chosen."""
    chosen = choose_clusters(sample, spec, k_range=k_range, seed=0, workers=workers).chosen
    fit_model(sample, spec, n_clusters=chosen, seed=0, workers=workers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--range", default="2-12", help="K range tried (default 2-12)")
    parser.add_argument("--repeats", type=int, default=3, help="timings: best of N (default 3)")
    args = parser.parse_args(argv)
    low, high = (int(v) for v in args.range.split("-"))
    found = cases()
    fit_model(found[0][2][:2000], found[0][3], n_clusters=3, seed=0)  # imports dask-ml outside the timings
    print("| case | true K | " + " | ".join(CRITERIA) + " |")
    print("|---|---|" + "---|" * len(CRITERIA))
    for name, true_k, sample, spec in found:
        choice = choose_clusters(sample, spec, k_range=(low, high), seed=0)
        chosen = [best_k(choice.table, criterion) for criterion in CRITERIA]
        print(f"| {name} | {true_k} | " + " | ".join(f"{k}{'' if k == true_k else ' (x)'}" for k in chosen) + " |")
    print()
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores")
    print(
        f"| case | sample rows x cols | one fit at true K (s) | auto {low}-{high} incl. final fit (s) | ratio "
        "| serial: one fit (s) | serial: auto (s) | serial: ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, true_k, sample, spec in found + slide_cases():
        functions: list[Callable[[], Any]] = []
        for workers in (None, 1):
            functions.append(functools.partial(fit_model, sample, spec, n_clusters=true_k, seed=0, workers=workers))
            functions.append(functools.partial(auto_fit, sample, spec, k_range=(low, high), workers=workers))
        one, both, one_serial, both_serial = best_times(functions, args.repeats)
        rows, cols = sample.shape
        print(
            f"| {name} | {rows} x {cols} | {one:.2f} | {both:.2f} | {both / one:.1f}x "
            f"| {one_serial:.2f} | {both_serial:.2f} | {both_serial / one_serial:.1f}x |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
