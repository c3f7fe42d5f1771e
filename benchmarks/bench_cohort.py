"""Per-image overhead of a cohort batch: ``pixseg run`` over N images with one ``fit-once`` model.

Run as ``python -m benchmarks.bench_cohort --images 20 --size 2048`` (images and outputs under
``--workdir``, default ``benchmarks/_work``). It writes N synthetic tissue TIFFs (seeds 0..N-1),
a config that fits one cohort model on them, and runs the batch in this process with the
batch's stages timed. Each image's time (the batch's own record of it) is split into its
*pixel pass* (the one ``compute`` that decodes, predicts and writes its level 0) and the rest:
the *per-image overhead* (opening, planning, locks, model load, pyramid, side files, state
files). Printed as one JSON object: the fit's seconds, the median and mean per image of
``image_s``, ``pixel_s`` and ``overhead_s`` (the first image apart: it pays one-time costs such
as compiling kernels), a breakdown of the overhead by stage, and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.stage_timer import timing_stages
from benchmarks.synthetic import ensure_synthetic_tiff

#: (module, attribute, stage): what is timed inside each image, where the caller looks it up.
STAGES = (
    ("pixseg.runner", "load_model", "load_model"),
    ("pixseg.runner", "open_input", "open"),
    ("pixseg.runner", "plan_output", "plan"),
    ("pixseg.runner", "model_mask", "mask"),
    ("pixseg.labelling", "compute", "pixels"),
    ("pixseg.labelling", "write_pyramid", "pyramid"),
    ("pixseg.labelling", "finalise_label_zarr", "finalise"),
    ("pixseg.labelling", "write_side_files", "side_files"),
    ("pixseg.batch", "write_state", "state"),
    ("pixseg.batch", "image_fingerprint", "fingerprint"),
)

CONFIG = """\
inputs:
{inputs}
output:
  directory: {directory}
  name: "{{stem}}-labels"
  format: zarr
features: [channels]
clusters: 4
seed: 0
model: fit-once
compute:
  scheduler: threads
"""


def _per_image(log: list[tuple[str, float]]) -> list[dict[str, float]]:
    """Split the stage log into one dict of stage seconds per image (each image starts at its fingerprint)."""
    images: list[dict[str, float]] = []
    for stage, seconds in log:
        if stage == "fingerprint":
            images.append(defaultdict(float))
        if images:
            images[-1][stage] += seconds
    return images


def run_cohort(workdir: Path, *, n_images: int, size: int) -> dict[str, Any]:
    """Write the images and config under ``workdir``, run the batch once, and return the timings."""
    from pixseg.batch import run_batch
    from pixseg.config import load_config

    images = workdir / f"cohort-{size}"
    images.mkdir(parents=True, exist_ok=True)
    for seed in range(n_images):
        ensure_synthetic_tiff(images / f"tissue-{seed:03d}.tif", size=size, seed=seed)
    run = workdir / f"cohort-{size}-run-{n_images}"
    shutil.rmtree(run, ignore_errors=True)  # a batch skips the images it has done: start afresh
    run.mkdir()
    config_path = run / "config.yaml"
    inputs = "\n".join(f"  - {images / f'tissue-{seed:03d}.tif'}" for seed in range(n_images))
    config_path.write_text(CONFIG.format(inputs=inputs, directory=run / "out"))
    config = load_config(config_path)
    log: list[tuple[str, float]] = []
    load_before = os.getloadavg()
    with timing_stages(STAGES, log):
        started = time.perf_counter()
        result = run_batch(config)
        wall = time.perf_counter() - started
    if result.count("done") != n_images:
        raise RuntimeError(f"batch did not label every image: {[o.error for o in result.failed]}")
    stages = _per_image(log)
    rows = [
        {"image_s": outcome.seconds, "pixel_s": stage["pixels"], "overhead_s": outcome.seconds - stage["pixels"]}
        for outcome, stage in zip(result.outcomes, stages, strict=True)
    ]
    later, later_stages = rows[1:] or rows, stages[1:] or stages
    return {
        "images": n_images,
        "size": size,
        "wall_s": wall,
        "labelling_s": sum(row["image_s"] for row in rows),
        "fit_s": wall - sum(row["image_s"] for row in rows),
        "first_image": rows[0],
        **{f"median_{key}": statistics.median(row[key] for row in later) for key in rows[0]},
        **{f"mean_{key}": statistics.fmean(row[key] for row in later) for key in rows[0]},
        "overhead_by_stage_s": {
            stage: statistics.median(image.get(stage, 0.0) for image in later_stages)
            for _, _, stage in STAGES
            if stage != "pixels"
        },
        "load": {"before": load_before, "after": os.getloadavg()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the cohort benchmark and print its JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10, help="images in the cohort (default 10)")
    parser.add_argument("--size", type=int, default=2048, help="edge of each image in pixels (default 2048)")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).parent / "_work")
    args = parser.parse_args(argv)
    print(json.dumps(run_cohort(args.workdir, n_images=args.images, size=args.size), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
