"""What the viewer shows: a finished label output, its input slide and their pyramids.

Every stored level is opened through pixseg's own readers (:func:`~pixseg.io.readers.open_image`
for the slide, :class:`~pixseg.io.label_tiff.LabelTiffLevels` for TIFF labels, whose palette
must not be applied, :func:`~pixseg.io.label_groups.open_label_levels` for OME-Zarr labels) and
kept in a small LRU (:class:`ReaderCache`), so a tile costs a region read, never an open.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pixseg.colours import label_colours
from pixseg.errors import InputError, InputNotFoundError
from pixseg.io.label_groups import labels_inside, open_label_levels, read_label_zarr_status
from pixseg.io.label_tiff import LabelTiffLevels, interrupted_tiff_write, read_label_tiff_status
from pixseg.io.readers import open_image
from pixseg.view.tiles import Pyramid

#: Opened readers kept (a slide and a TIFF label output hold one per level they have served).
READER_CACHE_SIZE = 16


@dataclass(frozen=True)
class LabelOutput:
    """A finished pixseg label output.

    Attributes
    ----------
    path : str
        The ``.zarr`` group or ``.tif`` file.
    kind : str
        ``"zarr"`` or ``"tiff"``.
    level_shapes : tuple of tuple of int
        (Y, X) of each stored level, level 0 first (level ``n`` holds every ``2**n``-th pixel).
    n_labels : int
        K (or M, with classes): labels are 1..K, 0 is masked.
    statistics : list of dict
        One row per label (``label``, ``pixels``, ``fraction``, ``area_um2``, optional ``name``).
    pixel_size : tuple of float or None
        (Y, X) micrometres per level-0 pixel, when known.
    input_path : str or None
        The input the labels were made from, as recorded.
    masked_pixels : int
        Pixels labelled 0 (masked or without data).
    selection : dict
        The series and plane of the input the labels were made from (``series``, ``plane``), as
        recorded; empty for the first series of a 2-D image.
    """

    path: str
    kind: str
    level_shapes: tuple[tuple[int, int], ...]
    n_labels: int
    statistics: list[dict[str, Any]]
    pixel_size: tuple[float, float] | None
    input_path: str | None
    masked_pixels: int = 0
    selection: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """(Y, X) of level 0."""
        return self.level_shapes[0]

    @property
    def colours(self) -> list[tuple[int, int, int, int]]:
        """RGBA display colours of labels 1..K: those the run stored in its statistics
        (``colour_rgba``), else, for outputs written before, :func:`~pixseg.colours.label_colours`."""
        stored = {int(row["label"]): row["colour_rgba"] for row in self.statistics if "colour_rgba" in row}
        defaults = label_colours(self.n_labels)
        colours = []
        for label, default in enumerate(defaults, start=1):
            r, g, b, a = (int(v) for v in stored.get(label, default))
            colours.append((r, g, b, a))
        return colours


class ReaderCache:
    """A thread-safe LRU of opened readers, keyed by what was opened.

    Parameters
    ----------
    maxsize : int
        Readers kept; the least recently used is dropped (and closed with its last reference).
    """

    def __init__(self, maxsize: int = READER_CACHE_SIZE) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...], opener: Callable[[], Any]) -> Any:
        """The reader under ``key``, opened with ``opener()`` on a miss."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        reader = opener()  # outside the lock: an open may take a while
        with self._lock:
            self._items[key] = reader
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        return reader


def open_output(path: str) -> LabelOutput:
    """Check that ``path`` is a finished pixseg label output and read its metadata.

    ``path`` may also be an OME-Zarr image holding a pixseg label output in its ``labels`` group
    (``segment --with-image``, or ``--into-input``): those labels are shown over that image.

    Raises
    ------
    InputNotFoundError
        If ``path`` does not exist.
    InputError
        If it is not a pixseg label output, or is incomplete (interrupted or still being written).
    """
    if not os.path.exists(path):
        raise InputNotFoundError(f"output {path!r} does not exist")
    inside = labels_inside(path) if os.path.isdir(path) else None
    if inside is not None:
        return dataclasses.replace(open_output(inside), input_path=path)
    if os.path.isdir(path):
        status, kind = read_label_zarr_status(path), "zarr"
    elif path.lower().endswith((".tif", ".tiff")):
        status, kind = read_label_tiff_status(path), "tiff"
    else:
        status, kind = None, ""
    if status is None or "model" not in status:
        if interrupted_tiff_write(path):
            raise InputError(f"output {path!r} is incomplete: its TIFF write was interrupted")
        raise InputError(f"{path!r} is not a pixseg label output (an OUTPUT.zarr or OUTPUT.tif of `pixseg segment`)")
    if not status.get("complete") or not status.get("levels"):
        raise InputError(f"output {path!r} is incomplete (interrupted or still being written); see `pixseg info`")
    size = status.get("pixel_size_um")
    return LabelOutput(
        path=path,
        kind=kind,
        level_shapes=tuple((int(y), int(x)) for y, x in status["levels"]),
        n_labels=int(status.get("n_classes") or status["n_clusters"]),  # the label values: classes or clusters
        statistics=list(status.get("statistics") or []),
        pixel_size=(float(size[0]), float(size[1])) if size else None,
        input_path=status.get("input"),
        masked_pixels=int(status.get("masked_pixels") or 0),
        selection={key: value for key, value in (status.get("selection") or {}).items() if key in ("series", "plane")},
    )


def legend(output: LabelOutput) -> list[dict[str, Any]]:
    """One entry per label 1..K: ``label``, ``name`` (the statistics' ``name``, else ``"label N"``),
    ``colour`` (``#rrggbb``), ``pixels``, ``fraction`` and ``area_um2`` (None when unknown)."""
    rows = {int(row["label"]): row for row in output.statistics}
    entries = []
    for label, rgba in enumerate(output.colours, start=1):
        row = rows.get(label, {})
        entries.append(
            {
                "label": label,
                "name": str(row.get("name") or f"label {label}"),
                "colour": "#{:02x}{:02x}{:02x}".format(*rgba[:3]),
                "pixels": row.get("pixels"),
                "fraction": row.get("fraction"),
                "area_um2": row.get("area_um2"),
            }
        )
    return entries


def label_pyramid(output: LabelOutput, readers: ReaderCache) -> Pyramid:
    """The stored label levels of ``output`` as a :class:`~pixseg.view.tiles.Pyramid` (reads 2-D regions)."""
    if output.kind == "zarr":

        def read(level: int, rows: slice, columns: slice) -> np.ndarray:
            levels = readers.get(("labels", output.path), lambda: open_label_levels(output.path))
            return np.asarray(levels[level][rows, columns])

    else:

        def read(level: int, rows: slice, columns: slice) -> np.ndarray:
            # the stored label values: pixseg's image reader would expand the TIFF's palette to RGB
            levels = readers.get(("labels", output.path), lambda: LabelTiffLevels(output.path))
            return np.asarray(levels[level][rows, columns])

    return Pyramid(
        shape=output.shape,
        downsamples=tuple((float(2**n), float(2**n)) for n in range(len(output.level_shapes))),
        level_shapes=output.level_shapes,
        read=read,
    )


def slide_pyramid(output: LabelOutput, image_path: str | None, readers: ReaderCache) -> Pyramid:
    """The input slide's levels as fine as the labels' level 0 or coarser, as a
    :class:`~pixseg.view.tiles.Pyramid` in the labels' coordinates (reads (h, w, C) regions), of
    the series and plane the labels were made from (``output.selection``).

    Parameters
    ----------
    output : LabelOutput
        The labels.
    image_path : str or None
        The slide (``--image``); by default the input recorded in the output.
    readers : ReaderCache
        Where the opened levels are kept.

    Raises
    ------
    InputNotFoundError
        If the slide does not exist (the message suggests ``--image``).
    InputError
        If it cannot be read, or has no pyramid level of the labels' shape.
    """
    path = image_path or output.input_path
    if path is None:
        raise InputNotFoundError(f"output {output.path!r} does not record its input; pass the slide with --image PATH")
    if not os.path.exists(path):
        where = "given with --image" if image_path else f"recorded in {output.path!r}"
        raise InputNotFoundError(f"input {path!r} {where} does not exist; pass the slide with --image PATH")
    shapes = readers.get(("slide", path, 0), lambda: open_image(path, **output.selection)).level_shapes
    if output.shape not in shapes:
        found = ", ".join(f"{y}x{x}" for y, x in shapes)
        raise InputError(
            f"image {path!r} has no pyramid level of the labels' shape {output.shape[0]}x{output.shape[1]} "
            f"(its levels: {found}); pass the slide the labels were made from with --image PATH"
        )
    base = shapes.index(output.shape)
    kept = shapes[base:]

    def read(level: int, rows: slice, columns: slice) -> np.ndarray:
        image = readers.get(
            ("slide", path, base + level), lambda: open_image(path, level=base + level, **output.selection)
        )
        return np.asarray(image.source[rows, columns, :])

    return Pyramid(
        shape=output.shape,
        downsamples=tuple((output.shape[0] / y, output.shape[1] / x) for y, x in kept),
        level_shapes=tuple(kept),
        read=read,
    )
