"""The in-memory baseline: the classic "k-means on the pixels" recipe with scikit-learn.

Run as ``python -m benchmarks.inmemory IMAGE.tif``: it reads the whole image into numpy,
reshapes it to (pixels, 3) float64, fits ``KMeans(n_clusters=8, n_init=1, random_state=0)``
on every pixel, predicts every pixel and reshapes the labels to the image. It writes no
output file. It prints its stage timings and all-pixel inertia (raw 0..255 units, computed from
the predicted labels) as one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import numpy as np
import tifffile
from sklearn.cluster import KMeans

from benchmarks import CLUSTERS
from benchmarks.quality import labelled_inertia


def segment_in_memory(
    image: np.ndarray, *, clusters: int = CLUSTERS, seed: int = 0
) -> tuple[np.ndarray, dict[str, float]]:
    """Label every pixel of ``image`` with in-memory scikit-learn k-means.

    Parameters
    ----------
    image : numpy.ndarray
        Shape (Y, X, C), any real dtype; not modified.
    clusters : int
        K.
    seed : int
        ``random_state`` of the fit.

    Returns
    -------
    labels : numpy.ndarray
        Shape (Y, X), int32, 0..K-1.
    stats : dict
        ``fit_s``, ``predict_s`` (seconds), ``n_iter`` and ``inertia`` (sum of squared distances of
        every pixel to its label's centre, in ``image`` units).
    """
    pixels = image.reshape(-1, image.shape[-1]).astype(float)
    started = time.perf_counter()
    model = KMeans(n_clusters=clusters, n_init=1, random_state=seed).fit(pixels)
    fitted = time.perf_counter()
    labels = model.predict(pixels)
    stats = {
        "fit_s": fitted - started,
        "predict_s": time.perf_counter() - fitted,
        "n_iter": int(model.n_iter_),
        "inertia": labelled_inertia(pixels, labels, model.cluster_centers_),
    }
    return labels.reshape(image.shape[:2]), stats


def main(argv: Sequence[str] | None = None) -> int:
    """Read the image named on the command line, segment it in memory, print timings as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inmemory", description=__doc__.splitlines()[0])
    parser.add_argument("image", help="an RGB TIFF")
    parser.add_argument("--clusters", "-k", type=int, default=CLUSTERS, help="K (default %(default)s)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    image = tifffile.imread(args.image)
    read_s = time.perf_counter() - started
    _, stats = segment_in_memory(image, clusters=args.clusters)
    print(json.dumps({"read_s": read_s, **stats}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
