"""``python -m benchmarks``: pixseg end to end vs the in-memory scikit-learn recipe, and predict kernels.

Steps:

1. Time nearest-centroid kernels on one core (``benchmarks.kernels``; ``--skip-kernels``).
2. Write synthetic stained-tissue RGB tiled TIFFs (512 x 512 tiles, one ``TiffWriter`` fed tile
   by tile) of ``--size`` and ``--baseline-size`` pixels a side under the work directory, or
   reuse them if they are already there.
3. Run pixseg once, unmeasured, on a one-tile image, so numba's caches are warm. Then run
   ``pixseg segment IMAGE OUT.zarr --overwrite --quiet`` (K=4) as a subprocess on both
   images with the threaded scheduler, and on the large one with ``--scheduler local
   --workers 2`` (``--skip-local``), measuring wall time and the peak RSS of the whole process
   tree. Outputs are deleted after each run.
4. Run the in-memory scikit-learn recipe (``benchmarks.inmemory``) on the baseline image,
   measured the same way.
5. Print a markdown report on stdout (progress goes to stderr); ``--json`` also saves it.

Example: ``python -m benchmarks --json benchmarks/_work/results.json`` (about 5 minutes on 2 cores).

Needs the ``bench`` extra (psutil, scikit-learn). Run from the repository root.
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.kernels import KernelTiming, measure_kernels
from benchmarks.measure import BenchmarkError, run_measured
from benchmarks.report import CaseResult, Ratio, compute_ratios, format_report, machine_info
from benchmarks.synthetic import TILE, ensure_synthetic_tiff

logger = logging.getLogger("benchmarks")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKDIR = Path(__file__).resolve().parent / "_work"
LOCAL_WORKERS = 2
COMPRESSIONS = ("zstd", "zlib", "jpeg", "none")


@dataclass(frozen=True)
class BenchmarkResults:
    """Everything one benchmark run measured."""

    machine: dict[str, Any]
    cases: list[CaseResult]
    ratios: list[Ratio]
    kernels: list[KernelTiming]

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict, derived figures (Mpx/s, pass/fail) included."""
        return {
            "machine": self.machine,
            "cases": [{**dataclasses.asdict(case), "mpx_per_s": case.mpx_per_s} for case in self.cases],
            "ratios": [{**dataclasses.asdict(ratio), "passed": ratio.passed} for ratio in self.ratios],
            "kernels": [dataclasses.asdict(timing) for timing in self.kernels],
        }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; returns the exit status (1 if a benchmarked command failed)."""
    args = _build_parser().parse_args(argv)
    _configure_logging()
    try:
        results = run_benchmarks(
            size=args.size,
            baseline_size=args.baseline_size,
            workdir=args.workdir,
            compression=args.compression,
            local=not args.skip_local,
            kernels=not args.skip_kernels,
        )
    except BenchmarkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_report(results.machine, results.cases, results.ratios, results.kernels))
    if args.json is not None:
        args.json.write_text(json.dumps(results.to_json(), indent=2) + "\n")
        logger.info("results saved to %s", args.json)
    return 0


def run_benchmarks(
    *, size: int, baseline_size: int, workdir: Path, compression: str, local: bool, kernels: bool
) -> BenchmarkResults:
    """Build the inputs, run every case and the kernel microbenchmark.

    Parameters
    ----------
    size, baseline_size : int
        Edges of the large and of the baseline image, in pixels.
    workdir : pathlib.Path
        Where inputs, logs and (temporary) outputs go; created if missing.
    compression : str
        TIFF compression of the inputs.
    local, kernels : bool
        Whether to run pixseg on a local cluster too, and the kernel microbenchmark.

    Returns
    -------
    BenchmarkResults

    Raises
    ------
    BenchmarkError
        If a benchmarked command fails.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    timings = _run_kernels() if kernels else []
    large = _input_image(workdir, size, compression)
    small = _input_image(workdir, baseline_size, compression)
    _warm_up(workdir, compression)
    pixseg_small = _measure_pixseg(small, baseline_size, workdir, scheduler="threads")
    in_memory = _measure_in_memory(small, baseline_size, workdir)
    pixseg_large = _measure_pixseg(large, size, workdir, scheduler="threads")
    cases = [pixseg_small, in_memory, pixseg_large]
    if local:
        cases.append(_measure_pixseg(large, size, workdir, scheduler="local"))
    ratios = compute_ratios(pixseg_large, pixseg_small, in_memory)
    return BenchmarkResults(machine=info, cases=cases, ratios=ratios, kernels=timings)


def _run_kernels() -> list[KernelTiming]:
    logger.info("timing nearest-centroid kernels")
    return measure_kernels()


def _warm_up(workdir: Path, compression: str) -> None:
    """Run pixseg once, unmeasured, on a one-tile image: fills numba's on-disk caches, so that
    no measured run pays for JIT compilation (seconds, and some 150 MB of RSS)."""
    logger.info("warm-up run (not measured)")
    _measure_pixseg(_input_image(workdir, TILE, compression), TILE, workdir, scheduler="threads")


def _input_image(workdir: Path, size: int, compression: str) -> Path:
    path = workdir / f"tissue-{size}-{compression}.tif"
    started = time.perf_counter()
    if ensure_synthetic_tiff(path, size=size, compression=compression):
        logger.info("wrote %s in %.1f s", path, time.perf_counter() - started)
    else:
        logger.info("reusing %s", path)
    return path


def _measure_pixseg(image: Path, size: int, workdir: Path, *, scheduler: str) -> CaseResult:
    output = workdir / f"{image.stem}-{scheduler}.zarr"
    command = [*_pixseg_command(), "segment", str(image), str(output), "--overwrite", "--quiet"]
    case = "pixseg threads"
    if scheduler == "local":
        command += ["--scheduler", "local", "--workers", str(LOCAL_WORKERS)]
        case = f"pixseg local x{LOCAL_WORKERS}"
    try:
        result, stdout = _measure(case, size, command, workdir)
    finally:
        shutil.rmtree(output, ignore_errors=True)
    return dataclasses.replace(result, details={"printed": stdout.strip()})


def _measure_in_memory(image: Path, size: int, workdir: Path) -> CaseResult:
    command = [sys.executable, "-m", "benchmarks.inmemory", str(image)]
    result, stdout = _measure("in-memory scikit-learn", size, command, workdir)
    return dataclasses.replace(result, details=json.loads(stdout))


def _measure(case: str, size: int, command: list[str], workdir: Path) -> tuple[CaseResult, str]:
    """Run one case; returns its result (without details) and what it printed."""
    logger.info("running %s on %d^2: %s", case, size, " ".join(command))
    load = os.getloadavg()[0]
    log_stem = workdir / f"{case.replace(' ', '-')}-{size}"
    measurement = run_measured(command, cwd=REPO_ROOT, log_stem=log_stem)
    logger.info("  %.1f s, peak RSS %.0f MB", measurement.wall_s, measurement.peak_tree_rss / 1e6)
    result = CaseResult(
        case=case,
        size=size,
        command=command,
        wall_s=measurement.wall_s,
        peak_tree_rss=measurement.peak_tree_rss,
        max_processes=measurement.max_processes,
        load_before=load,
    )
    return result, measurement.stdout


def _pixseg_command() -> list[str]:
    """The ``pixseg`` console script of this interpreter's environment, else ``python -m pipeline.cli``."""
    script = Path(sys.executable).with_name("pixseg")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pipeline.cli"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=_image_edge, default=16384, help="edge of the large image (default %(default)s)")
    parser.add_argument(
        "--baseline-size",
        type=_image_edge,
        default=4096,
        help="edge of the image the in-memory baseline and pixseg are compared on (default %(default)s)",
    )
    parser.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        default="zstd",
        help="TIFF compression of the inputs (default %(default)s)",
    )
    parser.add_argument("--skip-local", action="store_true", help=f"skip pixseg on a local cluster of {LOCAL_WORKERS}")
    parser.add_argument("--skip-kernels", action="store_true", help="skip the nearest-centroid kernel microbenchmark")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH")
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


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("benchmarks: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


if __name__ == "__main__":
    sys.exit(main())
