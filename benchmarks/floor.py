"""The I/O floor: decode every tile of an RGB TIFF and write a uint8 zarr, with no compute.

Run as ``python -m benchmarks.floor IMAGE.tif OUT.zarr``: it reads the TIFF lazily
(``tifffile.imread(aszarr=True)`` + ``da.from_zarr``) in 1024^2 chunks, keeps channel 0 (every
tile is still decoded whole) and stores it to a zarr v3 array of the same 2-D shape, chunks and
codec as pixseg's labels (1024^2, zstd level 1, empty chunks written), with the threaded
scheduler. It prints ``{"seconds": ...}`` on stdout.

``--reader pixseg`` reads the tiles through pixseg's own reader instead
(:class:`pixseg.io.tiff_segments.TiffSegmentReader` via ``open_image``, 1024^2 chunks), which
decodes on every dask thread; the rest is the same.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import tifffile
import zarr
from zarr.codecs import ZstdCodec

#: pixseg's processing chunk edge and its labels' zarr chunk edge.
CHUNK = 1024


def copy_channel(image_path: Path, output: Path, *, chunk: int = CHUNK, reader: str = "tifffile") -> None:
    """Store channel 0 of the TIFF at ``image_path`` as a uint8 zarr array at ``output``.

    Parameters
    ----------
    image_path : pathlib.Path
        A (Y, X, C) uint8 tiled TIFF.
    output : pathlib.Path
        Destination; must not exist. Chunks (``chunk``, ``chunk``), zstd level 1.
    chunk : int
        Chunk edge of the read and of the output (they align, so no chunk is written twice).
    reader : str
        ``"tifffile"`` (``aszarr`` store through zarr) or ``"pixseg"`` (``pixseg.io.readers.open_image``).

    Notes
    -----
    Computes (threaded scheduler).
    """
    if reader == "pixseg":
        from pixseg.io.readers import open_image

        _store_plane(open_image(str(image_path), chunk=chunk).data[..., 0], output, chunk)
        return
    with tifffile.imread(image_path, aszarr=True) as store:
        source = zarr.open_array(store, mode="r")
        _store_plane(da.from_zarr(source, chunks=(chunk, chunk, source.shape[2]))[..., 0], output, chunk)


def _store_plane(plane: da.Array, output: Path, chunk: int) -> None:
    target = zarr.create_array(
        output,
        shape=plane.shape,
        chunks=(chunk, chunk),
        dtype=np.uint8,
        fill_value=0,
        compressors=ZstdCodec(level=1),
        config={"write_empty_chunks": True},
    )
    with dask.config.set(scheduler="threads"):
        da.store(plane, target, lock=False)  # type: ignore[arg-type]  # zarr arrays are targets


def main(argv: Sequence[str] | None = None) -> int:
    """Copy the image named on the command line, print the seconds it took as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path, help="an RGB tiled TIFF")
    parser.add_argument("output", type=Path, help="the zarr array to create")
    parser.add_argument(
        "--reader", choices=("tifffile", "pixseg"), default="tifffile", help="how tiles are read (default %(default)s)"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    copy_channel(args.image, args.output, reader=args.reader)
    print(json.dumps({"seconds": time.perf_counter() - started}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
