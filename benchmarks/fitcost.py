"""Fit cost: pixseg's ``fit_model`` alone, timed in this process on a uniform sample of an image's pixels."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from benchmarks import CLUSTERS
from pixseg.features import make_feature_spec
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
        Seconds in ``pixseg.model.fit_model`` (dask-ml k-means|| and Lloyd, on the threaded scheduler).
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
