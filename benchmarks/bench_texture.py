"""The texture preset against plain colour channels: ``pixseg segment`` on one image, interleaved, in one run.

Run as ``python -m benchmarks.bench_texture --sizes 4096 8192 --repeats 2``. For each size it
writes the synthetic tissue image (512^2 zstd tiles, ``benchmarks.synthetic``) under
``--workdir`` (default ``benchmarks/_work``), then runs ``python -m benchmarks.stages`` (a
``pixseg segment`` subprocess with per-stage timings, K = 4) with each feature set of
``CONFIGS`` in turn, ``--repeats`` times, and prints one JSON object: every run's wall seconds
(interpreter start-up included), Mpx/s, label pass, sample seconds and peak RSS of the process
tree (psutil), the medians, the texture/channels throughput ratio and the load average before
and after. The issue's target: ``hed,texture --mask auto`` (or the brightfield preset, also run:
``hed,smooth``, ``--mask auto``) at least half the ``channels`` throughput, peak RSS under 1 GB.
``--plot PNG`` draws every configuration's median Mpx/s and peak RSS against image size.

``--count-decodes`` also runs the texture configuration once in this process, counting every
tile tifffile decodes: one decode per tile means the chunks' halos and the tissue mask read no
tile twice.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

from benchmarks.measure import run_measured
from benchmarks.report import CaseResult
from benchmarks.synthetic import TILE, ensure_synthetic_tiff

#: The compared configurations: name -> ``pixseg segment`` options.
CONFIGS = {
    "channels": ("--features", "channels"),
    "channels, mask auto": ("--features", "channels", "--mask", "auto"),
    "hed,texture, mask auto": ("--features", "hed,texture", "--mask", "auto"),
    "preset brightfield-he": ("--preset", "brightfield-he"),
}
BASELINE, TEXTURE = "channels", "hed,texture, mask auto"


def _run(source: Path, output: Path, options: Sequence[str], log_stem: Path, megapixels: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.stages", str(source), str(output), "--overwrite", "-k", "4", *options]
    measured = run_measured(command, cwd=Path(__file__).parent.parent, log_stem=log_stem)
    stages = json.loads(measured.stdout.strip().splitlines()[-1])
    return {
        "wall_s": measured.wall_s,
        "mpx_per_s": megapixels / measured.wall_s,
        "label_pass_s": stages["label_pass_s"],
        "sample_s": stages["sample_s"],
        "peak_mb": measured.peak_tree_rss / 1e6,
    }


def compare(workdir: Path, *, size: int, repeats: int) -> dict[str, Any]:
    """Run every configuration of ``CONFIGS`` in turn ``repeats`` times on the ``size``^2 image."""
    source = workdir / f"synthetic-{size}-zstd.tif"
    ensure_synthetic_tiff(source, size=size, distinct_tiles=64 if size > 8192 else None)
    megapixels = size * size / 1e6
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
    for repeat in range(repeats):
        for name, options in CONFIGS.items():
            log = workdir / f"texture-bench-{size}-{name.replace(', ', '-').replace(' ', '-')}-{repeat}"
            runs[name].append(_run(source, workdir / "texture-bench.zarr", options, log, megapixels))
    medians = {
        name: {key: statistics.median(run[key] for run in values) for key in values[0]} for name, values in runs.items()
    }
    return {
        "size": size,
        "runs": runs,
        "median": medians,
        "texture_over_channels_throughput": medians[TEXTURE]["mpx_per_s"] / medians[BASELINE]["mpx_per_s"],
        "load": {"before": load_before, "after": os.getloadavg()},
    }


def count_decodes(workdir: Path, *, size: int) -> dict[str, Any]:
    """Tiles tifffile decodes, per stage of ``benchmarks.stages.STAGES``, in one in-process
    ``hed,texture --mask auto`` segment of the ``size``^2 image."""
    import importlib

    import tifffile

    from benchmarks.stages import STAGES
    from pixseg.cli import main as pixseg_main

    source = workdir / f"synthetic-{size}-zstd.tif"
    ensure_synthetic_tiff(source, size=size, distinct_tiles=64 if size > 8192 else None)
    calls: Counter[str] = Counter()
    stage = ["other"]
    make_decode = tifffile.TiffPage.__dict__["decode"].func  # a cached property that returns the decoder

    def counted(page: Any) -> Callable[..., Any]:
        decode = make_decode(page)

        def counting(*args: Any, **kwargs: Any) -> Any:
            calls[stage[0]] += 1  # decodes run on dask's threads while the stage's function waits
            return decode(*args, **kwargs)

        return counting

    def in_stage(function: Callable[..., Any], name: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            outer, stage[0] = stage[0], name
            try:
                return function(*args, **kwargs)
            finally:
                stage[0] = outer

        return wrapper

    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(tempfile.TemporaryDirectory(dir=workdir))
        stack.enter_context(mock.patch.object(tifffile.TiffPage, "decode", property(counted)))
        for module_name, attribute, name in STAGES:
            module = importlib.import_module(module_name)
            stack.enter_context(mock.patch.object(module, attribute, in_stage(getattr(module, attribute), name)))
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))  # pixseg's report: stdout is this script's JSON
        code = pixseg_main(["segment", str(source), str(Path(scratch) / "out.zarr"), "-k", "4", *CONFIGS[TEXTURE]])
    if code != 0:
        raise RuntimeError(f"pixseg segment exited with {code}")
    return {"tiles": math.ceil(size / TILE) ** 2, "decodes": dict(calls)}


def main(argv: Sequence[str] | None = None) -> int:
    """Print the comparison as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_texture", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192], help="image edges (default 4096 8192)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each configuration (default 2)")
    parser.add_argument("--count-decodes", action="store_true", help="also count tile decodes (smallest size)")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).parent / "_work")
    parser.add_argument("--plot", type=Path, help="also plot Mpx/s and peak RSS against size to this PNG")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"sizes": [compare(args.workdir, size=size, repeats=args.repeats) for size in args.sizes]}
    if args.count_decodes:
        result["decodes"] = count_decodes(args.workdir, size=min(args.sizes))
    print(json.dumps(result, indent=1))
    if args.plot:
        plot_comparison(result["sizes"], args.plot)
    return 0


def plot_comparison(sizes: Sequence[dict[str, Any]], path: Path) -> None:
    """Plot each configuration's median Mpx/s and peak RSS against image size (see :func:`compare`)."""
    from benchmarks.plot import plot_scaling

    cases = [
        CaseResult(
            case=name,
            size=entry["size"],
            command=list(CONFIGS[name]),
            wall_s=median["wall_s"],
            peak_tree_rss=int(median["peak_mb"] * 1e6),
            max_processes=1,
            load_before=entry["load"]["before"][0],
        )
        for entry in sizes
        for name, median in entry["median"].items()
    ]
    plot_scaling(cases, path, title="pixseg segment -k 4: feature sets, throughput and memory vs image size")


if __name__ == "__main__":
    sys.exit(main())
