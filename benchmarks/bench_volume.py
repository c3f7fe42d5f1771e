"""A volume's segment end to end: Mvox/s and peak memory as the volume grows (flat memory), and
in-memory scikit-learn where it fits.

Each size is a uint16 phantom (nested boxes of four intensities in noise) written as an
uncompressed NIfTI (memory-mapped by pixseg), then segmented with ``pixseg segment VOL.nii
OUT.zarr --clusters 4`` in a subprocess whose process tree's peak RSS is measured. The issue's
target is 1024 x 1024 x 512 (0.5 Gvox, 1 GiB of uint16) against 256^3.

    .venv/bin/python -m benchmarks.bench_volume [--sizes 256,256,256 512,512,256 ...] [--sklearn]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.measure import run_measured

WORKDIR = Path(__file__).resolve().parent / "_work" / "volumes"


def write_phantom(path: Path, shape: tuple[int, int, int], *, seed: int = 0) -> None:
    """A (Z, Y, X) uint16 phantom as a NIfTI file, written slab by slab through a memory map."""
    import nibabel as nib

    depth, height, width = shape
    header = nib.Nifti1Header()
    header.set_data_shape((width, height, depth))
    header.set_data_dtype(np.uint16)
    header.set_zooms((0.5, 0.5, 1.0))
    header.set_data_offset(352)
    with open(path, "wb") as handle:
        header.write_to(handle)
        handle.write(b"\0" * (352 - handle.tell()))
        handle.truncate(352 + depth * height * width * 2)
    voxels = np.memmap(path, dtype=np.uint16, mode="r+", offset=352, shape=(width, height, depth), order="F")
    rng = np.random.default_rng(seed)
    y, x = np.indices((height, width))
    for z in range(depth):
        level = np.full((height, width), 200.0)
        for step, value in enumerate((800.0, 1600.0, 2400.0), start=1):
            inset = [step * n // 8 for n in (depth, height, width)]
            if inset[0] <= z < depth - inset[0]:
                inside = (inset[1] <= y) & (y < height - inset[1]) & (inset[2] <= x) & (x < width - inset[2])
                level[inside] = value
        voxels[:, :, z] = (level + rng.normal(0.0, 60.0, level.shape)).clip(0, 65535).astype(np.uint16).T
    voxels.flush()


def sklearn_seconds(path: Path) -> float:
    """Seconds for scikit-learn's KMeans(4) on every voxel in memory (load included)."""
    import nibabel as nib
    from sklearn.cluster import KMeans

    start = time.perf_counter()
    voxels = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32).reshape(-1, 1)
    KMeans(n_clusters=4, n_init=1, random_state=0).fit_predict(voxels)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Print, per size: voxels, seconds, Mvox/s and peak RSS of pixseg (and scikit-learn's seconds)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["256,256,256", "512,512,256"], help="Z,Y,X of each run")
    parser.add_argument("--sklearn", action="store_true", help="also time in-memory scikit-learn KMeans")
    parser.add_argument("--workdir", type=Path, default=WORKDIR)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"{'Z x Y x X':>16} {'Mvox':>8} {'s':>8} {'Mvox/s':>8} {'peak MiB':>9}"
        + ("  sklearn s" if args.sklearn else "")
    )
    for size in args.sizes:
        shape = tuple(int(n) for n in size.split(","))
        source = args.workdir / f"phantom-{'x'.join(map(str, shape))}.nii"
        if not source.exists():
            write_phantom(source, shape)  # type: ignore[arg-type]
        out = args.workdir / f"{source.stem}.zarr"
        shutil.rmtree(out, ignore_errors=True)
        pixseg = str(Path(sys.executable).with_name("pixseg"))
        command = [pixseg, "segment", str(source), str(out), "--clusters", "4", "--quiet"]
        run = run_measured(command, cwd=args.workdir, log_stem=args.workdir / source.stem)
        mvox = np.prod(shape) / 1e6
        seconds, peak = run.wall_s, run.peak_tree_rss / 2**20
        line = f"{'x'.join(map(str, shape)):>16} {mvox:8.1f} {seconds:8.1f} {mvox / seconds:8.2f} {peak:9.0f}"
        if args.sklearn:
            line += f"  {sklearn_seconds(source):9.1f}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
