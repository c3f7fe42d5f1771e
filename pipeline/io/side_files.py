"""Side files of an output: statistics (CSV, JSON) and previews (PNG), each written atomically."""

from __future__ import annotations

import csv
import math
import os
from typing import Any

import numpy as np

from pixseg.errors import OutputError
from pixseg.io.atomic import atomic_file, write_json_atomic
from pixseg.io.json_files import read_json_object
from pixseg.io.remote import is_url, read_file

SIDE_SUFFIXES = (
    ".stats.csv",
    ".stats.json",
    ".thumbnail.png",
    ".labels.png",
    ".overlay.png",
    ".legend.png",
    ".report.html",
    ".k-choice.png",
    ".regions.csv",
    ".regions.json",
    ".slices.png",
)
#: The side file of a volume's three orthogonal mid-slices (:mod:`pixseg.volume_preview`).
SLICES_SUFFIX = ".slices.png"
#: The HTML report beside an output.
REPORT_SUFFIX = ".report.html"
#: The first bytes of pixseg's HTML report: how pixseg recognises its own report.
REPORT_SIGNATURE = "<!DOCTYPE html><!-- pixseg report -->"
#: The ``format`` key of ``.stats.json``: how pixseg recognises its own statistics.
STATISTICS_FORMAT = "pixseg-statistics"
#: The measures of a label in ``.stats.csv``: (count, size) of a 2-D image, and of a volume.
PIXEL_MEASURES = ("pixels", "area_um2")
VOXEL_MEASURES = ("voxels", "volume_mm3")
#: The first columns of pixseg's ``.stats.csv``, 2-D and 3-D: how pixseg recognises its own.
_CSV_HEADERS = tuple(f"label,{count},fraction,{size}" for count, size in (PIXEL_MEASURES, VOXEL_MEASURES))
#: The ``format`` key of ``.regions.json``, and the header of ``.regions.csv`` (``--regions``).
REGIONS_FORMAT = "pixseg-regions"
_REGIONS_HEADER = ("region", "label", "name", "pixels", "fraction", "area_um2")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Lines per column of the legend PNG, and most columns (see :func:`write_legend`).
LEGEND_LINES = 64
LEGEND_COLUMNS = 8


def side_file_base(output_path: str) -> str:
    """The prefix every side file of an output shares: the output's own path (``out.zarr.stats.csv``),
    so outputs of one name in two formats keep separate side files."""
    return output_path.rstrip("/")


def write_statistics(
    base: str, rows: list[dict[str, Any]], *, summary: dict[str, Any], measures: tuple[str, str] = PIXEL_MEASURES
) -> None:
    """Write ``base.stats.csv`` (one row per label) and ``base.stats.json`` (``summary`` + rows).

    The CSV has ``label, pixels, fraction, area_um2`` (``measures``: the rows' keys of the count and
    the size, :data:`VOXEL_MEASURES` for a volume), then ``name``, ``colour`` (display),
    ``clusters`` (only when the rows have it, i.e. the labels are classes: the class's cluster ids,
    comma-separated), ``mean_1..mean_C`` (mean input colour), ``hex``, ``intensity`` and
    ``centroid_<column>``; a value a row lacks is left empty. The JSON keeps the rows as they are.

    Raises
    ------
    OutputError
        If a file cannot be written (each file is replaced atomically: old or new, never partial).
    """
    columns = list(rows[0]["centroid"]) if rows else []
    n_colour = max((len(row.get("mean_colour") or ()) for row in rows), default=0)
    with_clusters = any("clusters" in row for row in rows)
    count, size = measures
    header = ["label", count, "fraction", size, "name", "colour", *(["clusters"] if with_clusters else [])]
    header += [f"mean_{c + 1}" for c in range(n_colour)] + ["hex", "intensity"]
    try:
        with atomic_file(base + ".stats.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([*header, *(f"centroid_{c}" for c in columns)])
            for row in rows:
                means = row.get("mean_colour") or [None] * n_colour
                values = [row[count], row["fraction"], row[size], row.get("name"), row.get("colour")]
                if with_clusters:
                    values.append(",".join(str(c) for c in row.get("clusters") or ()) or None)
                values += [*means, row.get("hex"), row.get("intensity"), *row["centroid"].values()]
                writer.writerow([row["label"], *map(_csv_value, values)])
        write_json_atomic(base + ".stats.json", {"format": STATISTICS_FORMAT, **summary, "labels": rows})
    except OSError as err:
        raise OutputError(f"cannot write statistics next to {base!r}: {err}") from err


def write_region_tables(base: str, rows: list[dict[str, Any]], *, source: str) -> list[str]:
    """Write ``base.regions.csv`` and ``base.regions.json``: the area of each label inside each region
    (rows of :func:`pixseg.regions.region_table`; ``source`` is the regions file). Returns their paths.

    Raises
    ------
    OutputError
        If a file cannot be written (each is replaced atomically).
    """
    paths = [base + ".regions.csv", base + ".regions.json"]
    try:
        with atomic_file(paths[0], "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(_REGIONS_HEADER)
            for row in rows:
                writer.writerow([row["region"], row["label"], *(_csv_value(row[k]) for k in _REGIONS_HEADER[2:])])
        write_json_atomic(paths[1], {"format": REGIONS_FORMAT, "regions_file": source, "rows": rows})
    except OSError as err:
        raise OutputError(f"cannot write region areas next to {base!r}: {err}") from err
    return paths


def _csv_value(value: Any) -> str:
    """A CSV cell: empty for None, text as is, numbers exactly (``repr``)."""
    if value is None:
        return ""
    return value if isinstance(value, str) else repr(value)


def is_own_side_file(path: str) -> bool:
    """Whether ``path`` is a side file pixseg wrote (so ``--overwrite``, or a new run after its
    output was removed, may replace it): a regular file, not a symlink, and

    - ``.stats.json``: a JSON object with ``"format": "pixseg-statistics"`` (or, as written before
      that key, ``masked_pixels`` and a ``labels`` list);
    - ``.stats.csv``: pixseg's header row (of an image's or a volume's table);
    - a ``.png`` preview or the ``.report.html``: a PNG, or a page starting with
      :data:`REPORT_SIGNATURE`, whose ``.stats.json`` beside it is pixseg's (both are written after
      the statistics).
    """
    if not is_url(path) and (os.path.islink(path) or not os.path.isfile(path)):
        return False
    if path.endswith(".regions.json"):
        document = read_json_object(path)
        return document is not None and document.get("format") == REGIONS_FORMAT
    if path.endswith(".stats.json"):
        document = read_json_object(path)
        if document is None:
            return False
        legacy = "masked_pixels" in document and isinstance(document.get("labels"), list)
        return document.get("format") == STATISTICS_FORMAT or legacy
    suffix = next((s for s in SIDE_SUFFIXES if path.endswith(s)), None)
    if suffix is None:
        return False
    try:
        head = read_file(
            path, limit=max(*map(len, _CSV_HEADERS), len(REPORT_SIGNATURE), len(",".join(_REGIONS_HEADER)))
        )
    except OSError:  # unreadable: not one pixseg could have written and may replace
        return False
    if suffix == ".stats.csv":
        return head.startswith(tuple(header.encode() for header in _CSV_HEADERS))
    if suffix == ".regions.csv":
        return head.startswith(",".join(_REGIONS_HEADER).encode())
    signature = REPORT_SIGNATURE.encode() if suffix == ".report.html" else _PNG_SIGNATURE
    return head.startswith(signature) and is_own_side_file(path[: -len(suffix)] + ".stats.json")


def write_png(path: str, rgb: np.ndarray) -> None:
    """Write an (h, w, 3) RGB or (h, w, 4) RGBA uint8 image as PNG, atomically.

    Raises
    ------
    OutputError
        If the file cannot be written.
    """
    import imagecodecs

    # libpng at zlib level 1 encodes a 1024^2 preview in about half the time Pillow takes: a batch
    # writes three per image (benchmarks/bench_cohort.py)
    encoded = imagecodecs.png_encode(np.ascontiguousarray(rgb, dtype=np.uint8), level=1)
    try:
        with atomic_file(path, "wb") as handle:
            handle.write(encoded)
    except OSError as err:
        raise OutputError(f"cannot write preview {path!r}: {err}") from err


def write_legend(
    path: str, rows: list[dict[str, Any]], colours: list[tuple[int, int, int, int]], *, masked_pixels: int = 0
) -> None:
    """A PNG legend: one line per label with its colour swatch, name, mean colour, pixel share and
    area, then a "masked" line with the masked pixels' count when there are any (written atomically).

    Lines fill columns of ``LEGEND_LINES``, at most ``LEGEND_COLUMNS`` of them, so the image stays
    bounded (at most about 3400 x 1400 pixels) whatever K: beyond that many labels, the last line
    says how many more there are and points to the ``.stats.csv`` that lists them all.

    Parameters
    ----------
    path : str
        The PNG to write.
    rows : list of dict
        Statistics rows (:func:`pixseg.statistics.label_table`); ``name``, ``hex`` and
        ``intensity`` are shown when present.
    colours : list of RGBA
        The display colour of each row.
    masked_pixels : int
        Pixels of label 0: shown as a swatch outline (transparent in the overlay).

    Raises
    ------
    OutputError
        If the file cannot be written.
    """
    from PIL import Image, ImageDraw

    line, width = 22, 460
    capacity = LEGEND_LINES * LEGEND_COLUMNS - int(masked_pixels > 0)
    shown = rows if len(rows) <= capacity else rows[: capacity - 1]
    n_lines = len(shown) + int(len(shown) < len(rows)) + int(masked_pixels > 0)
    n_columns = max(1, math.ceil(n_lines / LEGEND_LINES))
    image = Image.new("RGB", (width * n_columns, 10 + line * max(1, min(n_lines, LEGEND_LINES))), "white")
    draw = ImageDraw.Draw(image)

    def place(i: int) -> tuple[int, int]:
        return width * (i // LEGEND_LINES), 6 + line * (i % LEGEND_LINES)

    for i, (row, rgba) in enumerate(zip(shown, colours[: len(shown)], strict=True)):
        left, top = place(i)
        draw.rectangle((left + 8, top, left + 26, top + 16), fill=tuple(rgba[:3]), outline="black")
        draw.text((left + 34, top + 2), _legend_text(row), fill="black")
    i = len(shown)
    if len(shown) < len(rows):
        left, top = place(i)
        draw.text((left + 8, top + 2), f"... {len(rows) - len(shown)} more labels: see .stats.csv", fill="black")
        i += 1
    if masked_pixels > 0:
        left, top = place(i)
        draw.rectangle((left + 8, top, left + 26, top + 16), outline="black")
        draw.text((left + 34, top + 2), f"masked: {masked_pixels} px (transparent)", fill="black")
    _save_png(image, path, what="legend")


def _legend_text(row: dict[str, Any]) -> str:
    """``label N name: mean #rrggbb, P% (n px, A mm^2)`` of a statistics row."""
    name = row.get("name") or f"label {row['label']}"
    text = f"{row['label']} {name}" if name != f"cluster {row['label']}" else name
    if row.get("hex"):
        text += f": mean {row['hex']}"
    elif row.get("intensity") is not None:
        text += f": mean {row['intensity']:.4g}"
    area = f", {row['area_um2'] / 1e6:.3g} mm^2" if row.get("area_um2") is not None else ""
    return f"{text}, {100 * row['fraction']:.1f}% ({row['pixels']} px{area})"


def _save_png(image: Any, path: str, *, what: str, **options: Any) -> None:
    """Save a PIL ``image`` as PNG at ``path`` atomically; ``what`` names it in the error."""
    try:
        with atomic_file(path, "wb") as handle:
            image.save(handle, format="PNG", **options)
    except OSError as err:
        raise OutputError(f"cannot write {what} {path!r}: {err}") from err
