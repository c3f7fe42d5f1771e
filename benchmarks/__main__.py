"""``python -m benchmarks``: pixseg against the I/O floor and the seed recipes, scaling, fit cost, kernels.

Steps (inputs are synthetic stained-tissue RGB tiled TIFFs, 512 x 512 tiles, written by one
``TiffWriter`` tile by tile under the work directory, or reused if already there):

1. Time nearest-centroid kernels on one core (``benchmarks.kernels``; ``--skip-kernels``).
2. Warm numba's caches with one unmeasured pixseg run on a one-tile image.
3. I/O floor (``--floor-codecs``, default zlib,zstd,jpeg): on a ``--size`` image per codec, the
   no-compute copy (``benchmarks.floor``) and ``pixseg segment``, threaded.
4. Scaling: ``pixseg segment`` on ``--baseline-size``, ``--size`` (and 32768 with ``--large``)
   zstd images, threaded and on a local cluster of 2 workers (``--skip-local``); plotted to
   ``benchmarks/scaling.png`` (``--plot``) when matplotlib is installed.
5. Seed recipes on ``--baseline-size``/2 and ``--baseline-size``: in-memory scikit-learn
   (``benchmarks.inmemory``), dask-ml KMeans on the whole dask array (``benchmarks.naive``)
   and pixseg, with all-pixel inertia relative to the scikit-learn fit (``benchmarks.quality``).
6. Fit cost on ``--baseline-size`` for each of ``--sample-sizes``: ``fit_model`` alone, and
   ``pixseg segment --sample-size N`` with its all-pixel inertia ratio.
7. ``--huge`` (opt-in, long): a 100,000^2 zstd image written tile by tile (free disk is checked
   first) and segmented end to end.

Every command runs as a subprocess, measured for wall time and the peak RSS of its whole process
tree; identical commands run once. Outputs are deleted after each run. The markdown report goes
to stdout (progress to stderr); ``--json`` also saves it.

Example: ``python -m benchmarks --json benchmarks/_work/results.json`` (about 15 minutes on 2 cores,
plus about 1 minute per missing 16384^2 input).

Needs the ``bench`` extra (psutil, scikit-learn; matplotlib for the plot). Run from the repository root.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import CLUSTERS
from benchmarks.fitcost import FitTiming, time_fit
from benchmarks.kernels import KernelTiming, measure_kernels
from benchmarks.measure import BenchmarkError, run_measured
from benchmarks.quality import pixseg_inertia
from benchmarks.report import (
    DASK_ML,
    FLOOR,
    FLOOR_PIXSEG_READER,
    IN_MEMORY,
    LOCAL,
    LOCAL_ONE,
    THREADS,
    CaseResult,
    FitCost,
    FloorComparison,
    Ratio,
    compute_ratios,
    format_report,
    machine_info,
)
from benchmarks.synthetic import TILE, ensure_synthetic_tiff

logger = logging.getLogger("benchmarks")

#: Maps what a measured command printed on stdout to its ``details``.
StdoutParser = Callable[[str], dict[str, Any]]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKDIR = Path(__file__).resolve().parent / "_work"
DEFAULT_PLOT = Path(__file__).resolve().parent / "scaling.png"
LOCAL_WORKERS = 2
COMPRESSIONS = ("zstd", "zlib", "jpeg", "none")
FLOOR_CODECS = ("zlib", "zstd", "jpeg")
SAMPLE_SIZES = (50_000, 200_000, 1_000_000)
LARGE_SIZE = 32768
HUGE_SIZE = 100_000
#: The ``--huge`` input lays out this many rendered tiles (rendering all 38,000 would take ~40 min).
HUGE_DISTINCT_TILES = 256
#: Disk a ``--huge`` run needs, per pixel: the RGB input (zstd on the noisy synthetic field keeps ~83% of
#: its 3 raw bytes) and pixseg's uint8 label pyramid (at most ~1.34 bytes), rounded up.
HUGE_BYTES_PER_PIXEL = 4.0


@dataclass(frozen=True)
class BenchmarkResults:
    """Everything one benchmark run measured."""

    machine: dict[str, Any]
    scaling: list[CaseResult]
    floors: list[FloorComparison]
    recipes: list[CaseResult]
    fit_costs: list[FitCost]
    ratios: list[Ratio]
    kernels: list[KernelTiming]
    huge: CaseResult | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict, derived figures (Mpx/s, ratios, pass/fail) included."""
        return {
            "machine": self.machine,
            "scaling": [_case_json(case) for case in self.scaling],
            "floors": [
                {
                    "compression": floor.compression,
                    "floor": _case_json(floor.floor),
                    "pixseg": _case_json(floor.pixseg),
                    "floor_pixseg_reader": None
                    if floor.floor_pixseg_reader is None
                    else _case_json(floor.floor_pixseg_reader),
                    "time_ratio": floor.time_ratio,
                }
                for floor in self.floors
            ],
            "recipes": [_case_json(case) for case in self.recipes],
            "fit_costs": [
                {
                    "fit": dataclasses.asdict(cost.fit),
                    "pixseg": _case_json(cost.pixseg),
                    "reference_inertia": cost.reference_inertia,
                    "inertia_ratio": cost.inertia_ratio,
                }
                for cost in self.fit_costs
            ],
            "ratios": [{**dataclasses.asdict(ratio), "passed": ratio.passed} for ratio in self.ratios],
            "kernels": [dataclasses.asdict(timing) for timing in self.kernels],
            "huge": None if self.huge is None else _case_json(self.huge),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchmarkResults:
        """Results saved by :meth:`to_json` (ratios are derived again, with this version's targets)."""
        scaling = [_case(case) for case in data["scaling"]]
        floors = [
            FloorComparison(
                compression=floor["compression"],
                floor=_case(floor["floor"]),
                pixseg=_case(floor["pixseg"]),
                floor_pixseg_reader=None
                if floor.get("floor_pixseg_reader") is None
                else _case(floor["floor_pixseg_reader"]),
            )
            for floor in data["floors"]
        ]
        recipes = [_case(case) for case in data["recipes"]]
        huge = None if data.get("huge") is None else _case(data["huge"])
        return cls(
            machine=data["machine"],
            scaling=scaling,
            floors=floors,
            recipes=recipes,
            fit_costs=[
                FitCost(
                    fit=FitTiming(**cost["fit"]),
                    pixseg=_case(cost["pixseg"]),
                    reference_inertia=cost["reference_inertia"],
                )
                for cost in data["fit_costs"]
            ],
            ratios=compute_ratios(scaling, recipes, floors, huge),
            kernels=[KernelTiming(**timing) for timing in data["kernels"]],
            huge=huge,
        )

    def to_markdown(self) -> str:
        """The markdown report (the ``--huge`` run, when there is one, ends the scaling table)."""
        return format_report(
            self.machine,
            scaling=self.scaling if self.huge is None else [*self.scaling, self.huge],
            floors=self.floors,
            recipes=self.recipes,
            fit_costs=self.fit_costs,
            ratios=self.ratios,
            kernels=self.kernels,
        )


@dataclass(frozen=True)
class Options:
    """What to run (the parsed command line, less output paths)."""

    size: int
    baseline_size: int
    compression: str
    floor_codecs: tuple[str, ...]
    floor_sizes: tuple[int, ...]
    recipe_sizes: tuple[int, ...]
    naive: bool
    sample_sizes: tuple[int, ...]
    local: bool
    kernels: bool
    large: bool
    huge: bool


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; returns the exit status (1 if a benchmarked command failed)."""
    args = _build_parser().parse_args(argv)
    _configure_logging()
    if args.report is not None:  # render a saved run again
        print(BenchmarkResults.from_json(json.loads(args.report.read_text())).to_markdown())
        return 0
    options = Options(
        size=args.size,
        baseline_size=args.baseline_size,
        compression=args.compression,
        floor_codecs=args.floor_codecs,
        floor_sizes=args.floor_sizes or (args.size,),
        recipe_sizes=args.recipe_sizes or (max(TILE, args.baseline_size // 2), args.baseline_size),
        naive=not args.skip_naive,
        sample_sizes=args.sample_sizes,
        local=not args.skip_local,
        kernels=not args.skip_kernels,
        large=args.large,
        huge=args.huge,
    )
    try:
        results = run_benchmarks(options, workdir=args.workdir)
    except BenchmarkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(results.to_markdown())
    if args.json is not None:
        args.json.write_text(json.dumps(results.to_json(), indent=2) + "\n")
        logger.info("results saved to %s", args.json)
    if args.plot is not None:
        _plot(results.scaling, args.plot)
    return 0


def run_benchmarks(options: Options, *, workdir: Path) -> BenchmarkResults:
    """Build the inputs, run every case and the kernel microbenchmark.

    Parameters
    ----------
    options : Options
        What to run.
    workdir : pathlib.Path
        Where inputs, logs and (temporary) outputs go; created if missing.

    Returns
    -------
    BenchmarkResults

    Raises
    ------
    BenchmarkError
        If a benchmarked command fails, or ``--huge`` lacks disk space.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    timings = measure_kernels() if options.kernels else []
    runner = _Runner(workdir)
    runner.pixseg(TILE, options.compression)  # warm-up: fills numba's caches; its result is not reported
    floors = [_floor_comparison(runner, size, codec) for size in options.floor_sizes for codec in options.floor_codecs]
    scaling = _scaling(runner, options)
    recipes = _recipes(runner, options.recipe_sizes, naive=options.naive)
    fit_costs = _fit_costs(runner, options.baseline_size, options.sample_sizes, recipes)
    huge = _huge(runner, workdir) if options.huge else None
    return BenchmarkResults(
        machine=info,
        scaling=scaling,
        floors=floors,
        recipes=recipes,
        fit_costs=fit_costs,
        ratios=compute_ratios(scaling, recipes, floors, huge),
        kernels=timings,
        huge=huge,
    )


class _Runner:
    """Runs measured commands on synthetic inputs, each distinct command once."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._done: dict[tuple[str, ...], CaseResult] = {}

    def image_path(self, size: int, compression: str) -> Path:
        """Where the synthetic input of ``size`` and ``compression`` lives."""
        pooled = f"-pool{HUGE_DISTINCT_TILES}" if size >= HUGE_SIZE else ""
        return self.workdir / f"tissue-{size}-{compression}{pooled}.tif"

    def image(self, size: int, compression: str) -> Path:
        """The synthetic input of ``size`` and ``compression``, written if missing (from a pool of
        ``HUGE_DISTINCT_TILES`` rendered tiles for ``HUGE_SIZE``)."""
        path = self.image_path(size, compression)
        distinct = HUGE_DISTINCT_TILES if size >= HUGE_SIZE else None
        started = time.perf_counter()
        if ensure_synthetic_tiff(path, size=size, compression=compression, distinct_tiles=distinct):
            logger.info("wrote %s in %.1f s", path, time.perf_counter() - started)
        return path

    def pixseg(
        self,
        size: int,
        compression: str,
        *,
        scheduler: str = "threads",
        workers: int = LOCAL_WORKERS,
        sample_size: int | None = None,
    ) -> CaseResult:
        """``pixseg segment`` (K = ``CLUSTERS``) on an input, threaded or on a local cluster of
        ``workers``; with the threaded scheduler, its all-pixel inertia too (in ``details``) for
        images up to 8192^2."""
        image = self.image(size, compression)
        name = scheduler if scheduler == "threads" else f"{scheduler}{workers}"
        output = self.workdir / f"{image.stem}-{name}-{sample_size or 'default'}.zarr"
        model = output.with_suffix(".model.json")
        command = [*_pixseg_command(), "segment", str(image), str(output), "--overwrite", "--quiet"]
        command += ["--clusters", str(CLUSTERS), "--save-model", str(model)]
        if sample_size is not None:
            command += ["--sample-size", str(sample_size)]
        if scheduler == "local":
            command += ["--scheduler", "local", "--workers", str(workers)]
        case = THREADS if scheduler == "threads" else LOCAL if workers == LOCAL_WORKERS else LOCAL_ONE
        try:
            result = self.run(case, size, command, parse=lambda stdout: {"printed": stdout.strip()}, input_path=image)
            if scheduler == "threads" and size <= 8192 and "inertia" not in result.details:
                result = dataclasses.replace(
                    result, details={**result.details, "inertia": pixseg_inertia(image, output, model)}
                )
                self._done[tuple(command)] = result
        finally:
            _remove_outputs(output)
        return result

    def module(self, case: str, module: str, size: int, compression: str, *extra: str) -> CaseResult:
        """``python -m benchmarks.MODULE IMAGE [EXTRA...]``; its stdout is one JSON object (the details)."""
        image = self.image(size, compression)
        command = [sys.executable, "-m", f"benchmarks.{module}", str(image), *extra]
        return self.run(case, size, command, parse=json.loads, input_path=image)

    def run(self, case: str, size: int, command: list[str], *, parse: StdoutParser, input_path: Path) -> CaseResult:
        """Run ``command`` measured, unless it already ran; ``parse`` maps its stdout to ``details``;
        ``input_path`` (the command's input) is read once first, unmeasured (see :func:`warm_page_cache`)."""
        key = tuple(command)
        if key not in self._done:
            self._done[key] = self._measure(case, size, command, parse, input_path)
        return self._done[key]

    def _measure(self, case: str, size: int, command: list[str], parse: StdoutParser, input_path: Path) -> CaseResult:
        logger.info("running %s on %d^2: %s", case, size, " ".join(command))
        warm_page_cache(input_path)
        load = os.getloadavg()[0]
        log_stem = self.workdir / f"{case.replace(' ', '-').replace('/', '-')}-{size}"
        measurement = run_measured(command, cwd=REPO_ROOT, log_stem=log_stem)
        logger.info("  %.1f s, peak RSS %.0f MB", measurement.wall_s, measurement.peak_tree_rss / 1e6)
        return CaseResult(
            case=case,
            size=size,
            command=command,
            wall_s=measurement.wall_s,
            peak_tree_rss=measurement.peak_tree_rss,
            max_processes=measurement.max_processes,
            load_before=load,
            details=parse(measurement.stdout),
        )


def warm_page_cache(path: Path, *, block: int = 1 << 24) -> None:
    """Read ``path`` once, so that every measured command starts with its input in the page cache.

    Without it a command's time depended on what ran before it: the in-memory recipe at 8192^2 (9 GB)
    pushed the next command's input out of the cache, and that command read it from disk (pixseg at
    8192^2: 7.9 s after the recipe, 5.5-5.7 s with its input cached). An input larger than half the
    available memory is left alone: it cannot stay cached, and every command reads it from disk alike.
    """
    import psutil

    if path.stat().st_size > psutil.virtual_memory().available // 2:
        return
    with open(path, "rb", buffering=0) as handle:
        while handle.read(block):
            pass


def _floor_comparison(runner: _Runner, size: int, compression: str) -> FloorComparison:
    output = runner.workdir / f"floor-{size}-{compression}.zarr"
    floors = []
    for case, reader in ((FLOOR, "tifffile"), (FLOOR_PIXSEG_READER, "pixseg")):
        shutil.rmtree(output, ignore_errors=True)
        try:
            floors.append(runner.module(case, "floor", size, compression, str(output), "--reader", reader))
        finally:
            shutil.rmtree(output, ignore_errors=True)
    return FloorComparison(
        compression=compression, floor=floors[0], pixseg=runner.pixseg(size, compression), floor_pixseg_reader=floors[1]
    )


def _scaling(runner: _Runner, options: Options) -> list[CaseResult]:
    sizes = sorted({options.baseline_size, options.size, *([LARGE_SIZE] if options.large else [])})
    cases = []
    for size in sizes:
        cases.append(runner.pixseg(size, options.compression))
        if options.local:
            cases.append(runner.pixseg(size, options.compression, scheduler="local", workers=LOCAL_WORKERS))
            cases.append(runner.pixseg(size, options.compression, scheduler="local", workers=1))
    return cases


def _recipes(runner: _Runner, sizes: Sequence[int], *, naive: bool) -> list[CaseResult]:
    """In-memory scikit-learn, dask-ml on the dask array (unless not ``naive``) and pixseg, at each size."""
    cases = []
    for size in sizes:
        cases.append(runner.module(IN_MEMORY, "inmemory", size, "zstd"))
        if naive:
            cases.append(runner.module(DASK_ML, "naive", size, "zstd"))
        cases.append(runner.pixseg(size, "zstd"))
    return cases


def _fit_costs(runner: _Runner, size: int, sample_sizes: Sequence[int], recipes: list[CaseResult]) -> list[FitCost]:
    reference = next(case for case in recipes if case.case == IN_MEMORY and case.size == size)
    costs = []
    for sample_size in sample_sizes:
        logger.info("timing fit_model on %d pixels of %d^2", sample_size, size)
        fit = time_fit(runner.image(size, "zstd"), min(sample_size, size * size))
        run = runner.pixseg(size, "zstd", sample_size=sample_size)
        costs.append(FitCost(fit=fit, pixseg=run, reference_inertia=reference.details["inertia"]))
    return costs


def _huge(runner: _Runner, workdir: Path) -> CaseResult:
    """Segment a ``HUGE_SIZE``^2 image end to end (writing it first, after checking free disk)."""
    need = HUGE_SIZE * HUGE_SIZE * HUGE_BYTES_PER_PIXEL
    free = shutil.disk_usage(workdir).free
    logger.info("--huge needs about %.0f GB of disk under %s; %.0f GB free", need / 1e9, workdir, free / 1e9)
    if free < need and not runner.image_path(HUGE_SIZE, "zstd").is_file():
        raise BenchmarkError(
            f"--huge needs about {need / 1e9:.0f} GB free under {str(workdir)!r}, found {free / 1e9:.0f} GB"
        )
    return runner.pixseg(HUGE_SIZE, "zstd")


def _remove_outputs(output: Path) -> None:
    """Delete a pixseg output, its model file and its side files (``OUTPUT.*``)."""
    shutil.rmtree(output, ignore_errors=True)
    for side in output.parent.glob(f"{output.name}.*"):
        side.unlink(missing_ok=True)
    output.with_suffix(".model.json").unlink(missing_ok=True)


def _plot(scaling: list[CaseResult], path: Path) -> None:
    try:
        from benchmarks.plot import plot_scaling
    except ModuleNotFoundError:
        logger.warning("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    plot_scaling(scaling, path)
    logger.info("plot saved to %s", path)


def _case(data: dict[str, Any]) -> CaseResult:
    """A :class:`CaseResult` from its :func:`_case_json` form."""
    fields = {field.name for field in dataclasses.fields(CaseResult)}
    return CaseResult(**{key: value for key, value in data.items() if key in fields})


def _case_json(case: CaseResult) -> dict[str, Any]:
    return {**dataclasses.asdict(case), "mpx_per_s": case.mpx_per_s}


def _pixseg_command() -> list[str]:
    """The ``pixseg`` console script of this interpreter's environment, else ``python -m pixseg.cli``."""
    script = Path(sys.executable).with_name("pixseg")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pixseg.cli"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size",
        type=_image_edge,
        default=16384,
        help="edge of the large image and of the I/O floor inputs (default %(default)s)",
    )
    parser.add_argument(
        "--baseline-size",
        type=_image_edge,
        default=4096,
        help="edge of the image the seed recipes, fit cost and pixseg are compared on; the recipes also run "
        "at half of it (default %(default)s)",
    )
    parser.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        default="zstd",
        help="TIFF compression of the scaling inputs (default %(default)s)",
    )
    parser.add_argument(
        "--floor-codecs",
        type=_codecs,
        default=FLOOR_CODECS,
        metavar="C1,C2",
        help=f"TIFF compressions of the I/O floor inputs, '' for none (default {','.join(FLOOR_CODECS)})",
    )
    parser.add_argument(
        "--floor-sizes",
        type=_edges,
        default=(),
        metavar="N1,N2",
        help="image edges of the I/O floor comparison (default: --size)",
    )
    parser.add_argument(
        "--recipe-sizes",
        type=_edges,
        default=(),
        metavar="N1,N2",
        help="image edges of the seed-recipe comparison (default: half of --baseline-size, and --baseline-size)",
    )
    parser.add_argument(
        "--skip-naive",
        action="store_true",
        help="skip dask-ml KMeans on the whole dask array in the recipe comparison (about 2 minutes at 4096^2)",
    )
    parser.add_argument(
        "--sample-sizes",
        type=_sample_sizes,
        default=SAMPLE_SIZES,
        metavar="N1,N2",
        help=f"fit-cost sample sizes, '' for none (default {','.join(map(str, SAMPLE_SIZES))})",
    )
    parser.add_argument("--large", action="store_true", help=f"also scale to {LARGE_SIZE}^2")
    parser.add_argument(
        "--huge",
        action="store_true",
        help=f"also segment a {HUGE_SIZE:,}^2 image (needs about {HUGE_SIZE**2 * HUGE_BYTES_PER_PIXEL / 1e9:.0f} GB "
        "of disk, checked first; long)",
    )
    parser.add_argument("--skip-local", action="store_true", help=f"skip pixseg on a local cluster of {LOCAL_WORKERS}")
    parser.add_argument("--skip-kernels", action="store_true", help="skip the nearest-centroid kernel microbenchmark")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument(
        "--report", type=Path, metavar="JSON", help="run nothing: print the report of results saved with --json"
    )
    parser.add_argument(
        "--plot", type=Path, metavar="PNG", default=DEFAULT_PLOT, help="scaling plot (default benchmarks/scaling.png)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        metavar="DIR",
        default=DEFAULT_WORKDIR,
        help="inputs (kept and reused), logs and temporary outputs (default benchmarks/_work)",
    )
    return parser


def _image_edge(text: str) -> int:
    try:
        edge = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected an integer number of pixels, got {text!r}") from err
    if edge < TILE:
        raise argparse.ArgumentTypeError(f"must be at least {TILE} pixels, got {edge!r}")
    return edge


def _edges(text: str) -> tuple[int, ...]:
    return tuple(_image_edge(part) for part in text.split(",") if part)


def _codecs(text: str) -> tuple[str, ...]:
    codecs = tuple(name for name in text.split(",") if name)
    unknown = [name for name in codecs if name not in COMPRESSIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"expected names from {', '.join(COMPRESSIONS)}, got {unknown!r}")
    return codecs


def _sample_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"sample sizes must be positive, got {text!r}")
    return sizes


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("benchmarks: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


if __name__ == "__main__":
    sys.exit(main())
