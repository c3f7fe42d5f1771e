"""Side files of an output: statistics (CSV, JSON) and previews (PNG), each written atomically."""

from __future__ import annotations

import csv
from typing import Any

import numpy as np

from pixseg.errors import OutputError
from pixseg.io.atomic import atomic_file, write_json_atomic

SIDE_SUFFIXES = (".stats.csv", ".stats.json", ".thumbnail.png", ".labels.png", ".overlay.png", ".legend.png")


def side_file_base(output_path: str) -> str:
    """The prefix every side file of an output shares: the output's own path (``out.zarr.stats.csv``),
    so outputs of one name in two formats keep separate side files."""
    return output_path.rstrip("/")


def write_statistics(base: str, rows: list[dict[str, Any]], *, summary: dict[str, Any]) -> None:
    """Write ``base.stats.csv`` (one row per label) and ``base.stats.json`` (``summary`` + rows).

    Raises
    ------
    OutputError
        If a file cannot be written (each file is replaced atomically: old or new, never partial).
    """
    columns = list(rows[0]["centroid"]) if rows else []
    try:
        with atomic_file(base + ".stats.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["label", "pixels", "fraction", "area_um2", *(f"centroid_{c}" for c in columns)])
            for row in rows:
                area = "" if row["area_um2"] is None else repr(row["area_um2"])
                writer.writerow(
                    [row["label"], row["pixels"], repr(row["fraction"]), area, *map(repr, row["centroid"].values())]
                )
        write_json_atomic(base + ".stats.json", {**summary, "labels": rows})
    except OSError as err:
        raise OutputError(f"cannot write statistics next to {base!r}: {err}") from err


def write_png(path: str, rgb: np.ndarray) -> None:
    """Write an (h, w, 3) uint8 image as PNG, atomically.

    Raises
    ------
    OutputError
        If the file cannot be written.
    """
    from PIL import Image

    # fast; previews are small
    _save_png(Image.fromarray(rgb, mode="RGB"), path, what="preview", compress_level=1)


def write_legend(path: str, rows: list[dict[str, Any]], colours: list[tuple[int, int, int, int]]) -> None:
    """A PNG legend: one line per label with its colour swatch, pixel share and area (written atomically).

    Raises
    ------
    OutputError
        If the file cannot be written.
    """
    from PIL import Image, ImageDraw

    line = 22
    image = Image.new("RGB", (420, 10 + line * max(1, len(rows))), "white")
    draw = ImageDraw.Draw(image)
    for i, (row, rgba) in enumerate(zip(rows, colours, strict=True)):
        top = 6 + i * line
        draw.rectangle((8, top, 26, top + 16), fill=tuple(rgba[:3]), outline="black")
        area = f", {row['area_um2'] / 1e6:.3g} mm^2" if row["area_um2"] is not None else ""
        draw.text(
            (34, top + 2),
            f"label {row['label']}: {100 * row['fraction']:.1f}% ({row['pixels']} px{area})",
            fill="black",
        )
    _save_png(image, path, what="legend")


def _save_png(image: Any, path: str, *, what: str, **options: Any) -> None:
    """Save a PIL ``image`` as PNG at ``path`` atomically; ``what`` names it in the error."""
    try:
        with atomic_file(path, "wb") as handle:
            image.save(handle, format="PNG", **options)
    except OSError as err:
        raise OutputError(f"cannot write {what} {path!r}: {err}") from err
