"""Export a label output's regions as GeoJSON polygons that QuPath imports (``pixseg export``).

One ``Feature`` per connected region (4-connected) of each label 1..K, its ``Polygon`` following
the pixel edges (holes kept), traced at one pyramid level so memory stays bounded: by default the
finest level whose sides are both at most :data:`MAX_TRACE_SIDE` pixels (a 4096 x 4096 uint16
level is 32 MB). Coordinates are level-0 pixels, origin at the top-left corner of the image, x
to the right and y down, as QuPath's own GeoJSON export has them: a pixel of level ``L`` covers
``2**L`` x ``2**L`` level-0 pixels, so a polygon's area is its pixel count at that level times
``4**L``. Along the right and bottom edges a coarse pixel may reach past the image by less than
``2**L`` pixels. Each feature's properties are QuPath's::

    {"objectType": "annotation", "classification": {"name": "cluster 1", "color": [230, 159, 0]}}

with the label's name and display colour from the output's statistics (``label N`` and pixseg's
palette for outputs that do not record them). Tracing uses ``rasterio.features.shapes`` (GDAL's
polygonize; the ``export`` extra: ``pip install 'pixseg-ooc[export]'``), the regions' areas
``skimage.measure.label``. Memory: about 10 bytes per pixel of the traced level, plus the polygons.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pixseg.colours import label_colours
from pixseg.errors import InputError, OutputError, OutputExistsError, ParameterError
from pixseg.io.geojson import write_feature_collection
from pixseg.io.label_groups import open_label_levels, read_label_zarr_status
from pixseg.io.label_tiff import read_label_tiff_status
from pixseg.optional import import_optional

logger = logging.getLogger(__name__)

#: The default tracing level is the finest whose height and width are both at most this.
MAX_TRACE_SIDE = 4096
#: Default minimum region area, in pixels of the tracing level (``MIN_TRACE_PIXELS * 4**L`` level-0 pixels).
MIN_TRACE_PIXELS = 16


@dataclass(frozen=True)
class GeoJSONExport:
    """What :func:`export_geojson` wrote.

    Attributes
    ----------
    path : str
        The GeoJSON file.
    level : int
        The pyramid level traced.
    shape : tuple of int
        (Y, X) of that level.
    min_area : float
        The minimum region area applied, in level-0 pixels.
    n_features : int
        Regions written.
    """

    path: str
    level: int
    shape: tuple[int, int]
    min_area: float
    n_features: int


def export_geojson(
    output: str,
    path: str,
    *,
    level: int | None = None,
    min_area: float | None = None,
    overwrite: bool = False,
) -> GeoJSONExport:
    """Write the connected regions of every label of a pixseg output as a GeoJSON FeatureCollection.

    Parameters
    ----------
    output : str
        A complete pixseg label output: ``OUTPUT.zarr`` or ``OUTPUT.tif``/``.tiff``.
    path : str
        The GeoJSON file to write (atomically).
    level : int, optional
        The pyramid level to trace (default: the finest whose sides are at most
        :data:`MAX_TRACE_SIDE`, else the coarsest). The whole level is read into memory.
    min_area : float, optional
        Regions smaller than this many level-0 pixels are left out (their pixels become holes of
        the regions around them). Default: :data:`MIN_TRACE_PIXELS` pixels of the traced level.
    overwrite : bool
        Replace an existing ``path``.

    Returns
    -------
    GeoJSONExport

    Raises
    ------
    InputError
        If ``output`` is not a complete pixseg label output.
    ParameterError
        If ``level`` does not exist, ``min_area`` is negative, or rasterio is not installed.
    OutputError
        If ``path`` exists (without ``overwrite``), is the output itself, or cannot be written.
    """
    status = _output_status(output)
    shapes = [(int(h), int(w)) for h, w in status["levels"]]
    if level is None:
        level = default_level(shapes)
    elif not 0 <= level < len(shapes):
        raise ParameterError(f"level {level!r} does not exist in {output!r}: it has levels 0 to {len(shapes) - 1}")
    if min_area is None:
        min_area = float(MIN_TRACE_PIXELS * 4**level)
    elif min_area < 0:
        raise ParameterError(f"min_area must be >= 0 level-0 pixels, got {min_area!r}")
    _check_destination(path, output, overwrite=overwrite)
    import_optional("rasterio.features", extra="export", needed_for="GeoJSON exports")  # before the level is read
    classes = label_classes(status.get("statistics") or [], int(status["n_clusters"]))
    labels = _read_level(output, level)
    logger.info("tracing %s level %d (%dx%d) into %s", output, level, *labels.shape, path)
    count = write_feature_collection(path, region_features(labels, classes, level=level, min_area=min_area))
    return GeoJSONExport(path=path, level=level, shape=shapes[level], min_area=min_area, n_features=count)


def default_level(shapes: Sequence[tuple[int, int]], *, max_side: int = MAX_TRACE_SIDE) -> int:
    """The finest level whose height and width are both at most ``max_side``; else the coarsest."""
    return next((i for i, shape in enumerate(shapes) if max(shape) <= max_side), len(shapes) - 1)


def label_classes(statistics: Sequence[Mapping[str, Any]], n_labels: int) -> dict[int, dict[str, Any]]:
    """QuPath classifications of labels 1..``n_labels``: ``{"name": ..., "color": [r, g, b]}``.

    The name is a statistics row's ``name`` (else ``label N``), the colour its ``colour``
    (``#rrggbb``) or ``colour_rgba`` (else pixseg's palette, :func:`pixseg.colours.label_colours`).
    """
    rows = {int(row["label"]): row for row in statistics}
    classes = {}
    for label, default in enumerate(label_colours(n_labels), start=1):
        row = rows.get(label, {})
        colour = _rgb(row.get("colour")) or _rgb(row.get("colour_rgba")) or list(default[:3])
        classes[label] = {"name": str(row.get("name") or f"label {label}"), "color": colour}
    return classes


def region_features(
    labels: np.ndarray, classes: Mapping[int, dict[str, Any]], *, level: int, min_area: float
) -> Iterator[dict[str, Any]]:
    """QuPath annotation features of the 4-connected regions of ``labels`` (label 0 left out).

    Parameters
    ----------
    labels : numpy.ndarray
        (Y, X) labels of pyramid level ``level``, uint8 or uint16.
    classes : mapping of int to dict
        Label -> QuPath ``classification`` (see :func:`label_classes`).
    level : int
        Coordinates are scaled by ``2**level`` into level-0 pixels.
    min_area : float
        Regions with a smaller area (in level-0 pixels) are skipped: their pixels become holes of
        the regions around them (see :func:`kept_pixels`).

    Yields
    ------
    dict
        GeoJSON ``Feature`` s with integer coordinates, in the order GDAL traces them.
    """
    from affine import Affine
    from rasterio.features import shapes

    scale = 2**level
    for geometry, value in shapes(
        labels, mask=kept_pixels(labels, level=level, min_area=min_area), transform=Affine.scale(scale)
    ):
        rings = [[[round(x), round(y)] for x, y in ring] for ring in geometry["coordinates"]]
        yield {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": rings},
            "properties": {"objectType": "annotation", "classification": classes[int(value)]},
        }


def kept_pixels(labels: np.ndarray, *, level: int, min_area: float) -> np.ndarray:
    """(Y, X) bool: the labelled pixels (not 0) of 4-connected regions of at least ``min_area`` level-0 pixels.

    A region of ``n`` pixels of level ``level`` covers ``n * 4**level`` level-0 pixels. The regions
    are found with :func:`skimage.measure.label` (one int64 per pixel), only when some could be too small.
    """
    labelled = labels > 0
    if min_area <= 4**level:
        return labelled
    from skimage.measure import label as connected_regions

    regions = connected_regions(labels, background=0, connectivity=1)
    large = np.bincount(regions.ravel()) * 4**level >= min_area
    large[0] = False
    return large[regions]


def _output_status(output: str) -> dict[str, Any]:
    """pixseg's metadata of a complete label output (zarr or TIFF), with its ``levels``."""
    status = None
    if os.path.isdir(output):
        status = read_label_zarr_status(output)
    elif os.path.isfile(output) and output.lower().endswith((".tif", ".tiff")):
        status = read_label_tiff_status(output)
    if status is None or "model" not in status or not status.get("levels"):
        raise InputError(f"{output!r} is not a pixseg label output (OUTPUT.zarr or OUTPUT.tif)")
    if not status.get("complete"):
        raise InputError(f"{output!r} is incomplete (interrupted or still being written): finish it with --resume")
    return status


def _read_level(output: str, level: int) -> np.ndarray:
    """Level ``level`` of a label output, whole, as numpy."""
    if os.path.isdir(output):
        return np.asarray(open_label_levels(output)[level][:])
    import tifffile

    with tifffile.TiffFile(output) as tif:
        return np.asarray(tif.series[0].levels[level].asarray())


def _check_destination(path: str, output: str, *, overwrite: bool) -> None:
    real, source = os.path.realpath(path), os.path.realpath(output)
    if real == source or real.startswith(source + os.sep):
        raise OutputError(f"GeoJSON path {path!r} is (inside) the output {output!r}: choose another")
    if os.path.lexists(path) and not overwrite:
        raise OutputExistsError(f"{path!r} already exists: pass --overwrite to replace it")


def _rgb(value: Any) -> list[int] | None:
    """[r, g, b] of ``#rrggbb`` or an (r, g, b[, a]) sequence of ints; else None."""
    if isinstance(value, str) and len(value) == 7 and value.startswith("#"):
        try:
            return [int(value[i : i + 2], 16) for i in (1, 3, 5)]
        except ValueError:
            return None
    if isinstance(value, list | tuple) and len(value) in (3, 4) and all(isinstance(v, int) for v in value):
        return [int(v) for v in value[:3]]
    return None
