"""The scaling plot: Mpx/s and peak RSS against image size, one line per scheduler."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from benchmarks.report import MB, CaseResult


def plot_scaling(
    cases: Sequence[CaseResult], path: Path, *, title: str = "pixseg segment: throughput and memory vs image size"
) -> None:
    """Write a PNG with two panels (Mpx/s, peak RSS in MB) against image edge, one line per case name.

    Parameters
    ----------
    cases : sequence of CaseResult
        The scaling runs.
    path : pathlib.Path
        Destination PNG (overwritten).
    title : str
        The figure's title.

    Raises
    ------
    ModuleNotFoundError
        If matplotlib is not installed (it is a benchmark-only dependency).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (speed, memory) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for name in dict.fromkeys(case.case for case in cases):
        runs = sorted((case for case in cases if case.case == name), key=lambda case: case.size)
        sizes = [case.size for case in runs]
        speed.plot(sizes, [case.mpx_per_s for case in runs], marker="o", label=name)
        memory.plot(sizes, [case.peak_tree_rss / MB for case in runs], marker="o", label=name)
    edges = sorted({case.size for case in cases})
    for axes, label in ((speed, "Mpx/s (wall, start-up included)"), (memory, "peak RSS of process tree (MB)")):
        axes.set_xscale("log", base=2)
        axes.set_xticks(edges, [f"{edge}^2" for edge in edges])
        axes.set_xlabel("image (pixels)")
        axes.set_ylabel(label)
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    figure.savefig(path, dpi=100)
    plt.close(figure)
