"""A volume's preview: its three orthogonal mid-slices, the scan above and the labels over it below.

``OUTPUT.slices.png`` shows the axial (the ``z = Z // 2`` plane), coronal (``y = Y // 2``) and
sagittal (``x = X // 2``) slices through the volume's centre, left to right. Only those planes
are read, from the written labels and from the input (:func:`mid_planes`: slices of a zarr array,
of a NIfTI file's mapped voxels, or of the lazy input, which reads only the chunks they cross).

Display pixels are square in millimetres: each panel is resampled (nearest voxel: labels are
never blended) to one display pixel per ``step`` mm, the smallest voxel spacing, coarsened so
the longest panel side is at most :data:`PANEL_SIDE` (:func:`axis_index`). Anisotropic voxels
therefore keep the scan's true proportions. ``z`` points up in the coronal and sagittal panels.
The top row is the scan (grey, or the first three channels; stretched between the 0.5 and 99.5
percentiles of the three planes together); the bottom row blends the label colours of the legend
(:func:`pixseg.colours.label_colours`) over it, label 0 (masked) left clear.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from pixseg.compute import compute
from pixseg.io.side_files import write_png
from pixseg.preview import colour_labels, display_rgb, overlay

#: Longest side of a panel, in display pixels.
PANEL_SIDE = 256
#: Black pixels between panels and between the two rows.
GAP = 4
#: The panels, left to right: name, the axis each plane is cut across, (row axis, column axis).
PANELS = (("axial", 0, (1, 2)), ("coronal", 1, (0, 2)), ("sagittal", 2, (0, 1)))


@dataclass(frozen=True)
class Panel:
    """Where one plane is drawn: its top-left ``origin`` (row, column) in the upper row, and the
    voxel index of each display row and column (``rows`` already flipped where ``z`` points up)."""

    name: str
    origin: tuple[int, int]
    rows: np.ndarray
    columns: np.ndarray


def mid_planes(source: Any, shape: Sequence[int]) -> tuple[Any, Any, Any]:
    """The axial, coronal and sagittal planes through the centre of a (Z, Y, X[, ...]) array-like.

    ``source`` is indexed with slices only (a zarr array, a :class:`~pixseg.io.label_volume.NiftiVoxels`,
    a dask array: then the planes are lazy), so only the chunks the planes cross are read.
    """
    centre = [n // 2 for n in shape[:3]]
    planes = []
    for _, axis, _ in PANELS:
        key = [slice(None)] * 3
        key[axis] = slice(centre[axis], centre[axis] + 1)
        plane = source[tuple(key)]
        planes.append(plane[0] if axis == 0 else plane[:, 0] if axis == 1 else plane[:, :, 0])
    return planes[0], planes[1], planes[2]


def axis_index(n: int, spacing: float, step: float) -> np.ndarray:
    """The voxel (nearest) shown by each of the ``round(n * spacing / step)`` display pixels along
    an axis of ``n`` voxels of ``spacing`` mm, one display pixel per ``step`` mm."""
    pixels = max(1, round(n * spacing / step))
    return np.minimum(((np.arange(pixels) + 0.5) * step / spacing).astype(np.int64), n - 1)


def preview_layout(shape: Sequence[int], spacing: Sequence[float]) -> tuple[list[Panel], tuple[int, int]]:
    """The panels of a (Z, Y, X) volume of ``spacing`` mm and the (height, width) of the upper row;
    the lower row repeats it ``height + GAP`` pixels down."""
    extent = max(n * s for n, s in zip(shape[:3], spacing, strict=True))
    step = max(min(spacing), extent / PANEL_SIDE)
    index = [axis_index(n, s, step) for n, s in zip(shape[:3], spacing, strict=True)]
    panels, column = [], 0
    for name, _, (row_axis, column_axis) in PANELS:
        rows = index[row_axis][::-1] if row_axis == 0 else index[row_axis]  # z up
        panels.append(Panel(name, (0, column), rows, index[column_axis]))
        column += len(index[column_axis]) + GAP
    return panels, (max(len(p.rows) for p in panels), column - GAP)


def render_slices(
    image_planes: Sequence[np.ndarray],
    label_planes: Sequence[np.ndarray],
    spacing: Sequence[float],
    colours: list[tuple[int, int, int, int]],
) -> np.ndarray:
    """The preview as an (H, W, 3) uint8 RGB image (pure numpy).

    Parameters
    ----------
    image_planes : sequence of ndarray
        The input's axial (Y, X, C), coronal (Z, X, C) and sagittal (Z, Y, C) planes.
    label_planes : sequence of ndarray
        The labels' planes, (Y, X), (Z, X), (Z, Y).
    spacing : sequence of float
        Voxel size (Z, Y, X) in mm.
    colours : list of RGBA
        Display colours of labels 1..K (the legend's).
    """
    shape = (label_planes[1].shape[0], *label_planes[0].shape)
    panels, (height, width) = preview_layout(shape, spacing)
    n_colour = image_planes[0].shape[-1]
    together = np.concatenate([p.reshape(-1, n_colour) for p in image_planes])[np.newaxis]
    grey = display_rgb(together, n_colour=n_colour)[0]
    canvas = np.zeros((2 * height + GAP, width, 3), dtype=np.uint8)
    start = 0
    for panel, image, labels in zip(panels, image_planes, label_planes, strict=True):
        rgb = grey[start : start + image[..., 0].size].reshape(*image.shape[:2], 3)
        start += image[..., 0].size
        pick = np.ix_(panel.rows, panel.columns)
        shown, labelled = rgb[pick], labels[pick]
        blended = overlay(shown, colour_labels(labelled, colours), labelled)[..., :3]
        top, left = panel.origin
        right = left + len(panel.columns)
        canvas[top : top + len(panel.rows), left:right] = shown
        canvas[top + height + GAP : top + height + GAP + len(panel.rows), left:right] = np.where(
            labelled[..., np.newaxis] > 0, blended, shown
        )
    return canvas


def write_slices_preview(
    path: str,
    data: da.Array,
    label_planes: Sequence[np.ndarray],
    spacing: Sequence[float],
    colours: list[tuple[int, int, int, int]],
) -> None:
    """Read the input's three mid-planes from the lazy (Z, Y, X, C) ``data`` (only the chunks they
    cross), render them with ``label_planes`` and write the PNG at ``path`` (atomically).

    Raises
    ------
    OutputError
        If the file cannot be written.
    """
    image_planes = compute(*mid_planes(data, data.shape), progress=False)
    write_png(path, render_slices(image_planes, label_planes, spacing, colours))
