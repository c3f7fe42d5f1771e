"""Per-chunk CPU cost and transient memory of the label pass's features, one thread.

Run as ``python -m benchmarks.bench_chunk_features --repeats 7``. For one 1024^2 chunk of the
synthetic tissue field with its 16-pixel halo (texture feature sets only) and a K = 5 model, it
prints per feature set the median CPU milliseconds (``time.process_time``, OpenCV on one thread)
of ``compute_features``, of ``compute_features`` + ``predict_chunk`` (the two-step label graph)
and of ``label_chunk`` (features made and labelled band by band), and the peak traced memory of
each (``tracemalloc``: numpy and OpenCV results, not the interpreter).
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence

import numpy as np

from benchmarks.synthetic import render_tile
from pixseg.features import compute_features, make_feature_spec
from pixseg.model import SegmentationModel
from pixseg.predict import label_chunk, predict_chunk

#: The compared feature sets: plain colour, the brightfield-he preset's, and the texture preset's.
FEATURE_SETS = ("channels", "hed,smooth", "hed,texture")
CHUNK, HALO = 1024, 16


def _median_ms(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        function()
        times.append((time.process_time() - start) * 1e3)
    return statistics.median(times)


def _peak_mb(function: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Print one line per feature set."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_chunk_features", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed calls of each (default 7)")
    args = parser.parse_args(argv)
    import cv2

    cv2.setNumThreads(1)
    size = CHUNK + 2 * HALO
    tiles = [np.concatenate([render_tile(row, col) for col in range(3)], axis=1) for row in range(3)]
    image = np.ascontiguousarray(np.concatenate(tiles, axis=0)[:size, :size, :3])
    for groups in FEATURE_SETS:
        spec = make_feature_spec(groups, n_channels=3, has_alpha=False, dtype=image.dtype)
        halo = HALO if spec.sigmas else 0
        chunk = image if halo else image[HALO:-HALO, HALO:-HALO]
        where = {
            "halo": ((halo, halo), (halo, halo)),
            "scale": (1.0, 1.0),
            "origin": (0, 0),
            "image_shape": (size, size),
        }
        rows = compute_features(chunk, spec, halo=where["halo"]).reshape(-1, len(spec.columns))
        picked = rows[np.random.default_rng(0).choice(len(rows), 5, replace=False)]
        model = SegmentationModel(
            spec, picked.astype(np.float64), rows.mean(0), rows.std(0) + 1e-3, 0, len(rows), 0.0, 1
        )
        centroids = picked.astype(np.float32)
        weights = (1.0 / model.feature_std**2).astype(np.float32)
        del rows

        def features(spec=spec, chunk=chunk, halo=where["halo"]) -> np.ndarray:
            return compute_features(chunk, spec, halo=halo)

        def two_step(features=features, model=model, centroids=centroids, weights=weights) -> np.ndarray:
            return predict_chunk(features(), centroids, weights, model.label_dtype)

        def banded(spec=spec, chunk=chunk, model=model, where=where) -> np.ndarray:
            return label_chunk(chunk, spec, model=model, **where)

        print(
            f"{groups:12s} features {_median_ms(features, args.repeats):6.1f} ms"
            f" | + predict {_median_ms(two_step, args.repeats):6.1f} ms, peak {_peak_mb(two_step):5.1f} MB"
            f" | label_chunk {_median_ms(banded, args.repeats):6.1f} ms, peak {_peak_mb(banded):5.1f} MB",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
