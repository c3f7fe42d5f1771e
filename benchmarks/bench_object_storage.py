"""Reading from a local S3 server (moto) against reading from local disk, for one TIFF and one OME-Zarr.

Run: ``python -m benchmarks.bench_object_storage --size 16384`` (the documented full run; the
default ``--size 4096`` is a quick one). Writes a tiled zlib RGB TIFF and its OME-Zarr copy
(``pixseg convert``) to a temporary directory, uploads both to a moto S3 server on 127.0.0.1,
and times ``open_image(...).data.compute()`` (threaded scheduler: decode on every core) from
each place. Prints one JSON line per format with both throughputs and their ratio.
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

import numpy as np
import tifffile


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


def _write_tiff(path: str, size: int) -> None:
    """A ``size``^2 RGB tiled (256^2) zlib TIFF of smooth noise, written tile by tile."""
    rng = np.random.default_rng(0)
    pattern = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)

    def tiles():
        for i in range(-(-size // 256)):
            for j in range(-(-size // 256)):
                yield np.roll(pattern, i * 7 + j * 13, axis=0)

    tifffile.imwrite(
        path, tiles(), shape=(size, size, 3), dtype=np.uint8, tile=(256, 256), compression="zlib", bigtiff=True
    )


def _throughput(path: str, repeats: int) -> float:
    """Best of ``repeats`` reads of the whole image at ``path``, in Mpx/s."""
    from pixseg.io.readers import open_image

    best = float("inf")
    for _ in range(repeats):
        image = open_image(path)
        started = time.perf_counter()
        image.data.sum(dtype=np.uint64).compute(scheduler="threads")
        best = min(best, time.perf_counter() - started)
    return image.shape[0] * image.shape[1] / best / 1e6


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print one JSON line per format."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=4096, help="edge of the square test image (full run: 16384)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    port = _free_port()
    # a process of its own: in this one, the server's request handling would hold the GIL
    # against the decoding threads being measured
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for(port)
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    import s3fs

    from pixseg.convert import convert

    try:
        fs = s3fs.S3FileSystem()
        fs.mkdir("bench")
        with tempfile.TemporaryDirectory() as directory:
            tiff = os.path.join(directory, "slide.tif")
            _write_tiff(tiff, args.size)
            store = os.path.join(directory, "slide.zarr")
            convert(tiff, store, chunk=1024)
            fs.put(tiff, "bench/slide.tif")
            fs.put(store, "bench/slide.zarr", recursive=True)
            for name, local, url in (
                ("tiff", tiff, "s3://bench/slide.tif"),
                ("ome-zarr", store, "s3://bench/slide.zarr"),
            ):
                disk = _throughput(local, args.repeats)
                remote = _throughput(url, args.repeats)
                row = {"format": name, "size": args.size, "local_mpx_s": round(disk, 1), "s3_mpx_s": round(remote, 1)}
                print(json.dumps({**row, "ratio": round(remote / disk, 2), "cpus": os.cpu_count()}), flush=True)
    finally:
        server.terminate()
        server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
