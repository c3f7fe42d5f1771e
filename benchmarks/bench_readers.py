"""Reading one SVS through tifffile (pixseg's default) and through OpenSlide: Mpx/s and their ratio.

Both read the same file into the same processing chunks on dask's threaded scheduler; each pass
decodes every pixel of level 0 once, the best of ``--repeats`` passes counts.

    .venv/bin/python -m benchmarks.bench_readers [SLIDE.svs] [--repeats 3]

(default slide: ``tests/data/cmu-1-small-region.svs``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from pixseg.io.readers import open_image
from pixseg.io.readers.openslide_slides import open_openslide
from pixseg.io.readers.selection import Selection

DEFAULT_SLIDE = Path(__file__).resolve().parent.parent / "tests" / "data" / "cmu-1-small-region.svs"


def best_seconds(array: da.Array, repeats: int) -> float:
    """The fastest of ``repeats`` full reads of ``array`` (a sum keeps the result small)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        array.sum(dtype=np.uint64).compute(scheduler="threads")
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    """Print tifffile's and OpenSlide's Mpx/s on the slide and OpenSlide's speed relative to tifffile."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", nargs="?", default=str(DEFAULT_SLIDE))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    image = open_image(args.slide)
    chunks = image.data.chunks[:2]
    tiff = image.data[..., :3]
    reader = open_openslide(args.slide, 0, 2**30, Selection())
    slide = da.from_array(reader, chunks=(*chunks, 4), asarray=False, lock=False, fancy=False)[..., :3]
    megapixels = image.shape[0] * image.shape[1] / 1e6
    with dask.config.set(num_workers=None):
        rates = {
            name: megapixels / best_seconds(array, args.repeats)
            for name, array in [("tifffile", tiff), ("openslide", slide)]
        }
    print(f"{args.slide}: {image.shape[1]}x{image.shape[0]} px, chunks {chunks[0][0]}x{chunks[1][0]}")
    for name, rate in rates.items():
        print(f"  {name:9s} {rate:7.1f} Mpx/s")
    print(f"  openslide / tifffile: {rates['openslide'] / rates['tifffile']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
