"""Every reader format round-trips a small image, lazily, with canonical (Y, X, C) axes."""

from __future__ import annotations

import pickle

import imagecodecs
import numpy as np
import pytest
import tifffile
import zarr
from conftest import raise_if_dask_computes

from pixseg.errors import InputError
from pixseg.io.readers import open_image


def _check(path, expected, **kwargs):
    with raise_if_dask_computes():
        image = open_image(path, **kwargs)
    assert image.data.dtype == expected.dtype
    np.testing.assert_array_equal(image.data.compute(), expected)
    return image


def test_tiled_tiff_tiles_become_grouped_chunks(tmp_path, blob_image):
    path = str(tmp_path / "tiled.tif")
    tifffile.imwrite(path, blob_image, tile=(32, 48), photometric="rgb", compression="zstd")
    image = _check(path, blob_image)
    assert image.kind == "tiff" and image.native_chunks == (32, 48)
    assert image.data.chunksize == (150, 230, 3)
    small = _check(path, blob_image, chunk=64)
    assert small.data.chunks[:2] == ((64, 64, 22), (64, 64, 64, 38))


def test_processing_chunks_group_tiles_to_about_a_megapixel(tmp_path):
    path = str(tmp_path / "big.tif")
    tifffile.imwrite(path, shape=(2600, 3000), dtype=np.uint8, tile=(256, 256))
    image = open_image(path)
    assert image.data.chunksize[:2] == (1024, 1024)


def test_striped_and_bigtiff_greyscale(tmp_path, blob_image):
    grey = blob_image[..., 1]
    path = str(tmp_path / "striped.tif")
    tifffile.imwrite(path, grey, rowsperstrip=16, bigtiff=True)
    image = _check(path, grey[..., np.newaxis])
    assert image.native_chunks == (16, 230)


def test_wide_striped_tiff_is_read_in_full_width_bands(tmp_path):
    path = str(tmp_path / "wide.tif")
    pixels = np.random.default_rng(0).integers(0, 255, (300, 4096), dtype=np.uint8)
    tifffile.imwrite(path, pixels, rowsperstrip=8)
    image = _check(path, pixels[..., np.newaxis])
    assert image.data.chunksize[:2] == (256, 4096)


def test_ome_tiff_channels_first_and_pyramid_levels(tmp_path, blob_image):
    path = str(tmp_path / "pyramid.ome.tif")
    level1 = blob_image[::2, ::2]
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        options = {"tile": (64, 64), "photometric": "minisblack", "compression": "zlib"}
        tif.write(np.moveaxis(blob_image, -1, 0), subifds=1, metadata={"axes": "CYX"}, **options)
        tif.write(np.moveaxis(level1, -1, 0), subfiletype=1, **options)
    image = _check(path, blob_image)
    assert image.level_shapes == ((150, 230), (75, 115))
    _check(path, level1, level=1)
    with pytest.raises(InputError, match="--level 2 does not exist .* 2 level"):
        open_image(path, level=2)


def test_uint16_and_float_with_nan(tmp_path):
    values = np.arange(24 * 20, dtype=np.uint16).reshape(24, 20) * 100
    path = str(tmp_path / "u16.tif")
    tifffile.imwrite(path, values)
    _check(path, values[..., np.newaxis])
    floats = np.linspace(0, 1, 24 * 20 * 2, dtype=np.float32).reshape(24, 20, 2)
    floats[3, 4, 1] = np.nan
    path = str(tmp_path / "float.tif")
    tifffile.imwrite(path, floats, planarconfig="contig")
    _check(path, floats)


def test_rgba_tiff_reports_alpha(tmp_path):
    rgba = np.full((20, 30, 4), 200, dtype=np.uint8)
    path = str(tmp_path / "rgba.tif")
    tifffile.imwrite(path, rgba, photometric="rgb", extrasamples=["unassalpha"])
    assert _check(path, rgba).has_alpha


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_plain_zarr_arrays(tmp_path, blob_image, zarr_format):
    path = str(tmp_path / f"v{zarr_format}.zarr")
    array = zarr.create_array(path, shape=blob_image.shape, chunks=(50, 60, 3), dtype=np.uint8, zarr_format=zarr_format)
    array[:] = blob_image
    image = _check(path, blob_image)
    assert image.kind == "zarr" and image.native_chunks == (50, 60)


def test_zarr_dimension_names_put_channels_last(tmp_path, blob_image):
    path = str(tmp_path / "cyx.zarr")
    array = zarr.create_array(
        path, shape=(3, 150, 230), chunks=(3, 64, 64), dtype=np.uint8, dimension_names=["c", "y", "x"]
    )
    array[:] = np.moveaxis(blob_image, -1, 0)
    _check(path, blob_image)


def test_ome_zarr_multiscale_reads_dataset_paths_from_metadata(tmp_path, blob_image):
    path = str(tmp_path / "image.ome.zarr")
    group = zarr.open_group(path, mode="w", zarr_format=3)
    chw = np.moveaxis(blob_image, -1, 0)
    for name, data in (("s0", chw), ("s1", chw[:, ::2, ::2])):
        group.create_array(name, shape=data.shape, chunks=(3, 64, 64), dtype=data.dtype)[:] = data
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [
                    {"name": "c", "type": "channel"},
                    {"name": "y", "type": "space"},
                    {"name": "x", "type": "space"},
                ],
                "datasets": [
                    {"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1]}]},
                    {"path": "s1", "coordinateTransformations": [{"type": "scale", "scale": [1, 2, 2]}]},
                ],
            }
        ],
    }
    image = _check(path, blob_image)
    assert image.kind == "ome-zarr" and image.level_shapes == ((150, 230), (75, 115))
    _check(path, blob_image[::2, ::2], level=1)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_png_round_trips(tmp_path, blob_image, mode):
    pixels = {"L": blob_image[..., :1], "RGB": blob_image, "RGBA": np.dstack([blob_image, blob_image[..., :1]])}[mode]
    path = str(tmp_path / f"{mode}.png")
    with open(path, "wb") as handle:
        handle.write(imagecodecs.png_encode(np.ascontiguousarray(pixels)))
    image = _check(path, pixels)
    assert image.kind == "png" and image.has_alpha == (mode == "RGBA")


def test_jpeg_reads_decoded_pixels(tmp_path, blob_image):
    path = str(tmp_path / "photo.jpg")
    encoded = imagecodecs.jpeg8_encode(blob_image, level=95)
    with open(path, "wb") as handle:
        handle.write(encoded)
    image = _check(path, imagecodecs.jpeg8_decode(encoded))
    assert image.kind == "jpeg"


def test_lazy_array_pickles_for_worker_processes(blob_tiff, blob_image):
    image = open_image(blob_tiff, chunk=64)
    restored = pickle.loads(pickle.dumps(image.data))
    np.testing.assert_array_equal(restored.compute(), blob_image)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.tif", "does not exist"),
        (lambda p: _write(p / "text.tif", b"this is not a TIFF"), "cannot read TIFF"),
        (lambda p: _write(p / "empty.png", b""), "cannot read image"),
        (lambda p: _write(p / "data.bin", b"1234"), "unknown suffix"),
        (lambda p: _mkdir(p / "folder"), "not a zarr store"),
    ],
)
def test_bad_inputs_name_the_problem(tmp_path, make, message):
    with pytest.raises(InputError, match=message):
        open_image(str(make(tmp_path)))


def test_truncated_tiff_fails_when_decoded(tmp_path, blob_image):
    path = tmp_path / "truncated.tif"
    tifffile.imwrite(path, blob_image, tile=(64, 64), photometric="rgb", compression="zlib")
    data = path.read_bytes()
    with tifffile.TiffFile(path) as tif:
        offsets = tif.pages.first.dataoffsets
    path.write_bytes(data[: offsets[3] + 10] + b"\0" * (len(data) - offsets[3] - 10))
    image = open_image(str(path))
    with pytest.raises(InputError, match="cannot decode input .*truncated.tif"):
        image.data.compute()


def test_unsupported_dtypes_and_stacks(tmp_path):
    path = str(tmp_path / "complex.tif")
    tifffile.imwrite(path, np.zeros((8, 8), dtype=np.complex64))
    with pytest.raises(InputError, match="dtype 'complex64'"):
        open_image(path)
    path = str(tmp_path / "stack.tif")
    tifffile.imwrite(path, np.zeros((4, 5, 8, 8), dtype=np.uint8), metadata={"axes": "TZYX"})
    with pytest.raises(InputError, match="not supported; pixseg segments one 2-D plane"):
        open_image(path)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _mkdir(path):
    path.mkdir()
    return path


def test_aperio_svs_pyramid(tmp_path, blob_image):
    path = str(tmp_path / "slide.svs")
    header = "Aperio Image Library v12.0.0\r\n"
    options = {"photometric": "rgb", "compression": "zlib", "metadata": None}
    level1 = blob_image[::4, ::4]
    with tifffile.TiffWriter(path) as tif:
        tif.write(blob_image, tile=(64, 64), description=header + "230x150 (64x64) |AppMag = 20|MPP = 0.5", **options)
        tif.write(blob_image[::8, ::8], description=header + "thumbnail", **options)
        tif.write(level1, tile=(64, 64), description=header + "level 1", **options)
    image = _check(path, blob_image)
    assert image.level_shapes == ((150, 230), (38, 58))
    _check(path, level1, level=1)


def test_png_too_large_to_decode_names_alternatives(tmp_path, monkeypatch):
    from pixseg.io.readers import plain

    monkeypatch.setattr(plain, "MAX_PLAIN_PIXELS", 100)
    path = tmp_path / "big.png"
    path.write_bytes(imagecodecs.png_encode(np.zeros((20, 30), np.uint8)))
    with pytest.raises(InputError, match="20 pixels, too large to decode whole .*vips tiffsave .*gdal_translate"):
        open_image(str(path))
