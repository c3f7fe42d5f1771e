"""Per-label statistics: pixel counts computed chunk by chunk, then areas, fractions and centroids."""

from __future__ import annotations

from typing import Any

import numba
import numpy as np


def count_labels(labels: np.ndarray, n_values: int) -> np.ndarray:
    """Pixel count of each value 0..``n_values - 1`` in a label array: shape (n_values,), int64.

    Values at or above ``n_values`` are not counted. A numba loop: ``np.bincount`` first widens
    a uint8 chunk to int64 (8x its size), which made counting cost more than labelling.
    """
    counts = np.zeros(max(n_values, int(np.iinfo(labels.dtype).max) + 1), dtype=np.int64)
    _count(np.ascontiguousarray(labels).reshape(-1), counts)
    return counts[:n_values]


@numba.njit(nogil=True, cache=True)
def _count(values: np.ndarray, counts: np.ndarray) -> None:  # pragma: no cover - compiled
    for value in values:
        counts[value] += 1


def label_table(
    counts: np.ndarray,
    centroids: np.ndarray,
    columns: tuple[str, ...],
    *,
    pixel_size: tuple[float, float] | None,
) -> list[dict[str, Any]]:
    """One row per label 1..K.

    Parameters
    ----------
    counts : numpy.ndarray
        Shape (K + 1,): pixel counts, index 0 = masked.
    centroids : numpy.ndarray
        Shape (K, F), in feature units.
    columns : tuple of str
        Feature column names (F).
    pixel_size : tuple of float or None
        (Y, X) micrometres per pixel, if known.

    Returns
    -------
    list of dict
        Keys ``label``, ``pixels``, ``fraction`` (of unmasked pixels), ``area_um2`` (None when
        the pixel size is unknown) and ``centroid`` (column name -> value).
    """
    unmasked = int(counts[1:].sum())
    pixel_area = pixel_size[0] * pixel_size[1] if pixel_size else None
    return [
        {
            "label": label,
            "pixels": int(counts[label]),
            "fraction": int(counts[label]) / unmasked if unmasked else 0.0,
            "area_um2": int(counts[label]) * pixel_area if pixel_area is not None else None,
            "centroid": {name: float(v) for name, v in zip(columns, centroids[label - 1], strict=True)},
        }
        for label in range(1, len(counts))
    ]
