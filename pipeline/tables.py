"""The text the commands print: the end-of-run summary, the per-label table, ``info``'s values."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pixseg.choose_k import KChoice
    from pixseg.labelling import RunResult
    from pixseg.model import SegmentationModel


def print_result(result: RunResult) -> None:
    """The end-of-run lines on stdout: what was written, how fast, the label table, the side files."""
    height, width = result.shape
    rate = height * width / 1e6 / max(result.seconds, 1e-9)
    classes = result.model.classes
    values = f"labels 1..{result.model.n_clusters}"
    if classes is not None:
        values = f"classes 1..{classes.n_classes} (of {result.model.n_clusters} clusters)"
    print(
        f"wrote {result.output}: {height}x{width} {values} "
        f"in {result.seconds:.1f} s ({rate:.1f} Mpx/s, {result.n_chunks} chunks, {len(result.levels)} levels)"
    )
    if result.model.k_choice is not None:
        print(format_k_table(result.model.k_choice))
    print(format_label_table(result.statistics))
    if result.regions:
        print(format_region_table(result.regions))
    if result.side_files:
        print("side files: " + ", ".join(result.side_files))


def format_label_table(rows: list[dict[str, Any]]) -> str:
    """A text table of per-label statistics: label, name, pixels, % of unmasked, area, display
    colour and mean input colour (``R G B #hex`` for 8-bit RGB inputs, else the mean intensity;
    ``-`` for outputs written before pixseg stored it). Centroids stay in the ``.stats.json``."""
    header = f"{'label':>5} {'name':<12} {'pixels':>14} {'%':>7} {'area mm^2':>11}  {'colour':<7}  mean colour"
    lines = [header]
    for row in rows:
        area = f"{row['area_um2'] / 1e6:11.4g}" if row["area_um2"] is not None else f"{'-':>11}"
        name = str(row.get("name") or f"cluster {row['label']}")
        lines.append(
            f"{row['label']:>5} {name:<12} {row['pixels']:>14} {100 * row['fraction']:7.2f} {area}  "
            f"{row.get('colour') or '-':<7}  {mean_colour_text(row)}"
        )
    return "\n".join(lines)


def format_region_table(rows: list[dict[str, Any]]) -> str:
    """A text table of the areas per label inside each ``--regions`` region."""
    lines = [f"{'region':<20} {'label':>5} {'name':<14} {'pixels':>14} {'% region':>8} {'area um^2':>12}"]
    for row in rows:
        area = f"{row['area_um2']:12.6g}" if row["area_um2"] is not None else f"{'-':>12}"
        lines.append(
            f"{row['region']:<20} {row['label']:>5} {row['name']:<14} {row['pixels']:>14} "
            f"{100 * row['fraction']:8.2f} {area}"
        )
    return "\n".join(lines)


def format_k_table(choice: KChoice) -> str:
    """The table of ``--clusters auto``: each K tried with its inertia and scores, the chosen K marked."""
    lines = [f"{'K':>4} {'inertia':>12} {'silhouette':>10} {'Calinski-Harabasz':>17}"]
    for row in choice.table:
        mark = f"  <- chosen (highest {choice.criterion})" if row["k"] == choice.chosen else ""
        scores = f"{row['inertia']:12.5g} {row['silhouette']:10.4f} {row['calinski_harabasz']:17.5g}"
        lines.append(f"{int(row['k']):>4} {scores}{mark}")
    return "\n".join(lines)


def mean_colour_text(row: dict[str, Any]) -> str:
    """``R G B #hex``, the mean intensity, or ``-`` of a statistics row."""
    mean = row.get("mean_colour")
    if not mean:
        return "-"
    if row.get("hex"):
        return " ".join(f"{v:5.1f}" for v in mean) + f"  {row['hex']}"
    return f"{row['intensity']:.4g}" if row.get("intensity") is not None else "-"


def format_value(key: str, value: Any) -> str:
    """One value of ``pixseg info`` as text (shapes as ``YxX``, completeness in words)."""
    if key == "complete":
        return "complete" if value else "INCOMPLETE (interrupted or still being written)"
    if isinstance(value, tuple | list) and value and isinstance(value[0], tuple | list):
        return ", ".join("x".join(str(n) for n in item) for item in value)
    if isinstance(value, tuple | list):
        return "x".join(str(n) for n in value) if all(isinstance(n, int) for n in value) else str(value)
    return str(value)


def format_model_tables(model: SegmentationModel) -> str:
    """The tables ``pixseg info`` shows for a model: the K table when ``--clusters auto`` chose K,
    the class table when the model has classes; empty when it has neither."""
    tables = [format_k_table(model.k_choice)] if model.k_choice is not None else []
    if model.classes is not None:
        tables.append(format_class_table(model))
    return "\n".join(tables)


def format_class_table(model: SegmentationModel) -> str:
    """A text table of a model's classes: class id, name, clusters and colour (``auto``: decided
    per output). A model without a class table shows each cluster as its own unnamed class."""
    from pixseg.classes import identity_table

    table = model.classes or identity_table(model.n_clusters)
    lines = [f"{'class':>5} {'name':<24} {'clusters':<16} colour"]
    for class_id, pixel_class in enumerate(table.classes, start=1):
        clusters = ",".join(str(c) for c in pixel_class.clusters)
        lines.append(f"{class_id:>5} {pixel_class.title:<24} {clusters:<16} {pixel_class.colour or 'auto'}")
    return "\n".join(lines)
