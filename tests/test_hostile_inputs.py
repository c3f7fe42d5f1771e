"""Hostile inputs: decompression bombs under an address-space limit, palette TIFFs, nodata
sentinels and huge values, non-regular files, malformed structure and images thinner than the
texture halo. Each ends in a correct result or exit 2 with one ``error:`` line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from conftest import make_blob_image
from corpus import _float_blobs, _zlib_zeros, handmade_tiff

import pixseg
from pixseg.errors import InputError
from pixseg.features import build_features, compute_features, make_feature_spec, robust_channel_ranges
from pixseg.io.readers import open_image
from pixseg.options import ReadOptions

#: Address-space limit of the subprocess runs: room for dask, numba and numpy, none for a bomb.
_ADDRESS_SPACE = 3 * 2**30

_LIMITED_MAIN = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({_ADDRESS_SPACE}, {_ADDRESS_SPACE}))
from pixseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run_limited(argv: list[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _LIMITED_MAIN, *argv], capture_output=True, text=True, timeout=timeout, check=False
    )


def _labels(path: Path) -> np.ndarray:
    return np.asarray(zarr.open_group(path, mode="r")["0"][:])


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(
            lambda t: handmade_tiff(t, "s.tif", width=100_000, length=100_000, compression=8, data=_zlib_zeros(10**5)),
            id="100000^2 zlib strip",
        ),
        pytest.param(
            lambda t: handmade_tiff(
                t, "t.tif", width=65_536, length=65_536, compression=8, tile=(65_536, 65_536), data=_zlib_zeros(10**5)
            ),
            id="65536^2 tile",
        ),
        pytest.param(
            lambda t: handmade_tiff(t, "u.tif", width=100_000, length=100_000, data=b"\0" * 100_000),
            id="uncompressed strip, short byte count",
        ),
        pytest.param(
            lambda t: str(
                zarr.create_array(
                    t / "c.zarr", shape=(100_000, 100_000), chunks=(100_000, 100_000), dtype="u1"
                ).store.root
            ),
            id="zarr 10 GB chunk",
        ),
    ],
)
@pytest.mark.slow
def test_decompression_bombs_exit_2_at_once_under_a_memory_limit(tmp_path, build):
    source = build(tmp_path)
    started = time.perf_counter()
    run = _run_limited(["segment", source, str(tmp_path / "out" / "labels.zarr"), "-q"])
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--max-tile-memory 512 MB" in lines[0], run.stderr
    assert time.perf_counter() - started < 60
    assert not (tmp_path / "out").exists()  # refused at open: no lock, no conversion copy, no output


def test_the_memory_budget_is_an_option(tmp_path):
    source = handmade_tiff(tmp_path, "s.tif", width=4096, length=4096, compression=8, data=_zlib_zeros(4096 * 4096))
    with pytest.raises(InputError, match=r"4096x4096 uint8 values \(16 MB each\), more than --max-tile-memory 8 MB"):
        open_image(source, max_tile_memory=8)
    assert open_image(source, max_tile_memory=16).shape == (4096, 4096, 1)
    assert ReadOptions().max_tile_memory == 512


def test_uncompressed_strips_over_the_budget_are_read_in_bands_of_rows(tmp_path):
    pixels = make_blob_image(800, 600)
    path = tmp_path / "one-strip.tif"
    tifffile.imwrite(path, pixels, photometric="rgb", rowsperstrip=800)  # one 1.4 MB strip
    image = open_image(path, max_tile_memory=1)
    assert image.native_chunks[0] < 800
    np.testing.assert_array_equal(image.data.compute(), pixels)
    np.testing.assert_array_equal(image.source[100:250, 30:70, 1:], pixels[100:250, 30:70, 1:])


def test_a_row_over_the_budget_is_refused(tmp_path):
    path = tmp_path / "wide.tif"
    tifffile.imwrite(path, np.zeros((2, 600_000), np.uint16), rowsperstrip=2)
    with pytest.raises(InputError, match="decodes rows of 600000x1 uint16"):
        open_image(path, max_tile_memory=1)


@pytest.mark.slow
def test_pillow_decompression_bomb_check_gives_one_line(tmp_path):
    from corpus import _png_header

    run = _run_limited(["segment", _png_header(tmp_path, 30_000, 30_000), str(tmp_path / "o.zarr"), "-q"])
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "decompression bomb" in run.stderr


@pytest.mark.slow
@pytest.mark.parametrize("planar", [False, True])
def test_palette_tiff_is_clustered_on_its_colours(tmp_path, planar, monkeypatch):
    rgb = make_blob_image(60, 90)
    colours, index = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    order = np.random.default_rng(3).permutation(256)  # indices unrelated to the colours
    quantised = np.arange(256, dtype=np.uint8)[np.minimum(index, 255)].reshape(60, 90)
    table = np.zeros((256, 3), np.uint8)
    table[order] = np.resize(colours, (256, 3))
    indices = order[quantised].astype(np.uint8)
    expected = table[indices]
    palette = tmp_path / "palette.tif"
    tifffile.imwrite(palette, indices, photometric="palette", colormap=table.T.astype(np.uint16) * 257)
    plain = tmp_path / "rgb.tif"
    tifffile.imwrite(plain, expected, photometric="rgb")
    if planar:  # the tifffile path (``imread(aszarr=True)``) instead of the segment reader
        monkeypatch.setattr("pixseg.io.readers.tiff.segment_readable", lambda page, n: False)
    image = open_image(palette)
    assert image.shape == (60, 90, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image.data.compute(), expected)
    pixseg.segment(str(palette), str(tmp_path / "p.zarr"), clusters=4)
    pixseg.segment(str(plain), str(tmp_path / "r.zarr"), clusters=4)
    np.testing.assert_array_equal(_labels(tmp_path / "p.zarr"), _labels(tmp_path / "r.zarr"))


def test_palette_with_16_bit_colours_reads_as_uint16(tmp_path):
    table = np.random.default_rng(0).integers(0, 65_536, (3, 256)).astype(np.uint16)
    indices = np.random.default_rng(1).integers(0, 256, (20, 30)).astype(np.uint8)
    path = tmp_path / "p16.tif"
    tifffile.imwrite(path, indices, photometric="palette", colormap=table)
    image = open_image(path)
    assert image.dtype == np.uint16
    np.testing.assert_array_equal(image.data.compute(), table.T[indices])


@pytest.mark.slow
def test_float_nodata_from_the_option_and_the_gdal_tag(tmp_path):
    tagged = _float_blobs(tmp_path, "tagged.tif", sentinel=-9999, extratags=[(42113, "s", 0, "-9999", True)])
    bare = _float_blobs(tmp_path, "bare.tif", sentinel=-9999)
    assert open_image(tagged).nodata == -9999 and open_image(bare).nodata is None
    for path, options in ((tagged, {}), (bare, {"nodata": -9999})):
        image = open_image(path, **options)
        assert np.isnan(image.data[:20].compute()).all() and not np.isnan(image.data[20:].compute()).any()
        out = tmp_path / f"{Path(path).stem}.zarr"
        pixseg.segment(path, str(out), clusters=4, **options)
        labels = _labels(out)
        assert (labels[:20] == 0).all() and (labels[20:] > 0).all()


def test_integer_nodata_adds_an_alpha_channel(tmp_path):
    pixels = make_blob_image(50, 70).astype(np.uint16) * 200
    pixels[5:9, 10:30] = 7
    path = tmp_path / "u16.tif"
    tifffile.imwrite(path, pixels, photometric="rgb")
    image = open_image(path, nodata=7)
    assert image.shape == (50, 70, 4) and image.has_alpha
    alpha = image.data[..., 3].compute()
    assert (alpha[5:9, 10:30] == 0).all() and (alpha == 0).sum() == 80
    pixseg.segment(str(path), str(tmp_path / "out.zarr"), clusters=3, nodata=7)
    labels = _labels(tmp_path / "out.zarr")
    assert ((labels == 0) == (alpha == 0)).all()
    assert open_image(path, nodata=7.5).shape == (50, 70, 3)  # a fraction cannot occur: nothing marked
    assert open_image(path, nodata=-1).shape == (50, 70, 3)


def test_a_float_sentinel_is_named_not_reported_as_nan(tmp_path):
    with pytest.raises(InputError, match=r"pass --nodata -3.4e\+38"):
        robust_channel_ranges(np.array([[-3.4e38], [-3.4e38], [1.0], [2.0], [3.0]] * 20))
    path = _float_blobs(tmp_path, "s.tif", sentinel=-3.4e38)
    with pytest.raises(InputError, match="pass --nodata"):
        pixseg.segment(path, str(tmp_path / "s.zarr"), clusters=4)


@pytest.mark.slow
def test_huge_finite_values_scale_without_overflow(tmp_path):
    pixels = make_blob_image(60, 80)
    plain, huge = tmp_path / "plain.tif", tmp_path / "huge.tif"
    tifffile.imwrite(plain, pixels.astype(np.float32), photometric="rgb")
    tifffile.imwrite(huge, pixels.astype(np.float32) * np.float32(1e36), photometric="rgb")
    pixseg.segment(str(plain), str(tmp_path / "p.zarr"), clusters=4)
    pixseg.segment(str(huge), str(tmp_path / "h.zarr"), clusters=4)
    np.testing.assert_array_equal(_labels(tmp_path / "p.zarr"), _labels(tmp_path / "h.zarr"))
    spec = make_feature_spec(
        "channels", n_channels=1, has_alpha=False, dtype=np.float32, channel_ranges=[(-3.4e38, 3.4e38)]
    )
    features = compute_features(np.array([[[3.4e38], [-3.4e38]]], np.float32), spec)
    np.testing.assert_allclose(features[..., 0], [[1.0, 0.0]], atol=1e-6)
    wide = make_feature_spec("channels", n_channels=1, has_alpha=False, dtype=np.float64, channel_ranges=[(0, 1)])
    with pytest.raises(InputError, match="too far outside the channel ranges"):
        compute_features(np.array([[[1e300]]]), wide)
    assert robust_channel_ranges(np.full((10, 1), 1e30))[0][1] > 1e30  # low + 1 rounds to low


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_non_regular_files_are_refused_at_once(tmp_path, kind):
    source = "/dev/zero"
    if kind == "fifo":
        source = str(tmp_path / "pipe.tif")
        os.mkfifo(source)
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pixseg.cli import main; sys.exit(main(sys.argv[1:]))",
            "segment",
            source,
            str(tmp_path / "o.zarr"),
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "not a regular file" in run.stderr


@pytest.mark.parametrize(("shape", "chunk"), [((3, 500), 64), ((500, 2), 64), ((1, 1), None), ((20, 33), 16)])
def test_texture_on_images_thinner_than_the_halo_equals_the_whole_image(tmp_path, shape, chunk):
    pixels = make_blob_image(*shape)
    path = tmp_path / "thin.tif"
    tifffile.imwrite(path, pixels, photometric="rgb")
    image = open_image(path, chunk=chunk)
    spec = make_feature_spec("texture", n_channels=3, has_alpha=False, dtype=np.uint8, sigmas=(1.0, 8.0))
    lazy = build_features(image.data, spec).compute()
    np.testing.assert_allclose(lazy, compute_features(pixels, spec), rtol=1e-5, atol=1e-6)


def test_zero_length_zarr_axis_and_malformed_tiffs_are_refused_at_open(tmp_path):
    empty = zarr.create_array(tmp_path / "e.zarr", shape=(10, 0, 3), chunks=(5, 5, 3), dtype="u1")
    with pytest.raises(InputError, match="empty shape"):
        open_image(str(empty.store.root))
    with pytest.raises(InputError, match="empty shape"):
        open_image(handmade_tiff(tmp_path, "w0.tif", width=0, length=8))
    with pytest.raises(InputError, match="declares empty 16x0 tiles"):
        open_image(handmade_tiff(tmp_path, "t0.tif", width=8, length=8, tile=(16, 0)))
    with pytest.raises(InputError, match="lists 3 strips"):
        open_image(handmade_tiff(tmp_path, "n.tif", width=8, length=64, rows_per_strip=8, n_segments=3))


def test_tiles_not_a_multiple_of_16_read_correctly(tmp_path):
    data = (np.arange(20 * 24) % 251).astype(np.uint8)
    path = handmade_tiff(tmp_path, "odd.tif", width=24, length=20, tile=(20, 24), data=data.tobytes())
    image = open_image(path)
    assert image.native_chunks == (20, 24)
    np.testing.assert_array_equal(image.data.compute()[..., 0], data.reshape(20, 24))


def test_a_converted_copy_keeps_the_nodata_alpha(tmp_path):
    from pixseg.convert import convert

    pixels = make_blob_image(60, 70).astype(np.uint16)
    pixels[:10] = 5
    path = tmp_path / "g16.tif"
    tifffile.imwrite(path, pixels, photometric="rgb", extratags=[(42113, "s", 0, "5", True)])
    convert(str(path), str(tmp_path / "copy.zarr"), levels=1)
    direct = open_image(path)
    copy = open_image(tmp_path / "copy.zarr", nodata=direct.nodata)
    assert direct.has_alpha and copy.has_alpha and copy.shape == direct.shape == (60, 70, 4)
    np.testing.assert_array_equal(copy.data.compute(), direct.data.compute())
