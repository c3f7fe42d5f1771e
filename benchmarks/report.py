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

from benchmarks import CLUSTERS
from benchmarks.fitcost import FitTiming
from benchmarks.kernels import KernelTiming

MB = 1e6
GB = 1e9
#: Case names.
THREADS, LOCAL, LOCAL_ONE, IN_MEMORY, DASK_ML, FLOOR, FLOOR_PIXSEG_READER = (
    "pixseg threads",
    "pixseg local x2",
    "pixseg local x1",
    "in-memory scikit-learn",
    "dask-ml KMeans on the dask array",
    "I/O floor",
    "I/O floor, pixseg's tile reader",
)
#: Distributions whose versions the report names.
PACKAGES = ("dask", "distributed", "dask-ml", "numpy", "zarr", "tifffile", "imagecodecs", "numba", "scikit-learn")
#: The performance issue's targets (issue 18). pixseg's time over the I/O floor's (decoding every tile
#: through pixseg's own reader and writing a uint8 label zarr), by image edge (smaller edges: the first);
FLOOR_TARGETS = {16384: 1.3, 32768: 1.15}
#: pixseg's time over the in-memory scikit-learn recipe's, by image edge (3x and 10x faster);
RECIPE_TARGETS = {4096: 1 / 3, 8192: 1 / 10}
#: the 100,000^2 run's wall seconds.
HUGE_SECONDS = 100.0


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
    at_least: bool = False

    @property
    def passed(self) -> bool | None:
        """Whether ``value`` is below ``target`` (at least ``target`` with ``at_least``; None without one)."""
        if self.target is None:
            return None
        return self.value >= self.target if self.at_least else self.value < self.target

    @property
    def target_text(self) -> str:
        """The target as ``"< 1.3"`` or ``">= 1.6"`` (empty without one)."""
        return "" if self.target is None else f"{'>=' if self.at_least else '<'} {self.target:.3g}"


@dataclass(frozen=True)
class FloorComparison:
    """pixseg's ``segment`` beside the I/O floor on the same input.

    Attributes
    ----------
    compression : str
        TIFF tile compression of the input.
    floor, pixseg : CaseResult
        The no-compute copy (``benchmarks.floor``) and pixseg with the threaded scheduler.
    floor_pixseg_reader : CaseResult or None
        The same copy reading tiles through pixseg's own reader (``--reader pixseg``).
    """

    compression: str
    floor: CaseResult
    pixseg: CaseResult
    floor_pixseg_reader: CaseResult | None = None

    @property
    def time_ratio(self) -> float:
        """pixseg's wall time over the floor's."""
        return self.pixseg.wall_s / self.floor.wall_s


@dataclass(frozen=True)
class FitCost:
    """One sample size: the fit alone, and pixseg end to end with that ``--sample-size``.

    Attributes
    ----------
    fit : FitTiming
        ``fit_model`` timed in process on a uniform sample.
    pixseg : CaseResult
        ``pixseg segment --sample-size N``; ``details["inertia"]`` holds its all-pixel inertia.
    reference_inertia : float
        The all-pixel inertia of the full-data scikit-learn fit on the same image.
    """

    fit: FitTiming
    pixseg: CaseResult
    reference_inertia: float

    @property
    def inertia_ratio(self) -> float:
        """pixseg's all-pixel inertia over scikit-learn's."""
        return self.pixseg.details["inertia"] / self.reference_inertia


def compute_ratios(
    scaling: list[CaseResult],
    recipes: list[CaseResult],
    floors: list[FloorComparison],
    huge: CaseResult | None = None,
) -> list[Ratio]:
    """The headline ratios and the issue's targets.

    Parameters
    ----------
    scaling : list of CaseResult
        pixseg on every scaling size, ``"pixseg threads"`` and ``"pixseg local x2"``.
    recipes : list of CaseResult
        The seed-recipe comparison; the largest image's in-memory scikit-learn and pixseg runs are used,
        their ``details["inertia"]`` included.
    floors : list of FloorComparison
        pixseg against the I/O floor, per input codec.
    huge : CaseResult, optional
        The ``--huge`` run: its wall time (target 4 minutes) and peak RSS (target 1 GB).

    Returns
    -------
    list of Ratio
        A ratio passes when it is below its target.
    """
    threads = sorted((case for case in scaling if case.case == THREADS), key=lambda case: case.size)
    ratios = []
    for floor in floors:
        target = FLOOR_TARGETS.get(floor.pixseg.size, FLOOR_TARGETS[min(FLOOR_TARGETS)])
        name = f"{floor.compression} {_px(floor.pixseg)}"
        ratios.append(Ratio(f"pixseg / I/O floor (tifffile's reader) wall time, {name}", floor.time_ratio))
        if floor.floor_pixseg_reader is not None:
            ratios.append(
                Ratio(
                    f"pixseg / I/O floor (pixseg's reader: the issue's floor) wall time, {name}",
                    floor.pixseg.wall_s / floor.floor_pixseg_reader.wall_s,
                    target,
                )
            )
    smallest, largest = threads[0], threads[-1]
    ratios += [
        Ratio(f"pixseg {_px(largest)} peak RSS / pixseg {_px(smallest)} peak RSS", _rss_ratio(largest, smallest), 1.2),
        Ratio(f"pixseg {_px(largest)} peak RSS (GB)", largest.peak_tree_rss / GB, 1.0),
    ]
    for case in scaling:
        if case.case == LOCAL:
            same = next(run for run in threads if run.size == case.size)
            ratios.append(Ratio(f"pixseg local x2 / threads wall time, {_px(case)}", case.wall_s / same.wall_s, 1.3))
            one = next((run for run in scaling if run.case == LOCAL_ONE and run.size == case.size), None)
            if one is not None:
                ratios.append(
                    Ratio(
                        f"pixseg local x2 / local x1 throughput, {_px(case)}",
                        case.mpx_per_s / one.mpx_per_s,
                        1.6,
                        at_least=True,
                    )
                )
    if huge is not None:
        ratios += [
            Ratio(f"pixseg {_px(huge)} wall time (s)", huge.wall_s, HUGE_SECONDS),
            Ratio(f"pixseg {_px(huge)} peak RSS (GB)", huge.peak_tree_rss / GB, 1.0),
        ]
    for edge in sorted({case.size for case in recipes}):
        baseline = next(case for case in recipes if case.case == IN_MEMORY and case.size == edge)
        pixseg = next(case for case in recipes if case.case == THREADS and case.size == edge)
        ratios += [
            Ratio(
                f"pixseg / in-memory scikit-learn wall time, {_px(pixseg)}",
                pixseg.wall_s / baseline.wall_s,
                RECIPE_TARGETS.get(edge),
            ),
            Ratio(
                f"in-memory scikit-learn {_px(baseline)} peak RSS / pixseg {_px(pixseg)} peak RSS",
                _rss_ratio(baseline, pixseg),
            ),
            Ratio(
                f"pixseg all-pixel inertia / scikit-learn full-fit inertia - 1, {_px(pixseg)}",
                pixseg.details["inertia"] / baseline.details["inertia"] - 1.0,
                0.01,
            ),
        ]
    return ratios


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
    info: dict[str, Any],
    *,
    scaling: list[CaseResult],
    floors: list[FloorComparison],
    recipes: list[CaseResult],
    fit_costs: list[FitCost],
    ratios: list[Ratio],
    kernels: list[KernelTiming],
) -> str:
    """The results as markdown: machine, scaling, I/O floor, seed recipes, fit cost, ratios, kernels."""
    lines = [*_header(info), "", f"## Scaling (pixseg segment, K={CLUSTERS})", "", *_case_table(scaling)]
    if floors:
        lines += ["", "## I/O floor", "", *_floor_table(floors)]
    lines += ["", "## Against the seed recipes", "", *_recipe_table(recipes)]
    if fit_costs:
        lines += ["", "## Fit cost vs sample size", "", *_fit_cost_table(fit_costs)]
    lines += ["", "## Ratios and targets", "", *_ratio_table(ratios)]
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


def _floor_table(floors: list[FloorComparison]) -> list[str]:
    rows = [
        "Floor: `python -m benchmarks.floor` decodes every TIFF tile (`tifffile.imread(aszarr=True)` + "
        "`da.from_zarr`, 1024^2 dask chunks) and stores channel 0 as a uint8 zarr with pixseg's label chunks and "
        "codec (1024^2, zstd level 1); no compute. Floor with pixseg's reader: the same copy, tiles read by "
        "`pixseg.io.tiff_segments` (`--reader pixseg`), which decodes on every dask thread where zarr 3 decodes "
        "an `aszarr` store on its one event-loop thread. pixseg: the full `segment` (sampling, fit, predict, "
        f"pyramid, statistics, previews), K={CLUSTERS}, threaded scheduler.",
        "",
        "| input tiles | image | floor s | floor peak RSS (MB) | floor, pixseg reader s | pixseg s | pixseg Mpx/s "
        "| pixseg peak RSS (MB) | pixseg / floor time | pixseg / floor with its reader |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for floor in floors:
        own = floor.floor_pixseg_reader
        own_s = "" if own is None else f"{own.wall_s:.1f}"
        own_ratio = "" if own is None else f"{floor.pixseg.wall_s / own.wall_s:.2f}"
        rows.append(
            f"| {floor.compression} | {_px(floor.pixseg)} | {floor.floor.wall_s:.1f} "
            f"| {floor.floor.peak_tree_rss / MB:.0f} | {own_s} | {floor.pixseg.wall_s:.1f} "
            f"| {floor.pixseg.mpx_per_s:.3g} | {floor.pixseg.peak_tree_rss / MB:.0f} | {floor.time_ratio:.2f} "
            f"| {own_ratio} |"
        )
    return rows


def _recipe_table(recipes: list[CaseResult]) -> list[str]:
    rows = [
        "Inertia: sum over all pixels of the squared distance to the centre of the pixel's label, in raw RGB "
        "units (0..255, unstandardised: the space the scikit-learn recipe fits in); pixseg's centroids are "
        "its model's feature-unit centroids x 255, and pixels are charged to the label pixseg wrote.",
        "",
        "| recipe | image | wall s | Mpx/s | peak RSS (MB) | fit s | iterations | inertia / scikit-learn "
        "| load at start |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in recipes:
        reference = next(run for run in recipes if run.case == IN_MEMORY and run.size == case.size)
        fit_s = case.details.get("fit_s")
        rows.append(
            f"| {case.case} | {_px(case)} | {case.wall_s:.1f} | {case.mpx_per_s:.3g} | {case.peak_tree_rss / MB:.0f} "
            f"| {'' if fit_s is None else f'{fit_s:.1f}'} | {case.details.get('n_iter', '')} "
            f"| {case.details['inertia'] / reference.details['inertia']:.4f} | {case.load_before:.2f} |"
        )
    return rows


def _fit_cost_table(fit_costs: list[FitCost]) -> list[str]:
    rows = [
        "fit_model s: `pixseg.model.fit_model` alone, in process, on a uniform sample; pixseg s: "
        "`segment --sample-size N` end to end.",
        "",
        "| sample size | image | fit_model s | iterations | pixseg s | pixseg peak RSS (MB) "
        "| all-pixel inertia / scikit-learn |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for cost in fit_costs:
        rows.append(
            f"| {cost.fit.sample_size} | {_px(cost.pixseg)} | {cost.fit.fit_s:.2f} | {cost.fit.n_iter} "
            f"| {cost.pixseg.wall_s:.1f} | {cost.pixseg.peak_tree_rss / MB:.0f} | {cost.inertia_ratio:.4f} |"
        )
    return rows


def _ratio_table(ratios: list[Ratio]) -> list[str]:
    rows = ["| ratio | value | target |", "|---|---:|---|"]
    for ratio in ratios:
        verdict = "" if ratio.passed is None else f"{ratio.target_text}: {'PASS' if ratio.passed else 'FAIL'}"
        rows.append(f"| {ratio.name} | {ratio.value:.3g} | {verdict} |")
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
