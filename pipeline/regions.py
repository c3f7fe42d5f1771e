"""``--regions REGIONS.geojson``: the area of each label inside each annotated region, chunk by chunk.

Regions are the polygons QuPath exports ("Export objects as GeoJSON"): a ``FeatureCollection``
or a list of ``Feature`` objects whose geometry is a ``Polygon`` or ``MultiPolygon`` in level-0
pixel coordinates (x to the right, y down, pixel corners at integer coordinates). A region's name
is ``properties.name``, else ``properties.classification.name``, else ``region N``.

Rules (docs/cli.md, "Regions"):

- A pixel belongs to a region when its centre (``x + 0.5``, ``y + 0.5``) lies inside: inside the
  exterior ring of one of its polygons and outside that polygon's holes.
- A region wholly outside the image, a geometry that is not a (Multi)Polygon, a ring of fewer than
  three distinct points, non-finite coordinates, or a self-intersecting ring is refused with one
  error naming the region (no silent repair: fix it in QuPath, e.g. with "Simplify shape").
- A region partly outside the image is clipped to it: only the image's pixels are counted.

Areas are counted chunk by chunk over the stored labels (:func:`region_counts`): each region is
rasterised only over the window of a chunk it overlaps (:func:`region_mask`), so no full-resolution
raster of a region is ever held.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pixseg.errors import InputError

#: Most vertices a regions file may hold in all (the self-intersection check is quadratic per ring).
MAX_VERTICES = 200_000
#: Edge pairs tested at once by the self-intersection check (bounds its temporaries).
_PAIRS_PER_BLOCK = 2**20


@dataclass(frozen=True)
class Region:
    """One annotated region.

    Attributes
    ----------
    name : str
        The region's name.
    polygons : tuple of tuple of numpy.ndarray
        Each polygon as its rings: exterior first, then holes; each ring (n, 2) float64 (x, y),
        closed implicitly (the first point is not repeated).
    bounds : (int, int, int, int)
        ``(y0, y1, x0, x1)``: the pixels whose centres can be inside, clipped to the image.
    """

    name: str
    polygons: tuple[tuple[np.ndarray, ...], ...]
    bounds: tuple[int, int, int, int]


def parse_regions(document: Any, shape: tuple[int, int], *, source: str) -> tuple[Region, ...]:
    """The regions of a GeoJSON document, checked against an image of ``shape`` (height, width).

    Raises
    ------
    InputError
        Naming ``source`` and the region for anything the module docstring refuses.
    """
    if isinstance(document, Mapping) and document.get("type") == "FeatureCollection":
        features = document.get("features")
    elif isinstance(document, Mapping) and document.get("type") == "Feature":
        features = [document]
    else:
        features = document
    if not isinstance(features, list) or not features:
        raise InputError(f"regions {source!r}: expected a GeoJSON FeatureCollection or a list of Features")
    regions = []
    n_vertices = 0
    for index, feature in enumerate(features):
        name = _region_name(feature, index)
        where = f"regions {source!r}, region {name!r}"
        geometry = feature.get("geometry") if isinstance(feature, Mapping) else None
        polygons = _polygons(geometry, where)
        n_vertices += sum(len(ring) for polygon in polygons for ring in polygon)
        if n_vertices > MAX_VERTICES:
            raise InputError(f"regions {source!r} hold more than {MAX_VERTICES} vertices; simplify them")
        for polygon in polygons:
            for ring in polygon:
                if ring_self_intersects(ring):
                    raise InputError(f"{where} has a self-intersecting ring; fix it (QuPath: Simplify shape)")
        regions.append(Region(name, polygons, _bounds(polygons, shape, where)))
    return tuple(regions)


def _region_name(feature: Any, index: int) -> str:
    properties = feature.get("properties") if isinstance(feature, Mapping) else None
    properties = properties if isinstance(properties, Mapping) else {}
    classification = properties.get("classification")
    for name in (properties.get("name"), classification.get("name") if isinstance(classification, Mapping) else None):
        if isinstance(name, str) and name.strip():
            return name.strip()
    return f"region {index + 1}"


def _polygons(geometry: Any, where: str) -> tuple[tuple[np.ndarray, ...], ...]:
    """The polygons of a Polygon or MultiPolygon geometry, as rings of float64 (x, y) points."""
    kind = geometry.get("type") if isinstance(geometry, Mapping) else None
    if kind not in ("Polygon", "MultiPolygon"):
        raise InputError(f"{where}: geometry must be a Polygon or MultiPolygon, got {kind!r}")
    coordinates = geometry.get("coordinates")
    polygons = [coordinates] if kind == "Polygon" else coordinates
    if not isinstance(polygons, list) or not polygons:
        raise InputError(f"{where}: {kind} has no coordinates")
    return tuple(tuple(_ring(ring, where) for ring in _rings(polygon, where)) for polygon in polygons)


def _rings(polygon: Any, where: str) -> list[Any]:
    if not isinstance(polygon, list) or not polygon:
        raise InputError(f"{where}: a polygon must be a list of rings")
    return polygon


def _ring(ring: Any, where: str) -> np.ndarray:
    try:
        points = np.asarray(ring, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"{where}: a ring must be a list of [x, y] numbers") from err
    if points.ndim != 2 or points.shape[1] != 2:
        raise InputError(f"{where}: a ring must be a list of [x, y] numbers")
    if not np.isfinite(points).all():
        raise InputError(f"{where}: coordinates must be finite numbers")
    if len(points) > 1 and np.array_equal(points[0], points[-1]):
        points = points[:-1]
    keep = np.ones(len(points), dtype=bool)  # repeated consecutive points add nothing
    keep[1:] = np.any(points[1:] != points[:-1], axis=1)
    points = points[keep]
    if len(np.unique(points, axis=0)) < 3:
        raise InputError(f"{where}: a ring needs at least 3 distinct points")
    return points


def _bounds(
    polygons: tuple[tuple[np.ndarray, ...], ...], shape: tuple[int, int], where: str
) -> tuple[int, int, int, int]:
    """Rows and columns whose pixel centres can lie inside, clipped to the image."""
    exteriors = np.concatenate([polygon[0] for polygon in polygons])
    (x_low, y_low), (x_high, y_high) = exteriors.min(axis=0), exteriors.max(axis=0)
    y0, x0 = max(0, math.floor(y_low - 0.5)), max(0, math.floor(x_low - 0.5))
    y1, x1 = min(shape[0], math.ceil(y_high - 0.5) + 1), min(shape[1], math.ceil(x_high - 0.5) + 1)
    if y0 >= y1 or x0 >= x1:
        raise InputError(
            f"{where} lies outside the image ({shape[1]}x{shape[0]} pixels, x by y): "
            f"its x spans {x_low:g}..{x_high:g}, its y {y_low:g}..{y_high:g}"
        )
    return y0, y1, x0, x1


def ring_self_intersects(ring: np.ndarray) -> bool:
    """Whether two non-adjacent edges of a closed ring (n, 2) touch or cross (a bow-tie, a loop).

    Only edges whose x ranges overlap are compared (edges sorted by their smallest x), so a
    ring of many vertices costs about n log n, not n^2, unless its edges overlap a lot in x.
    """
    n = len(ring)
    starts, ends = ring, np.roll(ring, -1, axis=0)
    edges, following = ends - starts, np.roll(ends - starts, -1, axis=0)
    cross = edges[:, 0] * following[:, 1] - edges[:, 1] * following[:, 0]
    if np.any((cross == 0) & ((edges * following).sum(axis=1) < 0)):  # a spike: an edge doubles back
        return True
    x_low, x_high = np.minimum(starts[:, 0], ends[:, 0]), np.maximum(starts[:, 0], ends[:, 0])
    order = np.argsort(x_low, kind="stable")
    reach = np.searchsorted(x_low[order], x_high[order], side="right")  # sorted edges overlapping in x
    partners = np.maximum(reach - np.arange(n) - 1, 0)
    firsts = np.repeat(np.arange(n), partners)
    steps = np.arange(len(firsts)) - np.repeat(np.cumsum(partners) - partners, partners)
    i, j = order[firsts], order[firsts + 1 + steps]
    apart = (np.abs(i - j) != 1) & (np.abs(i - j) != n - 1)  # edges sharing a vertex are adjacent
    i, j = i[apart], j[apart]
    for block in range(0, len(i), _PAIRS_PER_BLOCK):
        a, b = i[block : block + _PAIRS_PER_BLOCK], j[block : block + _PAIRS_PER_BLOCK]
        if _segments_touch(starts[a], ends[a], starts[b], ends[b]).any():
            return True
    return False


def _segments_touch(p1: np.ndarray, p2: np.ndarray, q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """Whether segments p1-p2 and q1-q2 (rows of (m, 2) arrays) share a point."""

    def orientation(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        return np.sign((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))

    def within(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:  # c in the box of a-b
        return np.all((np.minimum(a, b) <= c) & (c <= np.maximum(a, b)), axis=1)

    o1, o2 = orientation(p1, p2, q1), orientation(p1, p2, q2)
    o3, o4 = orientation(q1, q2, p1), orientation(q1, q2, p2)
    crossing = (o1 * o2 < 0) & (o3 * o4 < 0)
    touching = (
        ((o1 == 0) & within(p1, p2, q1))
        | ((o2 == 0) & within(p1, p2, q2))
        | ((o3 == 0) & within(q1, q2, p1))
        | ((o4 == 0) & within(q1, q2, p2))
    )
    return crossing | touching


def region_mask(region: Region, window: tuple[int, int, int, int]) -> np.ndarray:
    """The pixels of ``window`` ``(y0, y1, x0, x1)`` whose centres lie inside ``region``.

    Each polygon is filled by scanlines with the even-odd rule over all its rings (so holes are
    cut out): on the line through a row's pixel centres, every edge crossing toggles the pixels
    whose centres lie right of it. The cost is rows x edges of the window, whatever the area.

    Returns
    -------
    numpy.ndarray
        Shape (y1 - y0, x1 - x0), bool. Only the window is rasterised.
    """
    y0, y1, x0, x1 = window
    inside = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for rings in region.polygons:
        inside |= _fill_even_odd(rings, window)
    return inside


def _fill_even_odd(rings: Sequence[np.ndarray], window: tuple[int, int, int, int]) -> np.ndarray:
    y0, y1, x0, x1 = window
    height, width = y1 - y0, x1 - x0
    starts = np.concatenate(rings)
    ends = np.concatenate([np.roll(ring, -1, axis=0) for ring in rings])
    low, high = np.minimum(starts[:, 1], ends[:, 1]), np.maximum(starts[:, 1], ends[:, 1])
    keep = (high > y0 + 0.5) & (low < y1 - 0.5) & (high > low)  # edges crossing a centre line of the window
    starts, ends, low, high = starts[keep], ends[keep], low[keep], high[keep]
    toggles = np.zeros((height, width + 1), dtype=np.int32)
    rows_per_block = max(1, _PAIRS_PER_BLOCK // max(1, len(starts)))
    for first in range(0, height, rows_per_block):
        rows = np.arange(first, min(first + rows_per_block, height))
        centre = (y0 + rows + 0.5)[:, None]
        crosses = (low <= centre) & (centre < high)  # half-open: a vertex on the line counts once
        row, edge = np.nonzero(crosses)
        p, q = starts[edge], ends[edge]
        x = p[:, 0] + (centre[row, 0] - p[:, 1]) * (q[:, 0] - p[:, 0]) / (q[:, 1] - p[:, 1])
        # the first column whose centre lies right of the crossing
        column = np.clip(np.floor(x - 0.5 - x0).astype(np.int64) + 1, 0, width)
        np.add.at(toggles, (rows[row], column), 1)
    return (np.cumsum(toggles[:, :width], axis=1) % 2).astype(bool)


def chunk_region_counts(
    labels: np.ndarray, origin: tuple[int, int], regions: Sequence[tuple[int, Region]], n_regions: int, n_labels: int
) -> np.ndarray:
    """Pixels of each label value inside each region over one chunk of labels.

    Parameters
    ----------
    labels : numpy.ndarray
        (h, w) integer labels of the chunk at ``origin`` (row, column) of the image.
    regions : sequence of (int, Region)
        The regions whose bounds meet the chunk, with their index.
    n_regions, n_labels : int
        Rows and columns of the result (label values 0..n_labels - 1).

    Returns
    -------
    numpy.ndarray
        Shape (n_regions, n_labels), int64.
    """
    counts = np.zeros((n_regions, n_labels), dtype=np.int64)
    height, width = labels.shape
    for index, region in regions:
        y0, y1, x0, x1 = region.bounds
        window = (max(y0, origin[0]), min(y1, origin[0] + height), max(x0, origin[1]), min(x1, origin[1] + width))
        if window[0] >= window[1] or window[2] >= window[3]:
            continue
        inside = region_mask(region, window)
        values = labels[window[0] - origin[0] : window[1] - origin[0], window[2] - origin[1] : window[3] - origin[1]]
        counts[index] += np.bincount(values[inside].astype(np.int64), minlength=n_labels)[:n_labels]
    return counts


def region_counts(labels: Any, regions: Sequence[Region], *, n_labels: int, progress: bool = False) -> np.ndarray:
    """Pixels of each label value (0 = masked) inside each region, counted chunk by chunk.

    Parameters
    ----------
    labels : dask.array.Array
        (Y, X) integer labels, e.g. the stored level 0 of an output; read chunk by chunk.
    regions : sequence of Region
        From :func:`parse_regions` for this shape.
    n_labels : int
        Label values counted: 0..n_labels - 1.

    Returns
    -------
    numpy.ndarray
        Shape (len(regions), n_labels), int64. Computes one task per chunk that a region meets.
    """
    import dask

    from pixseg.compute import compute

    count = dask.delayed(chunk_region_counts, pure=True)
    tasks = []
    offsets = [np.cumsum((0, *sizes)) for sizes in labels.chunks]
    for block in np.ndindex(*labels.numblocks):
        y0, x0 = int(offsets[0][block[0]]), int(offsets[1][block[1]])
        y1, x1 = int(offsets[0][block[0] + 1]), int(offsets[1][block[1] + 1])
        meeting = [
            (i, r)
            for i, r in enumerate(regions)
            if r.bounds[0] < y1 and y0 < r.bounds[1] and r.bounds[2] < x1 and x0 < r.bounds[3]
        ]
        if meeting:
            tasks.append(count(labels.blocks[block], (y0, x0), meeting, len(regions), n_labels))
    if not tasks:
        return np.zeros((len(regions), n_labels), dtype=np.int64)
    return np.sum(compute(tasks, progress=progress), axis=0)


def region_table(
    counts: np.ndarray,
    regions: Sequence[Region],
    names: Mapping[int, str],
    *,
    pixel_size: tuple[float, float] | None,
) -> list[dict[str, Any]]:
    """One row per (region, label value) with pixels inside: ``region``, ``label``, ``name``,
    ``pixels``, ``fraction`` (of the region's pixels in the image) and ``area_um2`` (None when the
    pixel size is unknown). Label 0 is named ``masked``; ``names`` name the others (a label
    without a name is ``label N``)."""
    rows = []
    for region, row in zip(regions, counts, strict=True):
        total = int(row.sum())
        for label in np.flatnonzero(row):
            pixels = int(row[label])
            name = "masked" if label == 0 else names.get(int(label), f"label {label}")
            area = pixels * pixel_size[0] * pixel_size[1] if pixel_size is not None else None
            rows.append(
                {
                    "region": region.name,
                    "label": int(label),
                    "name": name,
                    "pixels": pixels,
                    "fraction": pixels / total,
                    "area_um2": area,
                }
            )
    return rows


def open_regions(path: str | None, shape: tuple[int, int]) -> tuple[Region, ...]:
    """The regions of the GeoJSON file ``path`` for an image of ``shape``; none without a path.

    Raises
    ------
    InputError
        If the file cannot be read or its regions are refused (see :func:`parse_regions`).
    """
    if path is None:
        return ()
    from pixseg.io.geojson import read_geojson

    return parse_regions(read_geojson(path), shape, source=path)


def measure_regions(
    regions: Sequence[Region],
    labels: Any,
    statistics: Sequence[Mapping[str, Any]],
    *,
    pixel_size: tuple[float, float] | None,
    progress: bool,
) -> list[dict[str, Any]]:
    """The rows of :func:`region_table` for the stored level-0 ``labels`` (a zarr array, read chunk
    by chunk), labels named as in ``statistics`` (their ``name``, else ``cluster N``).

    Computes one task per chunk a region meets; nothing without regions.
    """
    if not regions:
        return []
    import dask.array as da

    names = {int(row["label"]): str(row.get("name") or f"cluster {row['label']}") for row in statistics}
    n_labels = max(names, default=0) + 1
    counts = region_counts(da.from_zarr(labels), regions, n_labels=n_labels, progress=progress)
    return region_table(counts, regions, names, pixel_size=pixel_size)


@dataclass(frozen=True)
class RegionAreas:
    """What ``pixseg regions`` measured: the rows of :func:`region_table` and the files written."""

    rows: list[dict[str, Any]]
    side_files: list[str]


def measure_output(output: str, regions_path: str, *, progress: bool = False) -> RegionAreas:
    """Areas per label inside each region of ``regions_path`` over a finished pixseg output, chunk by
    chunk from its stored level 0; written as ``.regions.csv`` and ``.regions.json`` beside it
    (replacing those of an earlier run).

    Raises
    ------
    InputError
        If ``output`` is not a complete pixseg label output, or the regions are refused.
    """
    import os

    from pixseg.io.label_groups import label_side_base, open_label_levels, read_label_zarr_status
    from pixseg.io.label_tiff import read_label_tiff_status
    from pixseg.io.side_files import write_region_tables

    tiff = os.path.isfile(output) and output.lower().endswith((".tif", ".tiff"))
    status = read_label_tiff_status(output) if tiff else read_label_zarr_status(output)
    if status is None or not status.get("levels"):
        raise InputError(f"{output!r} is not a pixseg label output (OUTPUT.zarr or OUTPUT.tif)")
    if not status.get("complete"):
        raise InputError(f"{output!r} is incomplete (interrupted or still being written): finish it with --resume")
    height, width = status["levels"][0]
    regions = open_regions(regions_path, (int(height), int(width)))
    size = status.get("pixel_size_um")
    pixel_size = (float(size[0]), float(size[1])) if size else None
    statistics = status.get("statistics") or []
    if tiff:
        import tifffile
        import zarr

        with tifffile.imread(output, aszarr=True, level=0) as store:
            level0 = zarr.open(store, mode="r")
            rows = measure_regions(regions, level0, statistics, pixel_size=pixel_size, progress=progress)
    else:
        level0 = open_label_levels(output)[0]
        rows = measure_regions(regions, level0, statistics, pixel_size=pixel_size, progress=progress)
    return RegionAreas(rows, write_region_tables(label_side_base(output), rows, source=regions_path))
