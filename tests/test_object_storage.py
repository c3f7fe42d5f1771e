"""Inputs and outputs in object storage, against a real S3 server (moto's, on 127.0.0.1), and
TIFF byte ranges over HTTP (:mod:`benchmarks.range_server`, on 127.0.0.1).

Labels read from and written to ``s3://`` must equal a local run's, read back independently
with zarr; bad URLs and credentials must give one ``error:`` line without the secret.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import zarr

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from conftest import S3_CREDENTIALS, S3_SECRET  # noqa: E402  (the server fixtures `endpoint`, `s3` are there)

from benchmarks.range_server import RangeServer  # noqa: E402
from pixseg.cli import main  # noqa: E402
from pixseg.io.readers import open_image  # noqa: E402
from pixseg.io.remote import public_url  # noqa: E402

#: Clearing fsspec's instance cache between tests drops s3fs clients whose aiohttp sessions are
#: then closed by the garbage collector, which aiohttp reports: not pixseg's to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]

SECRET = S3_SECRET
CREDENTIALS = S3_CREDENTIALS


def _slide(size: int = 384) -> np.ndarray:
    rng = np.random.default_rng(7)
    image = rng.integers(0, 60, (size, size + 96, 3), dtype=np.uint8)
    image[size // 3 :, : size // 2] += 120
    image[: size // 2, size // 2 :, 1] += 150
    return image


@pytest.fixture(scope="module")
def slide_file(tmp_path_factory) -> str:
    """A tiled zlib TIFF on local disk (shared by the module's tests: none modifies it)."""
    path = tmp_path_factory.mktemp("slide") / "slide.tif"
    tifffile.imwrite(path, _slide(), tile=(128, 128), compression="zlib")
    return str(path)


@pytest.fixture(scope="module")
def local_labels(slide_file, tmp_path_factory) -> np.ndarray:
    """The labels of a local run on ``slide_file``: the reference every remote run must equal."""
    output = str(tmp_path_factory.mktemp("local") / "local.zarr")
    assert main(["segment", slide_file, output, *ARGS]) == 0
    return _labels(output)


@pytest.fixture
def tiff(slide_file, s3):
    """The slide, local and in the bucket."""
    s3.put(slide_file, "bkt/slide.tif")
    return slide_file, "s3://bkt/slide.tif"


def _labels(path: str) -> np.ndarray:
    return np.asarray(zarr.open_array(f"{path}/0", mode="r")[:])


def _error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


ARGS = ["-k", "3", "--chunk", "128", "--sample-size", "20000", "--no-previews", "-q"]


def test_public_url_drops_credentials_and_queries():
    assert public_url("s3://user:pw@bkt/a.tif?X-Amz-Signature=abc#f") == "s3://bkt/a.tif"
    assert public_url("/local/a.tif") == "/local/a.tif"


def test_url_with_credentials_is_refused_without_echoing_them(capsys):
    assert main(["info", f"s3://key:{SECRET}@bkt/a.tif"]) == 2
    assert SECRET not in _error_line(capsys)


@pytest.mark.slow
def test_tiff_segment_and_apply_from_s3_to_s3_equal_the_local_run(tiff, s3, local_labels, capsys):
    _, url = tiff
    assert main(["segment", url, "s3://bkt/out.zarr", "--save-model", "s3://bkt/model.json", *ARGS]) == 0
    remote = _labels("s3://bkt/out.zarr")
    assert np.array_equal(remote, local_labels)
    assert set(np.unique(remote)) == {1, 2, 3}
    attrs = zarr.open_group("s3://bkt/out.zarr", mode="r").attrs.asdict()
    assert attrs["pixseg"]["complete"] is True
    assert attrs["pixseg"]["fingerprint"]["input"]["path"] == url
    stats = json.loads(s3.cat_file("bkt/out.zarr.stats.json"))
    assert sum(row["pixels"] for row in stats["labels"]) == remote.size
    assert not s3.exists("bkt/out.zarr.lock")  # released
    for name in s3.find("bkt"):
        if not name.endswith(".png"):
            assert SECRET.encode() not in s3.cat_file(name)
    assert SECRET not in capsys.readouterr().err
    assert main(["apply", "s3://bkt/model.json", url, "s3://bkt/b.zarr", "--chunk", "128", "--no-previews", "-q"]) == 0
    assert np.array_equal(_labels("s3://bkt/b.zarr"), remote)


@pytest.mark.slow
def test_ome_zarr_from_s3_and_info(tiff, s3, local_labels, capsys):
    local, _ = tiff
    assert main(["convert", local, "s3://bkt/slide.zarr", "--chunk", "128", "-q"]) == 0
    assert main(["segment", "s3://bkt/slide.zarr", "s3://bkt/out.zarr", *ARGS]) == 0
    assert np.array_equal(_labels("s3://bkt/out.zarr"), local_labels)
    capsys.readouterr()
    assert main(["info", "s3://bkt/slide.zarr"]) == 0
    described = capsys.readouterr().out
    assert "ome-zarr" in described and "384" in described
    assert main(["info", "s3://bkt/out.zarr"]) == 0
    assert "complete" in capsys.readouterr().out


@pytest.mark.slow
def test_overwrite_replaces_only_pixseg_outputs(tiff, s3, capsys):
    _, url = tiff
    s3.pipe_file("bkt/theirs.zarr/zarr.json", b'{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    assert main(["segment", url, "s3://bkt/theirs.zarr", "--overwrite", *ARGS]) == 2
    assert "not a pixseg" in _error_line(capsys)
    assert s3.exists("bkt/theirs.zarr/zarr.json")
    assert main(["segment", url, "s3://bkt/out.zarr", *ARGS]) == 0
    assert main(["segment", url, "s3://bkt/out.zarr", *ARGS]) == 2
    assert "--overwrite" in _error_line(capsys)
    assert main(["segment", url, "s3://bkt/out.zarr", "--overwrite", *ARGS[2:], "-k", "2"]) == 0
    assert set(np.unique(_labels("s3://bkt/out.zarr"))) == {1, 2}


def test_a_held_lock_object_refuses_a_second_run(tiff, s3, capsys):
    _, url = tiff
    record = {"host": "elsewhere", "pid": 1, "token": "t", "started": time.time(), "heartbeat": time.time()}
    s3.pipe_file("bkt/out.zarr.lock", json.dumps(record).encode())
    assert main(["segment", url, "s3://bkt/out.zarr", *ARGS]) == 2
    assert "being written by" in _error_line(capsys)


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ("s3://bkt/missing.tif", "s3://bkt/out.zarr", "does not exist"),
        ("s3://nobucket/slide.tif", "s3://bkt/out.zarr", "bucket 'nobucket' does not exist"),
        ("LOCAL", "s3://nobucket/out.zarr", "bucket 'nobucket' does not exist"),
        ("LOCAL", "s3://bkt/out.tif", "only OME-Zarr"),
    ],
)
def test_bad_urls_give_one_error_line(tiff, capsys, source, target, expected):
    source = tiff[0] if source == "LOCAL" else source
    assert main(["segment", source, target, *ARGS]) == 2
    line = _error_line(capsys)
    assert expected in line and SECRET not in line


def test_wrong_credentials_give_one_error_line_without_the_secret(tiff, s3, monkeypatch, capsys):
    import moto.settings
    import s3fs

    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the server now checks keys
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET + "-wrong")
    s3fs.S3FileSystem.clear_instance_cache()
    assert main(["info", tiff[1]]) == 2
    line = _error_line(capsys)
    assert "credentials" in line and SECRET not in line
    assert main(["segment", tiff[0], "s3://bkt/out.zarr", *ARGS]) == 2
    line = _error_line(capsys)
    assert "credentials" in line and SECRET not in line


def test_missing_backend_names_the_extra(monkeypatch, capsys):
    import fsspec.core

    def no_backend(*args, **kwargs):
        raise ImportError("gcsfs")

    monkeypatch.setattr(fsspec.core, "url_to_fs", no_backend)
    assert main(["info", "gs://bucket/slide.tif"]) == 2
    assert "pixseg-ooc[gcs]" in _error_line(capsys)


@pytest.mark.slow
def test_killed_run_resumes_against_the_bucket(tmp_path, s3, endpoint):
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, _slide(768), tile=(128, 128), compression="zlib")
    s3.put(str(path), "bkt/big.tif")
    args = ["segment", "s3://bkt/big.tif", "s3://bkt/out.zarr", *ARGS]
    environment = {**os.environ, "AWS_ENDPOINT_URL": endpoint, **CREDENTIALS}
    command = [sys.executable, "-m", "pixseg.cli", *args]
    process = subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            s3.invalidate_cache()
            if len(s3.find("bkt/out.zarr/0/c")) >= 3:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be killed"
        process.kill()
    finally:
        process.wait()
    s3.invalidate_cache()
    status = zarr.open_group("s3://bkt/out.zarr", mode="r").attrs["pixseg"]
    assert status["complete"] is False
    assert main([*args, "--resume"]) == 0
    resumed = _labels("s3://bkt/out.zarr")
    assert main(["segment", str(path), str(tmp_path / "local.zarr"), *ARGS]) == 0
    assert np.array_equal(resumed, _labels(str(tmp_path / "local.zarr")))


def test_tiff_region_over_http_ranges_equals_the_file_and_fetches_only_its_tiles(tmp_path):
    image = _slide(640)
    tifffile.imwrite(tmp_path / "slide.tif", image, tile=(64, 64), compression="zlib")
    size = os.path.getsize(tmp_path / "slide.tif")
    with RangeServer(str(tmp_path)) as server:
        remote = open_image(f"{server.url}/slide.tif", chunk=128)
        opened = server.bytes_sent
        region = remote.data[200:330, 100:290].compute(scheduler="threads")
        fetched = server.bytes_sent - opened
    expected = tifffile.imread(tmp_path / "slide.tif")
    assert np.array_equal(expected, image)
    assert np.array_equal(region, expected[200:330, 100:290])
    assert remote.source.reader == "tifffile" and remote.kind == "tiff"
    # the region lies in 2x3 chunks of 128^2: 24 of the 120 tiles
    assert 0 < fetched < size / 3
    assert opened < size / 3  # opening reads the header and IFDs, not the pixels
    gc.collect()


def test_an_empty_object_is_refused_as_an_empty_file_is(tmp_path, s3, capsys):
    """A range of an empty object is refused by S3 (InvalidRange); pixseg reads it as empty, as a local file."""
    (tmp_path / "empty.tif").write_bytes(b"")
    s3.pipe("bkt/empty.tif", b"")
    assert main(["info", str(tmp_path / "empty.tif")]) == 2
    local_line = _error_line(capsys)
    assert main(["info", "s3://bkt/empty.tif"]) == 2
    remote_line = _error_line(capsys)
    assert "storage error" not in remote_line
    assert remote_line == local_line.replace(str(tmp_path / "empty.tif"), "s3://bkt/empty.tif")
