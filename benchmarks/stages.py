"""Where one ``pixseg segment`` run spends its time, stage by stage.

Run as ``python -m benchmarks.stages INPUT OUTPUT [segment options]``: it runs the ``segment``
command in this process, tuned as the console script tunes its own (:func:`pixseg.cluster.tune_process`;
without it glibc keeps freed chunk buffers and the peak RSS reads up to 300 MB high), with each
stage's entry point wrapped in a timer, and prints one JSON
object on stdout: ``startup_s`` (interpreter start-up, from the process's creation to this
module's start), ``imports_s`` (the segment command's imports: pixseg, dask.array, zarr, tifffile,
numba, pandas...), then ``open_s``, ``prepare_s`` (feature spec and mask), ``sample_s``,
``import_s`` (``import dask_ml.cluster``, paid by the first fit), ``fit_s`` (the fit without
that import), ``label_pass_s``, ``pyramid_s``, ``side_files_s``, ``other_s`` (the command's
own imports, planning, locks), ``total_s`` (the command), and the load average. The label pass
is the labels' time less the pyramid and the side files in it.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any
from unittest import mock

import psutil

from benchmarks.stage_timer import timing_stages

#: (module, attribute, stage): the functions timed, where the module calling them looks them up.
STAGES = (
    ("pixseg.runner", "open_input", "open"),
    ("pixseg.fitting", "prepare_fit", "prepare"),
    ("pixseg.fitting", "draw_sample", "sample"),
    ("pixseg.kmeans_fit", "_best_fit", "fit"),
    ("pixseg.runner", "write_labels", "labels"),
    ("pixseg.labelling", "write_pyramid", "pyramid"),
    ("pixseg.labelling", "write_side_files", "side_files"),
)


def _importing_first(function: Callable[..., Any], log: list[tuple[str, float]]) -> Callable[..., Any]:
    """``function``, timing ``import dask_ml.cluster`` apart on the first call that would pay for it."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if "dask_ml.cluster" not in sys.modules:
            started = time.perf_counter()
            import dask_ml.cluster  # noqa: F401

            log.append(("import", time.perf_counter() - started))
        return function(*args, **kwargs)

    return wrapper


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pixseg segment`` with ``argv`` and print the stage timings as JSON."""
    startup_s = time.time() - psutil.Process().create_time()
    importing = time.perf_counter()
    import pixseg.dispatch  # noqa: F401  # what the segment command imports (dask.array, zarr, tifffile, numba...)
    from pixseg import kmeans_fit as model
    from pixseg.cli import main as pixseg_main
    from pixseg.cluster import tune_process

    imports_s = time.perf_counter() - importing

    log: list[tuple[str, float]] = []
    with (
        tune_process(),  # the process the console script runs in (glibc settings, frozen GC, one OpenCV thread)
        timing_stages(STAGES, log),
        mock.patch.object(model, "map_fits", _importing_first(model.map_fits, log)),  # map_fits imports dask-ml
    ):
        started = time.perf_counter()
        code = pixseg_main(["segment", *(sys.argv[1:] if argv is None else argv)])
        elapsed = time.perf_counter() - started
    total: dict[str, float] = defaultdict(float)
    for stage, seconds in log:
        total[stage] += seconds
    total["fit"] = total.get("fit", 0.0) - total.get("import", 0.0)
    outside = elapsed - sum(total.get(stage, 0.0) for stage in ("open", "prepare", "sample", "fit", "import", "labels"))
    result = {
        "code": code,
        "startup_s": startup_s,
        "imports_s": imports_s,
        "other_s": outside,
        **{f"{stage}_s": total.get(stage, 0.0) for stage in ("open", "prepare", "sample", "import", "fit")},
        "label_pass_s": total.get("labels", 0.0) - total.get("pyramid", 0.0) - total.get("side_files", 0.0),
        "pyramid_s": total.get("pyramid", 0.0),
        "side_files_s": total.get("side_files", 0.0),
        "total_s": elapsed,
        "load": os.getloadavg(),
    }
    print(json.dumps(result))
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
