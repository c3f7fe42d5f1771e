"""Shared fixtures: small synthetic images and a guard that fails on unwanted dask computes."""

from __future__ import annotations

import contextlib
import gc
import logging
import socket
from collections.abc import Iterator

import dask
import numpy as np
import pytest
import tifffile

#: Well-separated colours of the synthetic "blob" image (uint8 RGB).
BLOB_COLOURS = np.array([[30, 30, 120], [200, 60, 60], [60, 190, 70], [235, 235, 230]], dtype=np.uint8)


def make_blob_image(height: int, width: int, *, seed: int = 0, noise: float = 6.0) -> np.ndarray:
    """An RGB uint8 image of four well-separated colour regions plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    region = ((yy * 4 // height) + (xx * 3 // width) + ((yy + xx) % 7 == 0)) % 4
    pixels = BLOB_COLOURS[region].astype(np.float64) + rng.normal(0.0, noise, (height, width, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


@pytest.fixture
def blob_image() -> np.ndarray:
    """A 150 x 230 RGB uint8 image with four colour populations."""
    return make_blob_image(150, 230)


@pytest.fixture
def blob_tiff(tmp_path, blob_image) -> str:
    """``blob_image`` as a tiled TIFF with 64 x 64 tiles."""
    path = str(tmp_path / "blobs.tif")
    tifffile.imwrite(path, blob_image, tile=(64, 64), photometric="rgb", compression="zlib")
    return path


@pytest.fixture
def ihc_image() -> np.ndarray:
    """scikit-image's real immunohistochemistry photo (512 x 512 RGB uint8)."""
    from skimage.data import immunohistochemistry

    return immunohistochemistry()


@contextlib.contextmanager
def raise_if_dask_computes() -> Iterator[None]:
    """Fail if anything is computed by dask inside the block (xarray's idea)."""

    def scheduler(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("dask computed something where the pipeline should stay lazy")

    with dask.config.set(scheduler=scheduler):
        yield


def skip_or_fail(required_by: str, message: str) -> None:
    """Skip a test whose real part (a SLURM cluster, a browser) is missing, or fail it when the
    environment variable ``required_by`` is ``1`` (CI sets it: there the part must be present)."""
    import os

    if os.environ.get(required_by) == "1":
        pytest.fail(f"{required_by}=1 but {message}")
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Undo what an in-process ``pixseg.cli.main`` does to logging (its handler holds the stderr of
    the test that ran it), so each test's caplog and capsys see pixseg's log lines."""
    import logging

    yield
    logging.captureWarnings(False)
    for name in ("pixseg", "py.warnings"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


#: Credentials of the local S3 server (moto's): tests assert the secret never shows in an output or error.
S3_SECRET = "s3cr3t-never-shown-8f2d"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """A local S3-compatible server (moto's server mode) on 127.0.0.1; its endpoint URL."""
    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """An s3fs filesystem on a fresh bucket ``bkt``, with the environment pointing at the server.

    Clearing fsspec's instance cache drops s3fs clients whose aiohttp sessions the garbage collector
    then closes, which aiohttp reports: modules using this fixture filter
    ``PytestUnraisableExceptionWarning`` and ``ResourceWarning`` (not pixseg's to fix).
    """
    s3fs = pytest.importorskip("s3fs")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    for key, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    if fs.exists("bkt"):
        fs.rm("bkt", recursive=True)
    fs.mkdir("bkt")
    fs.invalidate_cache()
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()
    gc.collect()  # their aiohttp sessions are reported here, where the users' warning filters apply
