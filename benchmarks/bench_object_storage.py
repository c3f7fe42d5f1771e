"""Reading over HTTP range requests and from a local S3 server against reading from local disk.

Run: ``python -m benchmarks.bench_object_storage --size 16384`` (the documented full run; the
default ``--size 4096`` is a quick one). Writes a tiled zlib RGB TIFF and its OME-Zarr copy
(``pixseg convert``) to a temporary directory and times a whole-image read,
``open_image(...).data.sum().compute()`` (threaded scheduler: decode on every core), of each from:

- local disk;
- ``http://127.0.0.1:PORT/...``: :mod:`benchmarks.range_server`, which answers a range request
  with one ``pread`` of the bytes asked for, read through fsspec's HTTP filesystem: pixseg's
  remote path at the cost of loopback HTTP;
- ``s3://bench/...`` on moto's S3 server (``--skip-moto`` leaves it out): moto's ``GetObject``
  copies the whole stored object for every request, ranged or not, so this row measures moto.

Each server runs in a process of its own on 127.0.0.1. The sources are interleaved within each
repeat; each gets its best of ``--repeats``. Prints one JSON line per format and source:
throughput, ratio to local disk, and the range of the 1-minute load average seen before its reads.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from benchmarks.synthetic import ensure_synthetic_tiff


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the S3 server did not start on port {port}")


def _write_tiff(path: str, size: int, image: str) -> None:
    """A ``size``^2 RGB tiled zlib TIFF written tile by tile: ``noise`` (256^2 tiles of uniform
    noise, which zlib cannot compress: the most bytes per pixel to move, the least decoding) or
    ``tissue`` (:mod:`benchmarks.synthetic`'s stained tissue, 512^2 tiles from a pool of 64)."""
    if image == "tissue":
        ensure_synthetic_tiff(Path(path), size=size, compression="zlib", distinct_tiles=64)
        return
    rng = np.random.default_rng(0)
    pattern = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)

    def tiles():
        for i in range(-(-size // 256)):
            for j in range(-(-size // 256)):
                yield np.roll(pattern, i * 7 + j * 13, axis=0)

    tifffile.imwrite(
        path, tiles(), shape=(size, size, 3), dtype=np.uint8, tile=(256, 256), compression="zlib", bigtiff=True
    )


def _read_seconds(path: str) -> float:
    """Seconds one read of the whole image at ``path`` takes (opened afresh: no cache carries over)."""
    from pixseg.io.readers import open_image

    image = open_image(path)
    started = time.perf_counter()
    image.data.sum(dtype=np.uint64).compute(scheduler="threads")
    return time.perf_counter() - started


def _start(command: list[str], port: int) -> subprocess.Popen[bytes]:
    """Start a server in a process of its own (in this one, its request handling would hold the
    GIL against the decoding threads being measured) and wait until it listens on ``port``."""
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(port)
    return server


def _moto_bucket(directory: str, tiff: str, store: str) -> subprocess.Popen[bytes]:
    """moto's S3 server holding ``tiff`` and ``store`` in bucket ``bench``, the environment pointing at it."""
    port = _free_port()
    server = _start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port)
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("bench")
    fs.put(tiff, "bench/slide.tif")
    fs.put(store, "bench/slide.zarr", recursive=True)
    return server


def _report(name: str, sources: list[tuple[str, str]], args: argparse.Namespace) -> None:
    """Time ``name`` from each source, the sources interleaved within each repeat (so a change in
    the machine's load affects all alike); print each source's best as one JSON line."""
    best = {source: float("inf") for source, _ in sources}
    loads: dict[str, list[float]] = {source: [] for source, _ in sources}
    for _ in range(args.repeats):
        for source, base in sources:
            loads[source].append(os.getloadavg()[0])
            path = f"{base}/{name}" if "://" in base else os.path.join(base, name)
            best[source] = min(best[source], _read_seconds(path))
    local = best[sources[0][0]]
    for source, seconds in best.items():
        row = {"format": "tiff" if name.endswith(".tif") else "ome-zarr", "source": source}
        row |= {"image": args.image, "size": args.size, "mpx_s": round(args.size**2 / seconds / 1e6, 1)}
        row |= {"ratio": round(local / seconds, 2)}
        row |= {"load_1min": [round(min(loads[source]), 1), round(max(loads[source]), 1)], "cpus": os.cpu_count()}
        print(json.dumps(row), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print one JSON line per format and source."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=4096, help="edge of the square test image (full run: 16384)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image", choices=("noise", "tissue"), default="noise", help="see _write_tiff")
    parser.add_argument("--skip-moto", action="store_true", help="leave out moto's S3 server (slow: see RESULTS.md)")
    args = parser.parse_args(argv)
    from pixseg.convert import convert

    servers: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory() as directory:
            tiff = os.path.join(directory, "slide.tif")
            _write_tiff(tiff, args.size, args.image)
            store = os.path.join(directory, "slide.zarr")
            convert(tiff, store, chunk=1024)
            port = _free_port()
            servers.append(_start([sys.executable, "-m", "benchmarks.range_server", directory, str(port)], port))
            sources = [("local disk", directory), ("HTTP range server", f"http://127.0.0.1:{port}")]
            if not args.skip_moto:
                servers.append(_moto_bucket(directory, tiff, store))
                sources.append(("moto S3 (copies the object per request)", "s3://bench"))
            for name in ("slide.tif", "slide.zarr"):
                _report(name, sources, args)
    finally:
        for server in servers:
            server.terminate()
            server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
