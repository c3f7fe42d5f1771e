"""Where one chunk of the label pass goes, on one core, against the I/O floor's work for it.

Run as ``python -m benchmarks.chunk_costs IMAGE.tif MODEL.json [--chunks N]`` (a model saved by
``pixseg segment IMAGE.tif OUT.zarr --save-model MODEL.json``, ``channels`` features on 8-bit RGB):
it times, in this process and one thread, each step of the ``channels`` label pass for ``N``
1024^2 chunks from the middle of the image, through pixseg's own functions, and prints one
markdown table of milliseconds per chunk (median over the chunks):

- ``decode``: the chunk read through pixseg's reader (what the floor reads too);
- ``colour table lookup``: :func:`pixseg.predict.lookup_labels` (the colour table itself is built
  once per run, timed apart);
- ``write level 0`` and ``write level 1``: the label chunk and its half-size share, stored as the
  floor stores its channel (zarr v3, zstd level 1);
- ``counts and colour sums``: :func:`pixseg.statistics.count_and_sum_colours`;
- ``nearest centroid, no table``: :func:`pixseg.predict.predict_chunk` on the chunk's features, made
  untimed (what images too small for the colour table run instead of the lookup).

The floor's work for a chunk is its decode and one write; the label pass adds the rest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from benchmarks.floor import CHUNK
from pixseg.features import compute_features
from pixseg.io.chunk_files import write_chunk
from pixseg.io.readers import open_image
from pixseg.model import SegmentationModel
from pixseg.predict import _kernel_arguments, colour_table_part, lookup_labels, predict_chunk
from pixseg.statistics import count_and_sum_colours

#: Colours per colour-table part (as the label pass builds it).
TABLE_STEP = 2**20


def chunk_costs(image_path: Path, model: SegmentationModel, *, n_chunks: int) -> dict[str, list[float]]:
    """Seconds of each step for each of ``n_chunks`` chunks (see the module docstring)."""
    image = open_image(str(image_path), chunk=CHUNK).data
    rows, cols = image.numblocks[:2]
    middle = [(rows // 2 + i // 4 - 1, cols // 2 + i % 4 - 2) for i in range(n_chunks)]
    blocks = [(min(max(r, 0), rows - 1), min(max(c, 0), cols - 1)) for r, c in middle]
    started = time.perf_counter()
    table = np.concatenate(
        [colour_table_part(model, start, start + TABLE_STEP) for start in range(0, 256**3, TABLE_STEP)]
    )
    costs: dict[str, list[float]] = {"colour table, once per run": [time.perf_counter() - started]}
    centroids, weights = _kernel_arguments(model)
    with tempfile.TemporaryDirectory() as work:
        level0, level1 = (
            zarr.create_array(
                Path(work) / name,
                shape=(image.shape[0] // scale, image.shape[1] // scale),
                chunks=(CHUNK // scale, CHUNK // scale),
                dtype=np.uint8,
                fill_value=0,
                compressors=ZstdCodec(level=1),
                config={"write_empty_chunks": True},
            )
            for name, scale in (("level0", 1), ("level1", 2))
        )
        for row, col in blocks:
            origin = (row * CHUNK, col * CHUNK)
            pixels = _timed(costs, "decode", np.asarray, image.blocks[row, col])
            labels = _timed(costs, "colour table lookup", lookup_labels, pixels, table, n_colour=3, has_alpha=False)
            _timed(costs, "write level 0", write_chunk, level0, labels, origin)
            half = np.ascontiguousarray(labels[::2, ::2])
            _timed(costs, "write level 1", write_chunk, level1, half, (origin[0] // 2, origin[1] // 2))
            _timed(costs, "counts and colour sums", count_and_sum_colours, labels, pixels, model.n_clusters + 1, 3)
            features = compute_features(pixels, model.feature_spec)
            _timed(costs, "nearest centroid, no table", predict_chunk, features, centroids, weights, model.label_dtype)
    return costs


def _timed(costs: dict[str, list[float]], step: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)``, its seconds appended to ``costs[step]``."""
    started = time.perf_counter()
    result = function(*args, **kwargs)
    costs.setdefault(step, []).append(time.perf_counter() - started)
    return result


def format_costs(costs: dict[str, list[float]]) -> str:
    """A markdown table: each step's median milliseconds per chunk, and the floor's and label pass's sums."""
    median = {step: 1000 * statistics.median(seconds) for step, seconds in costs.items()}
    floor = median["decode"] + median["write level 0"]
    label_pass = sum(median[step] for step in ("decode", "colour table lookup", "write level 0", "write level 1"))
    label_pass += median["counts and colour sums"]
    lines = ["| step | ms per 1024^2 chunk |", "|---|---:|"]
    lines += [f"| {step} | {value:.2f} |" for step, value in median.items()]
    lines.append(f"| **floor** (decode + write level 0) | {floor:.2f} |")
    ratio = label_pass / floor
    lines.append(f"| **label pass** (decode, lookup, both writes, counts and sums) | {label_pass:.2f} ({ratio:.2f}x) |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the per-chunk costs of the image and model named on the command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chunk_costs", description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path, help="an 8-bit RGB tiled TIFF")
    parser.add_argument("model", type=Path, help="a model saved by pixseg segment --save-model (channels features)")
    parser.add_argument("--chunks", type=int, default=16, help="chunks timed (default %(default)s)")
    options = parser.parse_args(argv)
    model = SegmentationModel.from_dict(json.loads(options.model.read_text()))
    with dask.config.set(scheduler="sync"):
        print(format_costs(chunk_costs(options.image, model, n_chunks=options.chunks)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
