"""Per-label statistics: pixel counts and input colour sums computed chunk by chunk, then areas,
fractions, mean colours, display colours and centroids.

The counts and colour sums are kept per cluster; with a class table (:mod:`pixseg.classes`) the
rows are per class, their counts and sums added up over the class's clusters, so ``pixseg
relabel`` gets the same rows as a label pass from the stored per-cluster values alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numba
import numpy as np

from pixseg.colours import RGBA, background_label, hex_colour, label_colours

if TYPE_CHECKING:
    from pixseg.model import SegmentationModel


#: Interleaved partial counts and sums of the counting loops: pixel ``i`` adds to copy ``i % LANES``,
#: so a run of one label (the usual case) does not wait on the previous add to the same cell. The
#: loops are unrolled by it (numba reads it as a constant): at 1024^2 and K = 8, counting and summing
#: an RGB chunk takes 2.3 ms against 4.9 ms for the two one-lane loops before.
LANES = 4


def count_labels(labels: np.ndarray, n_values: int) -> np.ndarray:
    """Pixel count of each value 0..``n_values - 1`` in a label array: shape (n_values,), int64.

    Values at or above ``n_values`` are not counted. A numba loop: ``np.bincount`` first widens
    a uint8 chunk to int64 (8x its size), which made counting cost more than labelling.
    """
    no_colour = np.empty((*labels.shape, 0), dtype=np.uint8)
    return count_and_sum_colours(labels, no_colour, n_values, 0)[0]


def count_and_sum_colours(
    labels: np.ndarray, pixels: np.ndarray, n_values: int, n_colour: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`count_labels` of ``labels``, and per-label sums of the first ``n_colour`` channels of
    ``pixels``, in one pass.

    Row ``v`` of the sums adds up the pixels labelled ``v``; label 0 (masked) and values at or above
    ``n_values`` are not summed. Sums are float64: those of integer pixels are whole numbers, exact
    up to 2**53, so adding per-chunk sums in any order gives the same total; float pixels are added
    in a fixed order (``LANES`` partial sums), so a chunk's sums do not depend on the run.

    Parameters
    ----------
    labels : numpy.ndarray
        Shape (h, w) (or any shape), unsigned integers.
    pixels : numpy.ndarray
        Shape ``labels.shape + (C,)``, C >= ``n_colour``: the input the labels come from.
    n_values : int
        Rows of the results: labels 0..``n_values - 1``.
    n_colour : int
        Colour channels (the alpha channel, if any, comes after them).

    Returns
    -------
    counts : numpy.ndarray
        Shape (n_values,), int64.
    sums : numpy.ndarray
        Shape (n_values, n_colour), float64.
    """
    counts = np.zeros((LANES, max(n_values, int(np.iinfo(labels.dtype).max) + 1)), dtype=np.int64)
    sums = np.zeros((LANES, n_values, n_colour), dtype=np.float64)
    flat = np.ascontiguousarray(pixels).reshape(labels.size, pixels.shape[-1])
    _count_and_sum(np.ascontiguousarray(labels).reshape(-1), flat, counts, sums)
    return counts.sum(axis=0)[:n_values], sums.sum(axis=0)


@numba.njit(nogil=True, cache=True)
def _count_and_sum(
    values: np.ndarray, pixels: np.ndarray, counts: np.ndarray, sums: np.ndarray
) -> None:  # pragma: no cover - compiled
    n_values, n_colour = sums.shape[1], sums.shape[2]
    stop = values.shape[0] - values.shape[0] % LANES
    for i in range(0, stop, LANES):
        for lane in range(LANES):
            value = values[i + lane]
            counts[lane, value] += 1
            if value != 0 and value < n_values:
                for c in range(n_colour):
                    sums[lane, value, c] += pixels[i + lane, c]
    for i in range(stop, values.shape[0]):
        value = values[i]
        counts[0, value] += 1
        if value != 0 and value < n_values:
            for c in range(n_colour):
                sums[0, value, c] += pixels[i, c]


def label_summary(labels: np.ndarray, pixels: np.ndarray, n_values: int, n_colour: int) -> np.ndarray:
    """:func:`count_and_sum_colours` as one table, shape (n_values, 1 + ``n_colour``) float64: the
    counts (exact up to 2**53) in column 0, the colour sums after them. The tables of a pass's
    chunks add up to the pass's; :func:`split_summary` parts them again."""
    counts, sums = count_and_sum_colours(labels, pixels, n_values, n_colour)
    return np.column_stack([counts.astype(np.float64), sums])


def split_summary(table: Any) -> tuple[Any, Any]:
    """The (int64 counts, float64 colour sums) of a :func:`label_summary` table (or a sum of them,
    numpy or dask)."""
    return table[:, 0].astype(np.int64), table[:, 1:]


def mean_colours(counts: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """Mean colour of each label: ``sums / counts``, shape (n_values, C) float64, NaN for an empty label."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts[:, np.newaxis] > 0, sums / np.maximum(counts, 1)[:, np.newaxis], np.nan)


def label_table(
    counts: np.ndarray,
    centroids: np.ndarray,
    columns: tuple[str, ...],
    *,
    pixel_size: tuple[float, float] | None,
    means: np.ndarray,
    colours: list[tuple[int, int, int, int]],
    rgb8: bool,
    background: int | None,
    names: Sequence[str] | None = None,
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
    means : numpy.ndarray
        Shape (K + 1, C): mean input colour of each label (see :func:`mean_colours`).
    colours : list of tuple of int
        K display colours, RGBA 0-255 (see :func:`pixseg.colours.label_colours`).
    rgb8 : bool
        Whether the input is 8-bit RGB (then ``hex`` is given, else ``intensity``).
    background : int or None
        The background label (named ``"background"`` unless ``names`` are given).
    names : sequence of str, optional
        The names of labels 1..K (default ``"background"`` or ``"cluster N"``).

    Returns
    -------
    list of dict
        Keys ``label``, ``name`` (``"background"`` or ``"cluster N"``), ``pixels``, ``fraction``
        (of unmasked pixels), ``area_um2`` (None when the pixel size is unknown), ``mean_colour``
        (one value per colour channel, in the input's units; None for an empty label), ``hex``
        (``#rrggbb`` of the mean colour, 8-bit RGB inputs only, else None), ``intensity`` (the
        mean over colour channels, other inputs only, else None), ``colour`` (display colour,
        ``#rrggbb``), ``colour_rgba`` and ``centroid`` (column name -> value).
    """
    unmasked = int(counts[1:].sum())
    pixel_area = pixel_size[0] * pixel_size[1] if pixel_size else None
    rows = []
    for label in range(1, len(counts)):
        pixels = int(counts[label])
        mean = [float(v) for v in means[label]] if pixels else None
        rows.append(
            {
                "label": label,
                "name": names[label - 1] if names else "background" if label == background else f"cluster {label}",
                "pixels": pixels,
                "fraction": pixels / unmasked if unmasked else 0.0,
                "area_um2": pixels * pixel_area if pixel_area is not None else None,
                "mean_colour": mean,
                "hex": hex_colour(mean) if rgb8 and mean is not None else None,
                "intensity": float(np.mean(mean)) if not rgb8 and mean is not None else None,
                "colour": hex_colour(colours[label - 1]),
                "colour_rgba": list(colours[label - 1]),
                "centroid": {name: float(v) for name, v in zip(columns, centroids[label - 1], strict=True)},
            }
        )
    return rows


def label_statistics(
    cluster_counts: np.ndarray,
    cluster_sums: np.ndarray,
    model: SegmentationModel,
    *,
    pixel_size: tuple[float, float] | None,
    dtype: np.dtype,
) -> tuple[list[dict[str, Any]], list[RGBA]]:
    """The statistics rows and display colours of an output's label values.

    Without a class table the label values are the clusters (see :func:`label_table`). With one
    (``model.classes``) they are the classes 1..M: each row adds up its clusters' counts and colour
    sums, its ``centroid`` is the mean of its clusters' centroids weighted by their pixels (their
    plain mean when it has none), it lists its ``clusters``, and it takes the class's name and
    colour when the table gives them; an unnamed class is ``cluster N`` (``background`` for the
    glass, as for clusters: :func:`pixseg.colours.background_label`, unless a class is named so).

    Parameters
    ----------
    cluster_counts : numpy.ndarray
        Shape (K + 1,), int64: pixels of each cluster, index 0 = masked.
    cluster_sums : numpy.ndarray
        Shape (K + 1, C), float64: the colour sums of each cluster (see :func:`count_and_sum_colours`).
    model : SegmentationModel
        Its centroids, feature columns and class table.
    pixel_size : tuple of float or None
        (Y, X) micrometres per pixel, if known.
    dtype : numpy.dtype
        The input's dtype (the background rule and ``hex`` need 8-bit RGB).

    Returns
    -------
    rows : list of dict
        One per label value (see :func:`label_table`), plus ``clusters`` with a class table.
    colours : list of tuple of int
        RGBA display colours of the label values 1..
    """
    counts, sums, centroids = cluster_counts, cluster_sums, model.centroids
    table = model.classes
    if table is not None:
        lookup = table.lookup()
        counts = np.zeros(table.n_classes + 1, dtype=np.int64)
        np.add.at(counts, lookup, cluster_counts)
        sums = np.zeros((table.n_classes + 1, cluster_sums.shape[1]))
        np.add.at(sums, lookup, cluster_sums)
        centroids = np.array([_weighted_centroid(model.centroids, cluster_counts, c.clusters) for c in table.classes])
    means = mean_colours(counts, sums)
    background = background_label(means[1:], dtype=dtype)
    colours = label_colours(len(counts) - 1, background=background)
    names = None
    if table is not None:
        glass = None if any(c.name == "background" for c in table.classes) else background
        names = [c.title if c.name or i != glass else "background" for i, c in enumerate(table.classes, 1)]
        colours = [_rgba(c.colour) if c.colour else colour for c, colour in zip(table.classes, colours, strict=True)]
    rows = label_table(
        counts,
        centroids,
        model.feature_spec.columns,
        pixel_size=pixel_size,
        means=means,
        colours=colours,
        rgb8=sums.shape[1] == 3 and np.dtype(dtype) == np.uint8,
        background=background,
        names=names,
    )
    if table is not None:
        for row, pixel_class in zip(rows, table.classes, strict=True):
            row["clusters"] = list(pixel_class.clusters)
    return rows, colours


def _weighted_centroid(centroids: np.ndarray, counts: np.ndarray, clusters: tuple[int, ...]) -> np.ndarray:
    members = [c - 1 for c in clusters]
    weights = counts[list(clusters)].astype(np.float64)
    return np.average(centroids[members], axis=0, weights=weights if weights.sum() > 0 else None)


def _rgba(colour: str) -> RGBA:
    """``(r, g, b, 255)`` of ``#rrggbb``."""
    return (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16), 255)
