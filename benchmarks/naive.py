"""The naive out-of-core recipe: dask-ml KMeans used directly on the whole image as a dask array.

Run as ``python -m benchmarks.naive IMAGE.tif``: it opens the TIFF lazily (``aszarr`` +
``da.from_zarr``, chunks = TIFF tiles), reshapes it to (pixels, 3) float32 in raw 0..255 units,
fits ``dask_ml.cluster.KMeans(n_clusters=8, init="k-means||", random_state=0)`` with dask-ml's
other defaults, predicts every pixel and computes the labels (uint8, in memory) and their
all-pixel inertia in one pass, on the threaded scheduler. It prints its stage timings, the
iterations and the inertia as one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import tifffile
import zarr
from dask_ml.cluster import KMeans

from benchmarks import CLUSTERS
from benchmarks.quality import labelled_inertia


def segment_dask_ml(image: da.Array, *, clusters: int = CLUSTERS, seed: int = 0) -> dict[str, Any]:
    """Fit and predict with dask-ml KMeans on every pixel of ``image``.

    Parameters
    ----------
    image : dask.array.Array
        Shape (Y, X, C), any real dtype; any chunking.
    clusters : int
        K.
    seed : int
        ``random_state`` of the fit.

    Returns
    -------
    dict
        ``fit_s``, ``predict_s`` (seconds, the latter including the inertia), ``n_iter`` and
        ``inertia`` (raw units). Computes (whatever scheduler is active).
    """
    pixels = image.reshape(-1, image.shape[-1]).astype(np.float32)
    started = time.perf_counter()
    model = KMeans(n_clusters=clusters, init="k-means||", random_state=seed).fit(pixels)
    fitted = time.perf_counter()
    labels = model.predict(pixels)
    inertia = da.map_blocks(
        _block_inertia,
        pixels,
        labels[:, np.newaxis],
        centroids=np.asarray(model.cluster_centers_),
        chunks=((1,) * pixels.numblocks[0], (1,)),
        dtype=np.float64,
    ).sum()
    _, total = dask.compute(labels.astype(np.uint8), inertia)
    return {
        "fit_s": fitted - started,
        "predict_s": time.perf_counter() - fitted,
        "n_iter": int(model.n_iter_),
        "inertia": float(total),
    }


def _block_inertia(pixels: np.ndarray, labels: np.ndarray, *, centroids: np.ndarray) -> np.ndarray:
    return np.array([[labelled_inertia(pixels, labels[:, 0], centroids)]])


def main(argv: Sequence[str] | None = None) -> int:
    """Segment the image named on the command line with dask-ml, print timings and inertia as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.naive", description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path, help="an RGB tiled TIFF")
    args = parser.parse_args(argv)
    with tifffile.imread(args.image, aszarr=True) as store, dask.config.set(scheduler="threads"):
        stats = segment_dask_ml(da.from_zarr(zarr.open_array(store, mode="r")))
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
