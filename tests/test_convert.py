"""``pixseg convert``: lossless round trips, mean pyramids, bounded memory, independent readers."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import imagecodecs
import numpy as np
import psutil
import pytest
import tifffile
import zarr
from conftest import make_blob_image

from pixseg.cli import main
from pixseg.io.readers import open_image


def _numpy_mean_pyramid(pixels: np.ndarray, n_levels: int) -> list[np.ndarray]:
    """Reference: 2x2 means over existing pixels (odd edges alone), rounded half up for integers."""
    levels = [pixels]
    for _ in range(n_levels - 1):
        above = levels[-1].astype(np.float64)
        height, width = above.shape[:2]
        rows = [above[y : y + 2] for y in range(0, height, 2)]
        reduced = np.stack([np.stack([r[:, x : x + 2].mean(axis=(0, 1)) for x in range(0, width, 2)]) for r in rows])
        levels.append(np.floor(reduced + 0.5).astype(pixels.dtype))
    return levels


def _stored_levels(path: str) -> list[np.ndarray]:
    group = zarr.open_group(path, mode="r")
    datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
    return [np.moveaxis(group[d["path"]][:], 0, -1) for d in datasets]


def _inputs(tmp_path, pixels):
    tiled = tmp_path / "tiled.tif"
    tifffile.imwrite(tiled, pixels, tile=(64, 64), photometric="rgb", compression="zlib")
    striped = tmp_path / "striped.tif"
    tifffile.imwrite(striped, pixels, rowsperstrip=4, photometric="rgb")
    png = tmp_path / "plain.png"
    png.write_bytes(imagecodecs.png_encode(pixels))
    return {"tiled": tiled, "striped": striped, "png": png}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tiled", "striped", "png"])
def test_round_trip_and_mean_pyramid(tmp_path, capsys, kind):
    pixels = make_blob_image(301, 250, seed=2)
    source = _inputs(tmp_path, pixels)[kind]
    out = tmp_path / f"{kind}.zarr"
    code = main(["convert", str(source), str(out), "--chunk", "64", "--levels", "3", "-q"])
    assert code == 0, capsys.readouterr().err
    levels = _stored_levels(str(out))
    np.testing.assert_array_equal(levels[0], pixels)
    for stored, expected in zip(levels, _numpy_mean_pyramid(pixels, 3), strict=True):
        np.testing.assert_array_equal(stored, expected)
    assert zarr.open_group(out, mode="r")["0"].chunks == (3, 64, 64)
    assert zarr.open_group(out, mode="r")["0"].metadata.dimension_names == ("c", "y", "x")
    image = open_image(str(out), level=2)
    np.testing.assert_array_equal(image.data.compute(), levels[2])


@pytest.mark.parametrize("codec", ["lz4", "zlib", "none"])
def test_codecs_and_shards_are_lossless(tmp_path, capsys, codec):
    pixels = make_blob_image(200, 190, seed=4)
    source = _inputs(tmp_path, pixels)["tiled"]
    out = tmp_path / "sharded.zarr"
    code = main(["convert", str(source), str(out), "--chunk", "32", "--shard", "2", "--codec", codec, "-q"])
    assert code == 0, capsys.readouterr().err
    array = zarr.open_group(out, mode="r")["0"]
    assert array.shards == (3, 64, 64) and array.chunks == (3, 32, 32)
    np.testing.assert_array_equal(np.moveaxis(array[:], 0, -1), pixels)


@pytest.mark.slow
def test_ome_zarr_py_reads_every_level_and_the_pixel_size(tmp_path, capsys):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    pixels = make_blob_image(2500, 1300, seed=1)
    source = tmp_path / "sized.tif"
    tifffile.imwrite(source, pixels, tile=(256, 256), photometric="rgb", resolution=(2e4, 2e4), resolutionunit=3)
    out = tmp_path / "image.zarr"
    assert main(["convert", str(source), str(out), "-q"]) == 0
    node = list(Reader(parse_url(str(out)))())[0]
    assert [tuple(d.shape) for d in node.data] == [(3, 2500, 1300), (3, 1250, 650), (3, 625, 325)]
    scale = node.metadata["coordinateTransformations"][1][0]["scale"]
    assert scale == pytest.approx([1.0, 1.0, 1.0])  # 0.5 um pixels, level 1 doubled
    assert open_image(str(out)).pixel_size == pytest.approx((0.5, 0.5))
    assert open_image(str(out), level=1).pixel_size == pytest.approx((1.0, 1.0))
    np.testing.assert_array_equal(np.asarray(node.data[0]), np.moveaxis(pixels, -1, 0))


def _peak_rss(argv: list[str]) -> int:
    """Peak resident memory of a command, polled every 10 ms."""
    process = psutil.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.01)
    _, stderr = process.communicate()
    assert process.returncode == 0, stderr
    return peak


def _striped(path, height: int, width: int) -> None:
    with tifffile.TiffWriter(path) as tif:
        band = make_blob_image(64, width, seed=3)
        tif.write(
            (band for _ in range(height // 64)),
            shape=(height, width, 3),
            dtype=np.uint8,
            rowsperstrip=16,
            photometric="rgb",
        )


@pytest.mark.slow
def test_wide_striped_tiff_converts_in_bounded_memory(tmp_path):
    """A 24000 x 4096 RGB striped TIFF (295 MB of pixels) converts with memory set by a band, not the image.

    The baseline is the same conversion of a one-band image of the same width (imports, threads,
    codecs and one band), so the difference is what grows with the image's height.
    """
    width = 4096
    small, large = tmp_path / "small.tif", tmp_path / "large.tif"
    _striped(small, 1024, width)
    _striped(large, 24000, width)
    convert = [sys.executable, "-m", "pixseg.cli", "convert"]
    baseline = _peak_rss([*convert, str(small), str(tmp_path / "s.zarr"), "-q"])
    peak = _peak_rss([*convert, str(large), str(tmp_path / "l.zarr"), "-q"])
    image_bytes = 24000 * width * 3
    band_bytes = 1024 * width * 3  # one band of chunk rows across the width
    growth = peak - baseline
    print(json.dumps({"image_MB": image_bytes / 1e6, "band_MB": band_bytes / 1e6, "growth_MB": growth / 1e6}))
    assert growth < 10 * band_bytes  # generous: a few bands in flight (measured ~7), never the image
    assert growth < 0.5 * image_bytes
    assert zarr.open_group(tmp_path / "l.zarr", mode="r").attrs["pixseg"]["complete"] is True


def test_convert_errors(tmp_path, capsys, blob_tiff):
    assert main(["convert", blob_tiff, str(tmp_path / "x.tif")]) == 2
    assert "must end in .zarr" in capsys.readouterr().err
    assert main(["convert", blob_tiff, str(tmp_path / "x.zarr"), "--codec", "jpeg", "-q"]) == 2
    assert "--codec must be one of" in capsys.readouterr().err
    assert main(["convert", blob_tiff, str(tmp_path / "y.zarr"), "--levels", "many"]) == 2
    assert "--levels must be auto or a number, got 'many'" in capsys.readouterr().err


@pytest.mark.slow
def test_segment_converts_a_striped_tiff_automatically_with_identical_labels(tmp_path, capsys, monkeypatch):
    from pixseg import layout

    monkeypatch.setattr(layout, "CONVERT_ABOVE_PIXELS", 100_000)  # this small image stands for a big one
    monkeypatch.setattr(layout, "STRIP_CONVERT_ABOVE_PIXELS", 0)  # and its strips huge ones
    pixels = make_blob_image(400, 1500, seed=8)
    source = tmp_path / "striped.tif"
    tifffile.imwrite(source, pixels, rowsperstrip=8, photometric="rgb")
    assert main(["info", str(source)]) == 0
    assert "convert: yes: strips of 8 full rows" in capsys.readouterr().out
    common = ["-k", "4", "--sample-size", "5000", "--features", "channels,lab"]
    direct, converted = tmp_path / "direct.zarr", tmp_path / "converted.zarr"
    assert main(["segment", str(source), str(direct), "--no-convert", "-q", *common]) == 0
    assert main(["segment", str(source), str(converted), *common]) == 0
    err = capsys.readouterr().err
    assert "converting" in err and "strips of 8 full rows" in err
    np.testing.assert_array_equal(
        zarr.open_group(direct, mode="r")["0"][:], zarr.open_group(converted, mode="r")["0"][:]
    )
    assert not list(tmp_path.glob("*.pixseg-input.zarr"))  # work copy removed
    workdir = tmp_path / "work"
    kept = tmp_path / "kept.zarr"
    argv = ["segment", str(source), str(kept), "--workdir", str(workdir), "--keep-workdir", "-q", *common]
    assert main(argv) == 0
    (copy,) = workdir.glob("striped.tif.*.pixseg-input.zarr")  # named after the input, not the output
    assert zarr.open_group(copy, mode="r").attrs["pixseg"]["complete"] is True
    np.testing.assert_array_equal(zarr.open_group(kept, mode="r")["0"][:], zarr.open_group(direct, mode="r")["0"][:])
    capsys.readouterr()
    assert main([*(a for a in argv if a != "-q"), "--overwrite"]) == 0  # the same job again: the copy is reused
    assert "reusing the converted copy" in capsys.readouterr().err
    np.testing.assert_array_equal(zarr.open_group(kept, mode="r")["0"][:], zarr.open_group(direct, mode="r")["0"][:])
