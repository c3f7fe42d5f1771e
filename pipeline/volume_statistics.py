"""A volume's statistics per label: voxels, fraction and volume in mm³, with the display colour
and the model's centroid, written as ``OUTPUT.stats.csv`` and ``OUTPUT.stats.json`` by the writer
slides use (:func:`pixseg.io.side_files.write_statistics`; the mean input voxel of each label is
its ``intensity``), so a volume's side files are
recognised as pixseg's own by the same rules (:func:`pixseg.io.side_files.is_own_side_file`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pixseg.colours import hex_colour, label_colours
from pixseg.io.side_files import VOXEL_MEASURES, side_file_base, write_statistics
from pixseg.model import SegmentationModel
from pixseg.statistics import mean_colours


def volume_statistics(
    counts: np.ndarray, sums: np.ndarray, voxel_volume: float, model: SegmentationModel
) -> list[dict[str, Any]]:
    """One row per label 1..K.

    Parameters
    ----------
    counts : numpy.ndarray
        Shape (K + 1,), int64: voxels of each label, index 0 = no data.
    sums : numpy.ndarray
        Shape (K + 1, C), float64: the sums of each label's input voxels, per channel.
    voxel_volume : float
        mm³ per voxel.
    model : SegmentationModel
        Its centroids and feature columns.

    Returns
    -------
    list of dict
        ``label``, ``name`` (``"cluster N"``), ``voxels``, ``fraction`` (of labelled voxels),
        ``volume_mm3`` (``voxels * voxel_volume``), ``mean_colour`` (the mean input voxel, one
        value per channel, in the input's units: Hounsfield units for CT) and ``intensity`` (its
        mean over channels), both None for an empty label, display ``colour`` (``#rrggbb``) and
        ``colour_rgba`` (:func:`pixseg.colours.label_colours`), and ``centroid`` (the model's
        feature column -> value).
    """
    labelled = max(1, int(counts[1:].sum()))
    means = mean_colours(counts, sums)
    colours = label_colours(len(counts) - 1)
    columns = model.feature_spec.columns
    return [
        {
            "label": label,
            "name": f"cluster {label}",
            "voxels": int(counts[label]),
            "fraction": int(counts[label]) / labelled,
            "volume_mm3": int(counts[label]) * voxel_volume,
            "mean_colour": [float(v) for v in means[label]] if counts[label] else None,
            "intensity": float(np.mean(means[label])) if counts[label] else None,
            "colour": hex_colour(colours[label - 1]),
            "colour_rgba": list(colours[label - 1]),
            "centroid": {name: float(v) for name, v in zip(columns, model.centroids[label - 1], strict=True)},
        }
        for label in range(1, len(counts))
    ]


def write_volume_statistics(
    output_path: str,
    rows: list[dict[str, Any]],
    *,
    masked_voxels: int,
    shape: Sequence[int],
    spacing: Sequence[float],
) -> list[str]:
    """Write ``OUTPUT.stats.csv`` (``label, voxels, fraction, volume_mm3, ...``) and
    ``OUTPUT.stats.json`` (``masked_voxels``, the (Z, Y, X) ``shape``, ``spacing_mm`` and the rows)
    beside ``output_path``; return their paths. Write them before the previews: a preview is
    recognised as pixseg's by the statistics beside it.

    Raises
    ------
    OutputError
        If a file cannot be written (each is replaced atomically).
    """
    base = side_file_base(output_path)
    summary = {"masked_voxels": masked_voxels, "shape": list(shape[:3]), "spacing_mm": list(spacing)}
    write_statistics(base, rows, summary=summary, measures=VOXEL_MEASURES)
    return [base + ".stats.csv", base + ".stats.json"]
