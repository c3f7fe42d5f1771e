"""A volume's HTML report, ``OUTPUT.report.html``: the mid-slices preview, the label table in voxels
and mm³, the run and the model, built from :mod:`pixseg.report`'s page, tables and figures."""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from typing import Any

from pixseg.errors import OutputError
from pixseg.io.atomic import write_atomic
from pixseg.model import SegmentationModel
from pixseg.report import css_colour, figure_html, html_page, model_rows, number_cell, pairs_table, swatch_cell
from pixseg.tables import format_k_table

#: The caption of the mid-slices preview in the report.
SLICES_CAPTION = "axial, coronal and sagittal mid-slices: the scan (top) and its labels (bottom)"


def render_volume_report(
    *,
    output: str,
    input_path: str,
    command: str,
    shape: Sequence[int],
    spacing: Sequence[float],
    model: SegmentationModel,
    statistics: Sequence[Mapping[str, Any]],
    seconds: float,
    slices_png: bytes,
    version: str,
) -> str:
    """The report page of a volume run, as HTML text (every value escaped; images inline).

    ``statistics`` are :func:`pixseg.volume_statistics.volume_statistics` rows; ``slices_png`` is
    the ``.slices.png`` preview; ``command`` is ``segment`` or ``apply``.
    """
    voxels = sum(int(row["voxels"]) for row in statistics)
    sections = [
        f"<h1>pixseg report: {_escape(os.path.basename(output.rstrip('/')))}</h1>",
        figure_html(slices_png, SLICES_CAPTION),
        "<h2>Labels</h2>",
        _label_table(statistics),
        "<h2>Run</h2>",
        pairs_table(
            [
                ("input", os.path.abspath(input_path)),
                ("output", output),
                ("command", command),
                ("shape", " x ".join(str(n) for n in shape[:3]) + " voxels (Z, Y, X)"),
                ("voxel size", " x ".join(f"{s:g}" for s in spacing) + " mm (Z, Y, X)"),
                ("labelled voxels", f"{voxels} of {int(shape[0]) * int(shape[1]) * int(shape[2])}"),
                ("window", ", ".join(f"{v:g}" for v in model.feature_spec.window or ()) or "none"),
                ("seconds", f"{seconds:.2f}"),
            ]
        ),
        "<h2>Model</h2>",
        pairs_table(model_rows(model)),
        *([f"<pre>{_escape(format_k_table(model.k_choice))}</pre>"] if model.k_choice is not None else []),
    ]
    return html_page(os.path.basename(output.rstrip("/")), sections, version=version)


def write_volume_report(path: str, slices_path: str, **run: Any) -> None:
    """Write the report at ``path`` (atomically) around the preview at ``slices_path``; ``run`` as
    for :func:`render_volume_report`.

    Raises
    ------
    OutputError
        If the preview cannot be read or the report cannot be written.
    """
    try:
        with open(slices_path, "rb") as handle:
            slices_png = handle.read()
        write_atomic(path, render_volume_report(slices_png=slices_png, **run))
    except OSError as err:
        raise OutputError(f"cannot write report {path!r}: {err}") from err


def _label_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Voxels, fraction, volume and mean input intensity of each label, with its legend colour;
    numbers carry exact values (an empty label's intensity is blank)."""
    header = ["", "label", "voxels", "fraction", "volume (mm³)", "mean intensity"]
    lines = ["<table class=labels>", "<tr>" + "".join(f"<th>{_escape(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = [
            swatch_cell(css_colour(row["colour_rgba"])),
            number_cell(row["label"], str(row["label"])),
            number_cell(row["voxels"], str(row["voxels"])),
            number_cell(row["fraction"], f"{row['fraction']:.2%}"),
            number_cell(row["volume_mm3"], f"{row['volume_mm3']:.6g}"),
            number_cell(row.get("intensity"), "" if row.get("intensity") is None else f"{row['intensity']:.6g}"),
        ]
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join([*lines, "</table>"])


def _escape(value: str) -> str:
    return html.escape(value, quote=True)
