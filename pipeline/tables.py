"""The text the commands print: the end-of-run summary, the per-label table, ``info``'s values."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pixseg.labelling import RunResult


def print_result(result: RunResult) -> None:
    """The end-of-run lines on stdout: what was written, how fast, the label table, the side files."""
    height, width = result.shape
    rate = height * width / 1e6 / max(result.seconds, 1e-9)
    print(
        f"wrote {result.output}: {height}x{width} labels 1..{result.model.n_clusters} "
        f"in {result.seconds:.1f} s ({rate:.1f} Mpx/s, {result.n_chunks} chunks, {len(result.levels)} levels)"
    )
    print(format_label_table(result.statistics))
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
