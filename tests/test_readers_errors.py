"""Reader errors by type: missing, unsupported and corrupt inputs are InputErrors; pixseg's bugs are not."""

from __future__ import annotations

import random

import imagecodecs
import numpy as np
import pytest
import tifffile
import zarr

from pixseg.errors import InputError, InputNotFoundError, UnsupportedFormatError
from pixseg.io import readers
from pixseg.io.readers import FORMATS, open_image, plain, tiff, zarr_store
from pixseg.io.tiff_segments import TiffSegmentReader


def _open_and_read(path) -> None:
    open_image(str(path), chunk=32).data.compute(scheduler="sync")


def _tiled_tiff(path, pixels, **kwargs):
    tifffile.imwrite(path, pixels, tile=(16, 16), photometric="rgb", **kwargs)
    return path


def _zarr_array(path, pixels):
    zarr.create_array(path, shape=pixels.shape, chunks=(16, 16, 3), dtype=pixels.dtype)[:] = pixels
    return path


@pytest.fixture
def pixels():
    return np.random.default_rng(5).integers(0, 255, (40, 50, 3), dtype=np.uint8)


def test_missing_input_is_input_not_found(tmp_path):
    with pytest.raises(InputNotFoundError, match="does not exist") as info:
        open_image(tmp_path / "missing.tif")
    assert isinstance(info.value, FileNotFoundError)


def test_unknown_format_lists_the_supported_ones_on_one_line(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"1234")
    with pytest.raises(UnsupportedFormatError, match="unknown suffix '.bin'") as info:
        open_image(path)
    message = str(info.value)
    assert "\n" not in message
    for fmt in FORMATS:
        assert fmt.name in message and all(suffix in message for suffix in fmt.suffixes)
    (tmp_path / "folder").mkdir()
    with pytest.raises(UnsupportedFormatError, match="not a zarr store .*zarr.json.*; pixseg reads TIFF"):
        open_image(tmp_path / "folder")


def test_content_decides_before_the_suffix(tmp_path, pixels):
    tiff_path = _tiled_tiff(tmp_path / "scan.dat", pixels, compression="zlib")
    assert open_image(tiff_path).kind == "tiff"
    png_path = tmp_path / "mislabelled.tif"
    png_path.write_bytes(imagecodecs.png_encode(pixels))
    image = open_image(png_path)
    assert image.kind == "png"
    np.testing.assert_array_equal(image.data.compute(), pixels)
    store = _zarr_array(tmp_path / "no-suffix", pixels)
    assert open_image(store).kind == "zarr"


def _flip(path, offset: int, value: bytes = b"\xff" * 8) -> None:
    data = bytearray(path.read_bytes())
    data[offset : offset + len(value)] = value
    path.write_bytes(bytes(data))


def _corrupt_tile(tmp_path, pixels, compression):
    path = _tiled_tiff(tmp_path / f"{compression}.tif", pixels, compression=compression)
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages.first.dataoffsets[4]
    _flip(path, offset)
    return path


def _corrupt_ifd(tmp_path, pixels):
    path = _tiled_tiff(tmp_path / "ifd.tif", pixels, compression="zlib")
    first_ifd = int.from_bytes(path.read_bytes()[4:8], "little")
    _flip(path, first_ifd, b"\xff\xff")  # 65535 tags: more than the file holds
    return path


def _corrupt_png(tmp_path, pixels):
    path = tmp_path / "broken.png"
    data = bytearray(imagecodecs.png_encode(pixels))
    idat = data.index(b"IDAT")
    data[idat + 10 : idat + 40] = b"\x00" * 30
    path.write_bytes(bytes(data))
    return path


def _corrupt_zarr_chunk(tmp_path, pixels):
    path = _zarr_array(tmp_path / "chunk.zarr", pixels)
    chunk = next(p for p in (path / "c").rglob("*") if p.is_file())
    chunk.write_bytes(b"not zstd" * 4)
    return path


def _unknown_zarr_field(tmp_path, pixels):
    path = _zarr_array(tmp_path / "field.zarr", pixels)
    text = (path / "zarr.json").read_text().replace('"chunk_shape"', '"chunk_shapes"')
    (path / "zarr.json").write_text(text)  # zarr raises TypeError: an unexpected keyword argument
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t, p: _corrupt_tile(t, p, "zlib"), "cannot decode input .*zlib.tif"),
        (lambda t, p: _corrupt_tile(t, p, "jpeg"), "cannot decode input .*jpeg.tif"),
        (_corrupt_ifd, "cannot read TIFF .*ifd.tif"),
        (_corrupt_png, "cannot decode image .*broken.png"),
        (_corrupt_zarr_chunk, "cannot decode input .*chunk.zarr"),
        (lambda t, p: _write(t / "bad.zarr" / "zarr.json", b"{oops"), "cannot open zarr store .*bad.zarr"),
        (_unknown_zarr_field, "cannot open zarr store .*field.zarr"),
    ],
)
def test_corrupt_files_are_input_errors_naming_the_file(tmp_path, pixels, make, message):
    path = make(tmp_path, pixels)
    with pytest.raises(InputError, match=message):
        _open_and_read(path.parent if path.name == "zarr.json" else path)


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind", ["tiff", "png", "zarr"])
def test_damaged_bytes_never_escape_as_other_errors(tmp_path, pixels, kind):
    if kind == "tiff":
        original = _tiled_tiff(tmp_path / "source.tif", pixels, compression="zstd")
        targets = [original]
    elif kind == "png":
        original = tmp_path / "source.png"
        original.write_bytes(imagecodecs.png_encode(pixels))
        targets = [original]
    else:
        original = _zarr_array(tmp_path / "source.zarr", pixels)
        targets = sorted(p for p in original.rglob("*") if p.is_file())
    rng = random.Random(11)
    for _ in range(25):
        target = rng.choice(targets)
        pristine = target.read_bytes()
        damaged = bytearray(pristine)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(min(len(damaged), 300))] = rng.randrange(256)
        target.write_bytes(bytes(damaged) if rng.random() < 0.8 else pristine[: rng.randrange(len(pristine))])
        try:
            _open_and_read(original)
        except InputError:
            pass
        finally:
            target.write_bytes(pristine)


def test_a_bug_while_decoding_a_tile_propagates(blob_tiff, monkeypatch):
    def broken(self, *args):
        raise AttributeError("pixseg bug")

    monkeypatch.setattr(TiffSegmentReader, "_place", broken)
    image = open_image(blob_tiff)
    with pytest.raises(AttributeError, match="pixseg bug") as info:
        image.data.compute(scheduler="sync")
    assert not isinstance(info.value, InputError)


@pytest.mark.parametrize(
    ("module", "name", "make"),
    [
        (tiff, "_pixel_size", lambda t, p: _tiled_tiff(t / "a.tif", p)),
        (tiff, "_native_chunks", lambda t, p: _tiled_tiff(t / "a.tif", p)),
        (zarr_store, "_open_array", lambda t, p: _zarr_array(t / "a.zarr", p)),
        (plain, "_decode", lambda t, p: _write(t / "a.png", imagecodecs.png_encode(p))),
    ],
)
@pytest.mark.parametrize("error", [AttributeError, TypeError])
def test_a_bug_while_opening_propagates(tmp_path, pixels, monkeypatch, module, name, make, error):
    def broken(*args, **kwargs):
        raise error("pixseg bug")

    path = make(tmp_path, pixels)
    monkeypatch.setattr(module, name, broken)
    with pytest.raises(error, match="pixseg bug") as info:
        open_image(path)
    assert not isinstance(info.value, InputError)


def test_the_old_flat_module_names_still_import():
    for name in ("Image", "open_image", "describe_chunks", "TIFF_SUFFIXES", "PLAIN_SUFFIXES", "DEFAULT_CHUNK"):
        assert hasattr(readers, name)
    assert readers.MAX_PLAIN_PIXELS == plain.MAX_PLAIN_PIXELS
