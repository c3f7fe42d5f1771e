"""Benchmark results: the records, the derived ratios, machine information and the markdown report."""

from __future__ import annotations

import datetime
import os
import platform
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import psutil
from threadpoolctl import threadpool_info

from benchmarks.kernels import KernelTiming

MB = 1e6
GB = 1e9
#: Distributions whose versions the report names.
PACKAGES = ("dask", "distributed", "dask-ml", "numpy", "zarr", "tifffile", "imagecodecs", "numba", "scikit-learn")


@dataclass(frozen=True)
class CaseResult:
    """One measured end-to-end run.

    Attributes
    ----------
    case : str
        What ran (``"pixseg threads"``, ``"pixseg local x2"``, ``"in-memory scikit-learn"``).
    size : int
        Edge of the square input image, in pixels.
    command : list of str
        The command line.
    wall_s : float
        Wall seconds, interpreter start-up included.
    peak_tree_rss : int
        Bytes: peak sum of RSS over the process tree (polled).
    max_processes : int
        Most processes in the tree at once.
    load_before : float
        One-minute load average when the run started (other work on the machine).
    details : dict
        Case-specific figures (stage timings, what the command printed).
    """

    case: str
    size: int
    command: list[str]
    wall_s: float
    peak_tree_rss: int
    max_processes: int
    load_before: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def mpx_per_s(self) -> float:
        """Input megapixels per wall second."""
        return self.size * self.size / 1e6 / self.wall_s


@dataclass(frozen=True)
class Ratio:
    """A derived figure and, where there is one, its target."""

    name: str
    value: float
    target: float | None = None

    @property
    def passed(self) -> bool | None:
        """Whether ``value`` is below ``target`` (None without a target)."""
        return None if self.target is None else self.value < self.target


def compute_ratios(large: CaseResult, small: CaseResult, baseline: CaseResult) -> list[Ratio]:
    """The headline ratios.

    Parameters
    ----------
    large, small : CaseResult
        pixseg (threaded scheduler) on the large and on the baseline-size image.
    baseline : CaseResult
        The in-memory scikit-learn recipe on the baseline-size image.

    Returns
    -------
    list of Ratio
    """
    return [
        Ratio(f"pixseg {_px(large)} peak RSS / pixseg {_px(small)} peak RSS", _rss_ratio(large, small), 1.5),
        Ratio(f"pixseg {_px(large)} peak RSS (GB)", large.peak_tree_rss / GB, 1.5),
        Ratio(
            f"in-memory scikit-learn {_px(baseline)} peak RSS / pixseg {_px(small)} peak RSS",
            _rss_ratio(baseline, small),
        ),
        Ratio(f"pixseg / in-memory scikit-learn Mpx/s on {_px(small)}", small.mpx_per_s / baseline.mpx_per_s),
    ]


def machine_info() -> dict[str, Any]:
    """Cores, memory, Python, package versions, BLAS/OpenMP pools loaded so far, date and load of this machine."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gb": psutil.virtual_memory().total / GB,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
        "thread_pools": [_describe_pool(pool) for pool in threadpool_info()],
        "versions": {name: _version(name) for name in PACKAGES},
    }


def format_report(
    info: dict[str, Any], cases: list[CaseResult], ratios: list[Ratio], kernels: list[KernelTiming]
) -> str:
    """The results as markdown: a header with the machine, the runs, the ratios, the kernels."""
    lines = [*_header(info), "", *_case_table(cases), "", *_ratio_table(ratios)]
    if kernels:
        lines += ["", *_kernel_table(kernels)]
    return "\n".join(lines)


def _header(info: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{name} {value}" for name, value in info["versions"].items())
    load = ", ".join(f"{value:.2f}" for value in info["load_average"])
    return [
        f"# pixseg benchmarks, {info['date']}",
        "",
        f"- machine: {info['logical_cores']} logical / {info['physical_cores']} physical cores, "
        f"{info['ram_gb']:.1f} GB RAM, {info['platform']}",
        f"- Python {info['python']}; {versions}",
        f"- thread pools: {'; '.join(info['thread_pools'])}",
        f"- load average at start (1, 5, 15 min): {load}",
        "- wall time includes interpreter start-up and imports; peak RSS: largest sum of RSS over the "
        "process tree, polled every 50 ms (pages shared between processes count once per process). "
        "1 MB = 10^6 bytes.",
    ]


def _case_table(cases: list[CaseResult]) -> list[str]:
    rows = [
        "| case | image | wall s | Mpx/s | peak RSS (MB) | processes | load at start |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        rows.append(
            f"| {case.case} | {_px(case)} | {case.wall_s:.1f} | {case.mpx_per_s:.3g} | {case.peak_tree_rss / MB:.0f} "
            f"| {case.max_processes} | {case.load_before:.2f} |"
        )
    return rows


def _ratio_table(ratios: list[Ratio]) -> list[str]:
    rows = ["| ratio | value | target |", "|---|---:|---|"]
    for ratio in ratios:
        verdict = "" if ratio.passed is None else f"< {ratio.target:g}: {'PASS' if ratio.passed else 'FAIL'}"
        rows.append(f"| {ratio.name} | {ratio.value:.2f} | {verdict} |")
    return rows


def _kernel_table(kernels: list[KernelTiming]) -> list[str]:
    rows = [
        f"Nearest-centroid kernels on ({kernels[0].pixels}, 3) float32 pixels, 1 thread (fastest call):",
        "",
        "| kernel | K | ms | Mpx/s per core | nearest-centroid fraction |",
        "|---|---:|---:|---:|---:|",
    ]
    for timing in kernels:
        rows.append(
            f"| {timing.kernel} | {timing.clusters} | {timing.best_s * 1e3:.1f} | {timing.mpx_per_s:.0f} "
            f"| {timing.optimal:.6f} |"
        )
    return rows


def _px(case: CaseResult) -> str:
    return f"{case.size}^2"


def _rss_ratio(numerator: CaseResult, denominator: CaseResult) -> float:
    return numerator.peak_tree_rss / denominator.peak_tree_rss


def _describe_pool(pool: dict[str, Any]) -> str:
    architecture = f" ({pool['architecture']})" if pool.get("architecture") else ""
    return f"{pool['internal_api']} {pool.get('version') or ''}{architecture}".strip()


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"
