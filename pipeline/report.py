"""The run report ``OUTPUT.report.html``: one self-contained page to mail or attach to a ticket.

:func:`render_report` is pure (data in, HTML text out): the previews are inline ``data:`` PNGs,
the style is inline, there is no script and no reference to anything outside the file; a
Content-Security-Policy forbids a browser to load anything else. :func:`reproduce_command` builds
the ``pixseg segment`` / ``pixseg apply`` line that repeats a run from its fingerprint.
:func:`write_report` is the one wrapper that reads the previews and writes the page atomically.
"""

from __future__ import annotations

import base64
import html
import os
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pixseg.colours import label_colours
from pixseg.errors import OutputError
from pixseg.io.atomic import write_atomic
from pixseg.io.remote import read_file
from pixseg.io.side_files import REPORT_SIGNATURE
from pixseg.options import FitOptions, OutputOptions, ReadOptions, option_fields
from pixseg.tables import format_k_table

if TYPE_CHECKING:
    from pixseg.model import SegmentationModel

#: The previews shown, by side-file suffix, with their captions.
REPORT_PREVIEWS = (
    (".thumbnail.png", "input thumbnail"),
    (".overlay.png", "labels over the input"),
    (".legend.png", "legend"),
    (".k-choice.png", "choice of K (--clusters auto)"),
)
#: The option groups of a run's fingerprint, in the order they are shown and given as flags.
_OPTION_GROUPS = (("read", ReadOptions), ("fit", FitOptions), ("output", OutputOptions))
_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 1.2em; height: 1.2em; border: 1px solid #000; vertical-align: middle; }
figure { display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }
img { max-width: 560px; height: auto; border: 1px solid #ccc; }
pre { white-space: pre-wrap; word-break: break-all; background: #f4f4f4; padding: 0.6em; }
"""
#: Forbids the page to load anything but its own inline images and style.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


@dataclass(frozen=True)
class ReportRun:
    """What the report says about a run besides its statistics.

    Attributes
    ----------
    output : str
        The output path.
    fingerprint : dict
        :func:`pixseg.plan.job_fingerprint` of the run: the input's identity and the options
        (``read``, ``output`` and, for ``segment``, ``fit``).
    model : SegmentationModel
        The model the labels come from.
    versions : dict
        Package name -> version (:func:`pixseg.plan.provenance`).
    started : float
        :func:`time.perf_counter` when the run started.
    stages : tuple of (str, float)
        Seconds of the stages before the side files, in order.
    applied_model : str or None
        The model file of an ``apply`` run; None for ``segment``.
    applied_mask : str or None
        ``apply``'s ``mask`` (None: the model's mask mode).
    regions : tuple of dict
        Areas per label inside each ``--regions`` region (:func:`pixseg.regions.region_table`).
    """

    output: str
    fingerprint: dict[str, Any]
    model: SegmentationModel
    versions: dict[str, str]
    started: float
    stages: tuple[tuple[str, float], ...] = ()
    applied_model: str | None = None
    applied_mask: str | None = None
    regions: tuple[dict[str, Any], ...] = ()


def write_report(
    base: str,
    run: ReportRun,
    statistics: list[dict[str, Any]],
    summary: dict[str, Any],
    *,
    n_pixels: int,
) -> str:
    """Write ``base.report.html`` from the previews already written beside ``base`` (atomically).

    The time from ``run.started`` to now is the run's total; the part not in ``run.stages`` is
    shown as the statistics and previews stage.

    Returns
    -------
    str
        The report's path.

    Raises
    ------
    OutputError
        If a preview cannot be read or the report cannot be written.
    """
    path = base + ".report.html"
    try:
        images = {}
        for suffix, _ in REPORT_PREVIEWS:
            if suffix == ".k-choice.png" and run.model.k_choice is None:  # only --clusters auto plots it
                continue
            images[suffix] = read_file(base + suffix)
        seconds = time.perf_counter() - run.started
        stages = (*run.stages, ("statistics and previews", seconds - sum(s for _, s in run.stages)))
        write_atomic(path, render_report(run, statistics, summary, n_pixels=n_pixels, images=images, stages=stages))
    except OSError as err:
        raise OutputError(f"cannot write report {path!r}: {err}") from err
    return path


def render_report(
    run: ReportRun,
    statistics: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    *,
    n_pixels: int,
    images: Mapping[str, bytes],
    stages: Sequence[tuple[str, float]],
) -> str:
    """The report page of a run, as HTML text.

    Parameters
    ----------
    run : ReportRun
        The run: output, fingerprint, model, versions.
    statistics : sequence of dict
        The rows of ``.stats.json`` (:func:`pixseg.statistics.label_table`; ``name``, ``colour``,
        ``mean_colour`` and ``hex`` are shown when a row has them).
    summary : dict
        ``masked_pixels`` and ``pixel_size_um`` (as in ``.stats.json``).
    n_pixels : int
        Pixels of the labelled level (masked or not).
    images : mapping of str to bytes
        PNG files by their suffix in :data:`REPORT_PREVIEWS`; a missing one is left out.
    stages : sequence of (str, float)
        Seconds of each stage, in order; their sum is shown as the total.

    Returns
    -------
    str
        The page, starting with :data:`REPORT_SIGNATURE`. Every value is HTML-escaped; the only
        ``src`` attributes are ``data:`` URIs.
    """
    name = os.path.basename(run.output.rstrip("/"))
    masked = int(summary.get("masked_pixels", 0))
    size = summary.get("pixel_size_um")
    total = sum(seconds for _, seconds in stages)
    timings = [(stage, f"{seconds:.2f} s") for stage, seconds in stages] + [("total", f"{total:.2f} s")]
    sections = [
        f"<h1>pixseg report: {_text(name)}</h1>",
        _figures(images),
        "<h2>Labels</h2>",
        _label_table(statistics, pixel_size=size),
        *(["<h2>Regions</h2>", _region_table(run.regions)] if run.regions else []),
        "<h2>Run</h2>",
        pairs_table(
            [
                ("input", run.fingerprint["input"]["path"]),
                ("output", run.output),
                ("command", "apply" if run.applied_model is not None else "segment"),
                *([("model file", run.applied_model)] if run.applied_model is not None else []),
                ("labelled pixels", f"{n_pixels - masked} of {n_pixels}"),
                ("mask fraction", f"{masked / n_pixels if n_pixels else 0.0:.4%} ({masked} masked pixels)"),
                ("pixel size", f"{size[0]:g} x {size[1]:g} µm (Y, X)" if size else "unknown"),
            ]
        ),
        "<h2>Reproduce</h2>",
        "<p>Run from any directory; add <code>--overwrite</code> to replace this output, or give another OUTPUT. "
        "Compute options (scheduler, workers) are not recorded: they do not change the labels.</p>",
        f"<pre>{_text(reproduce_command(run))}</pre>",
        "<h2>Parameters</h2>",
        _parameters(run),
        "<h2>Model</h2>",
        pairs_table(model_rows(run.model)),
        *([f"<pre>{_text(format_k_table(run.model.k_choice))}</pre>"] if run.model.k_choice is not None else []),
        "<h2>Timings</h2>",
        pairs_table(timings),
        "<h2>Versions</h2>",
        pairs_table(sorted(run.versions.items())),
    ]
    return html_page(name, sections, version=run.versions.get("pixseg", "unknown"))


def html_page(name: str, sections: Sequence[str], *, version: str) -> str:
    """A report page titled ``pixseg report: NAME`` (escaped) holding the HTML ``sections``: it starts
    with :data:`REPORT_SIGNATURE`, and its content security policy allows only ``data:`` images."""
    body = "\n".join(sections)
    return (
        f'{REPORT_SIGNATURE}\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        f'<meta name="generator" content="pixseg {_text(version)}">\n'
        f"<title>pixseg report: {_text(name)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def reproduce_command(run: ReportRun) -> str:
    """The ``pixseg segment`` (or ``apply``) command line that repeats ``run``, paths absolute.

    Every read, fit and output option with a flag is given explicitly (a switch only when it is
    off its default), so the command repeats the run even if a default changes. Options without
    a value (``None``) are left out. Compute options are not part of a fingerprint.
    """
    fingerprint = run.fingerprint
    if run.applied_model is None:
        words = ["pixseg", "segment", fingerprint["input"]["path"], os.path.abspath(run.output)]
    else:
        words = ["pixseg", "apply", os.path.abspath(run.applied_model), fingerprint["input"]["path"]]
        words += [os.path.abspath(run.output)]
        if run.applied_mask is not None:
            mask = run.applied_mask
            words += ["--mask", mask if mask in ("auto", "none") else os.path.abspath(mask)]
    for group, cls in _OPTION_GROUPS:
        if group in fingerprint:
            words += _flags(cls, fingerprint[group])
    return shlex.join(words)


def _flags(cls: type, values: Mapping[str, Any]) -> list[str]:
    """The command-line flags of one options group's values (as stored in a fingerprint)."""
    words: list[str] = []
    for item, spec, hint in option_fields(cls):
        value = values.get(item.name)
        if spec.flag is None or value is None:
            continue
        if hint is bool:
            if value != item.default:
                words.append(spec.flag)
            continue
        if spec.path and value not in spec.keywords:
            value = os.path.abspath(value)
        words += [spec.flag, _value_text(value)]
    return words


def _value_text(value: Any) -> str:
    """A value as the command line reads it back exactly: floats by ``repr``, lists comma-separated."""
    if isinstance(value, list):
        return ",".join(map(_value_text, value))
    return repr(value) if isinstance(value, float) else str(value)


def _parameters(run: ReportRun) -> str:
    """One table row per option of the run: group, name, value."""
    rows = []
    for group, _ in _OPTION_GROUPS:
        for key, value in run.fingerprint.get(group, {}).items():
            shown = "not set" if value is None else _value_text(value)
            rows.append(f"<tr><td>{group}</td><td>{_text(key)}</td><td>{_text(shown)}</td></tr>")
    return "<table>\n<tr><th>group</th><th>option</th><th>value</th></tr>\n" + "\n".join(rows) + "\n</table>"


def model_rows(model: SegmentationModel) -> list[tuple[str, Any]]:
    """A model's fit, as (name, value) rows for :func:`pairs_table`."""
    spec = model.feature_spec
    rows: list[tuple[str, Any]] = [
        ("K (clusters)", model.n_clusters),
        ("feature groups", ", ".join(spec.groups)),
        ("feature columns", ", ".join(spec.columns)),
        ("texture scales", ", ".join(f"{s:g}" for s in spec.sigmas) or "none"),
        ("mask mode", spec.mask),
        ("seed", model.seed),
        ("sample size", model.sample_size),
        ("iterations", model.n_iter),
        ("sample inertia", f"{model.sample_inertia:.6g}"),
    ]
    if model.degenerate is not None:
        rows.append(("degenerate fit", model.degenerate))
    if model.preset is not None:
        rows.append(("preset", model.preset))
    if model.k_choice is not None:
        rows.append(("K chosen by", f"--clusters auto, highest {model.k_choice.criterion} (table below)"))
    return rows


def _region_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Pixels and area of each label inside each region; every number cell carries its exact value."""
    header = ("region", "label", "name", "pixels", "fraction of region", "area (µm²)")
    lines = ["<table class=regions>", "<tr>" + "".join(f"<th>{_text(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        area = row["area_um2"]
        cells = [
            f"<td>{_text(row['region'])}</td>",
            number_cell(row["label"], str(row["label"])),
            f"<td>{_text(row['name'])}</td>",
            number_cell(row["pixels"], str(row["pixels"])),
            number_cell(row["fraction"], f"{row['fraction']:.2%}"),
            number_cell(area, f"{area:.6g}") if area is not None else "<td></td>",
        ]
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join([*lines, "</table>"])


def _label_table(rows: Sequence[Mapping[str, Any]], *, pixel_size: Any) -> str:
    """The per-label table; every number cell carries its exact value in ``data-value``."""
    palette = label_colours(len(rows))
    show_mean = any(row.get(key) is not None for row in rows for key in ("hex", "mean_colour", "intensity"))
    header = ["", "label", "name", *(["mean input colour"] if show_mean else []), "pixels", "fraction"]
    header += ["area (µm²)"] if pixel_size else []
    lines = ["<table class=labels>", "<tr>" + "".join(f"<th>{_text(h)}</th>" for h in header) + "</tr>"]
    for row, default in zip(rows, palette, strict=True):
        label = int(row["label"])
        cells = [
            swatch_cell(css_colour(row.get("colour")) or css_colour(default)),
            number_cell(label, str(label)),
            f"<td class=name>{_text(row.get('name') or f'label {label}')}</td>",
        ]
        if show_mean:
            cells.append(f"<td class=mean>{_mean_colour(row)}</td>")
        cells += [
            number_cell(row["pixels"], str(row["pixels"])),
            number_cell(row["fraction"], f"{row['fraction']:.2%}"),
        ]
        if pixel_size:
            area = row.get("area_um2")
            cells.append(number_cell(area, f"{area:.6g}") if area is not None else "<td></td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join([*lines, "</table>"])


def _mean_colour(row: Mapping[str, Any]) -> str:
    """A stats row's mean input colour: a swatch of ``hex``, the ``mean_colour`` values, ``intensity``."""
    parts = []
    if (colour := css_colour(row.get("hex"))) is not None:
        parts.append(f"<span class=swatch style='background:{colour}'></span> {_text(row['hex'])}")
    mean = row.get("mean_colour")
    if isinstance(mean, list | tuple):
        parts.append(_text("(" + ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in mean) + ")"))
    if isinstance(row.get("intensity"), int | float):
        parts.append(_text(f"intensity {row['intensity']:.4g}"))
    return " ".join(parts)


def css_colour(value: Any) -> str | None:
    """``#rrggbb`` or ``rgb(r, g, b)`` for a hex string or an (r, g, b[, a]) sequence; else None."""
    if isinstance(value, str):
        digits = value.removeprefix("#")
        if len(digits) in (6, 8) and all(c in "0123456789abcdefABCDEF" for c in digits):
            return "#" + digits[:6]
        return None
    if isinstance(value, list | tuple) and len(value) in (3, 4) and all(isinstance(v, int) for v in value):
        red, green, blue = (min(255, max(0, v)) for v in value[:3])
        return f"rgb({red}, {green}, {blue})"
    return None


def swatch_cell(colour: str | None) -> str:
    """A table cell with a colour swatch of the CSS ``colour`` (none: an empty swatch)."""
    style = f" style='background:{colour}'" if colour else ""
    return f"<td><span class=swatch{style}></span></td>"


def number_cell(value: Any, shown: str) -> str:
    """A number cell showing ``shown``, with the exact ``value`` in its ``data-value``."""
    exact = repr(value) if isinstance(value, float) else str(value)
    return f'<td class=number data-value="{_text(exact)}">{_text(shown)}</td>'


def pairs_table(rows: Sequence[tuple[str, Any]]) -> str:
    """A two-column table of (name, value) rows, escaped."""
    body = "\n".join(f"<tr><th>{_text(key)}</th><td>{_text(str(value))}</td></tr>" for key, value in rows)
    return f"<table>\n{body}\n</table>"


def _figures(images: Mapping[str, bytes]) -> str:
    figures = []
    for suffix, caption in REPORT_PREVIEWS:
        if suffix in images:
            figures.append(figure_html(images[suffix], caption))
    return "<div>" + "".join(figures) + "</div>"


def figure_html(png: bytes, caption: str) -> str:
    """A ``<figure>`` showing ``png`` inline (a ``data:`` URI) with its (escaped) ``caption``."""
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_text(caption)}">'
        f"<figcaption>{_text(caption)}</figcaption></figure>"
    )


def _text(value: str) -> str:
    return html.escape(value, quote=True)
