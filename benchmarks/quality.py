"""Clustering quality: all-pixel inertia, in raw RGB units (0..255 per channel, unstandardised).

That is the space the in-memory scikit-learn recipe fits in, so every recipe's inertia is
comparable with it. pixseg's model stores centroids in feature units (channels / 255); they are
multiplied by 255, and each pixel is charged to the centroid of the label pixseg gave it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile
import zarr

#: Rows of pixels per block when summing, bounding the float64 temporaries to ~24 MB.
_BLOCK_ROWS = 1 << 20
#: Input values per feature unit of pixseg's ``channels`` features (8-bit inputs are scaled to 0..1).
_UINT8_SCALE = 255.0


def labelled_inertia(pixels: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> float:
    """Sum over pixels of the squared distance to the centroid of each pixel's label.

    Parameters
    ----------
    pixels : numpy.ndarray
        Shape (n, F), any real dtype; not modified.
    labels : numpy.ndarray
        Shape (n,), integers in 0..K-1: the row of ``centroids`` each pixel belongs to.
    centroids : numpy.ndarray
        Shape (K, F).

    Returns
    -------
    float
        Computed in float64, block by block.
    """
    centres = np.asarray(centroids, dtype=np.float64)
    total = 0.0
    for start in range(0, len(pixels), _BLOCK_ROWS):
        block = np.asarray(pixels[start : start + _BLOCK_ROWS], dtype=np.float64)
        total += float(((block - centres[labels[start : start + _BLOCK_ROWS]]) ** 2).sum())
    return total


def pixseg_inertia(image_path: Path, labels_path: Path, model_path: Path) -> float:
    """All-pixel inertia of a pixseg segmentation of an 8-bit RGB image, in raw RGB units.

    Parameters
    ----------
    image_path : pathlib.Path
        The input TIFF (read whole: meant for images up to a few thousand pixels a side).
    labels_path : pathlib.Path
        pixseg's OME-Zarr labels output; its full-resolution array ``0`` holds labels 1..K.
    model_path : pathlib.Path
        The model JSON from ``segment --save-model`` (``centroids`` in feature units, row i = label i + 1).

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If a pixel is unlabelled (label 0) or the shapes disagree.
    """
    image = tifffile.imread(image_path)
    labels = np.asarray(zarr.open_array(labels_path / "0", mode="r")[...])
    if labels.shape != image.shape[:2] or not labels.all():
        raise ValueError(f"labels {labels_path!r} do not cover every pixel of {image_path!r}")
    centroids = np.asarray(json.loads(model_path.read_text())["centroids"], dtype=np.float64) * _UINT8_SCALE
    return labelled_inertia(image.reshape(-1, image.shape[-1]), labels.reshape(-1).astype(np.intp) - 1, centroids)
