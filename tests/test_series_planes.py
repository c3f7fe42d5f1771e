"""Series (multi-image OME-TIFF, bioformats2raw stores), Z/T planes and channels; formats read by content."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile
import zarr
from conftest import make_blob_image

from pixseg.cli import main
from pixseg.errors import InputError
from pixseg.io.readers import list_series, open_image
from pixseg.options import FitOptions, OutputOptions, ReadOptions
from pixseg.runner import segment

SHAPES = ((40, 50, 3), (20, 30), (2, 24, 16))


@pytest.fixture
def three_series(tmp_path) -> str:
    """An OME-TIFF of three images of different shapes: RGB, grey uint16, two channels."""
    path = str(tmp_path / "three.ome.tif")
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(make_blob_image(*SHAPES[0][:2]), photometric="rgb", metadata={"axes": "YXS", "Name": "slide"})
        tif.write(np.arange(600, dtype=np.uint16).reshape(SHAPES[1]), metadata={"axes": "YX", "Name": "grey"})
        tif.write(np.full(SHAPES[2], 3, np.uint8), metadata={"axes": "CYX", "Name": "pair"})
    return path


def test_ome_tiff_series_are_listed_and_picked(three_series, caplog):
    assert [(s.index, s.name, s.shape) for s in list_series(three_series)] == [
        (0, "slide", SHAPES[0]),
        (1, "grey", SHAPES[1]),
        (2, "pair", SHAPES[2]),
    ]
    with caplog.at_level(logging.INFO):
        assert open_image(three_series).shape == (40, 50, 3)
    used = [r.getMessage() for r in caplog.records if "series" in r.getMessage()]
    assert len(used) == 1 and "holds 3 series; reading series 0 'slide'" in used[0]
    grey = open_image(three_series, series=1)
    assert grey.shape == (20, 30, 1) and grey.dtype == np.uint16
    assert int(grey.data[19, 29, 0].compute()) == 599
    assert open_image(three_series, series=2).shape == (24, 16, 2)
    with pytest.raises(InputError, match=r"--series 3 does not exist in .*: it has 3 series \(0 to 2;") as info:
        open_image(three_series, series=3)
    assert "\n" not in str(info.value)


def test_info_lists_every_series_and_the_reader(three_series, capsys):
    assert main(["info", three_series]) == 0
    stdout = capsys.readouterr().out
    assert "0 'slide': 40x50x3 (YXS); 1 'grey': 20x30 (YX); 2 'pair': 2x24x16 (CYX)" in stdout
    assert "reader: tifffile" in stdout and "format: tiff (ome)" in stdout


def _ome_image(group, pixels: np.ndarray, axes: str) -> None:
    """An OME-Zarr 0.5 image of one level into ``group``."""
    group.create_array("0", shape=pixels.shape, chunks=pixels.shape, dtype=pixels.dtype)[:] = pixels
    kinds = {"t": "time", "c": "channel"}
    meta = [{"name": a, "type": kinds.get(a, "space")} for a in axes]
    scale = {"type": "scale", "scale": [1.0] * len(axes)}
    datasets = [{"path": "0", "coordinateTransformations": [scale]}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": meta, "datasets": datasets}]}


@pytest.fixture
def bioformats2raw(tmp_path) -> str:
    """A bioformats2raw-layout store of two series with names in OME/METADATA.ome.xml."""
    path = tmp_path / "b2r.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=3)
    root.attrs["ome"] = {"version": "0.5", "bioformats2raw.layout": 3}
    _ome_image(root.create_group("0"), np.full((3, 20, 30), 7, np.uint8), "cyx")
    _ome_image(root.create_group("1"), np.full((1, 10, 12), 9, np.uint8), "cyx")
    root.create_group("OME").attrs["ome"] = {"version": "0.5", "series": ["0", "1"]}
    xml = '<OME><Image ID="Image:0" Name="whole"/><Image ID="Image:1" Name="macro"/></OME>'
    (path / "OME" / "METADATA.ome.xml").write_text(xml)
    return str(path)


def test_bioformats2raw_store_opens_its_series(bioformats2raw, capsys):
    image = open_image(bioformats2raw)
    assert image.kind == "ome-zarr" and image.flavour == "bioformats2raw" and image.shape == (20, 30, 3)
    second = open_image(bioformats2raw, series=1)
    assert second.shape == (10, 12, 1) and int(second.data[0, 0, 0].compute()) == 9
    with pytest.raises(InputError, match="--series 2 does not exist in .*: it has 2 series"):
        open_image(bioformats2raw, series=2)
    assert main(["info", bioformats2raw]) == 0
    stdout = capsys.readouterr().out
    assert "0 'whole': 3x20x30 (CYX); 1 'macro': 1x10x12 (CYX)" in stdout and "reader: zarr" in stdout


def test_series_beyond_a_single_image_is_refused(tmp_path):
    path = str(tmp_path / "one.tif")
    tifffile.imwrite(path, make_blob_image(20, 20), photometric="rgb")
    with pytest.raises(InputError, match="--series 1 does not exist in .*: it has 1 series"):
        open_image(path, series=1)


@pytest.fixture
def zcyx(tmp_path) -> tuple[str, np.ndarray]:
    """A ZCYX OME-TIFF: three Z planes of a two-channel 48x56 uint8 image."""
    stack = np.stack([make_blob_image(48, 56, seed=z)[..., :2].transpose(2, 0, 1) for z in range(3)])
    path = str(tmp_path / "zcyx.ome.tif")
    tifffile.imwrite(path, stack, metadata={"axes": "ZCYX"}, ome=True)
    return path, stack


def test_a_stack_needs_a_plane(zcyx):
    path, stack = zcyx
    with pytest.raises(InputError, match=r"holds 3 Z planes; .* pick it with --plane z=K \(K from 0 to 2\)"):
        open_image(path)
    image = open_image(path, plane={"z": 1})
    np.testing.assert_array_equal(image.data.compute(), stack[1].transpose(1, 2, 0))
    with pytest.raises(InputError, match="--plane z=3 does not exist in .*: it has 3 Z plane"):
        open_image(path, plane={"z": 3})
    with pytest.raises(InputError, match="--plane t=1 does not exist in .*: it has no T axis"):
        open_image(path, plane={"z": 0, "t": 1})
    with pytest.raises(InputError, match="--plane axis 'q' is unknown"):
        open_image(path, plane={"q": 0})


def test_channels_pick_and_order(tmp_path):
    pixels = make_blob_image(30, 40)
    path = str(tmp_path / "rgb.tif")
    tifffile.imwrite(path, pixels, photometric="rgb", tile=(16, 16))
    image = open_image(path, channels=(2, 0))
    np.testing.assert_array_equal(image.data.compute(), pixels[..., [2, 0]])
    np.testing.assert_array_equal(image.source[3:9, 5:7, :], pixels[3:9, 5:7][..., [2, 0]])
    with pytest.raises(InputError, match=r"--channels 3 does not exist in .*: it has 3 channel\(s\)"):
        open_image(path, channels=(0, 3))


def _labels(source: str, out: str, read: ReadOptions) -> np.ndarray:
    fit = FitOptions(clusters=3, sample_size=2000)
    segment(source, out, read=read, fit=fit, output=OutputOptions(previews=False))
    return np.asarray(zarr.open_array(f"{out}/0", mode="r")[:])


@pytest.mark.slow
def test_a_tiff_plane_segments_as_that_plane_alone(tmp_path, zcyx):
    path, stack = zcyx
    alone = str(tmp_path / "alone.ome.tif")
    tifffile.imwrite(alone, stack[2], metadata={"axes": "CYX"}, ome=True)
    picked = _labels(path, str(tmp_path / "a.zarr"), ReadOptions(plane="z=2", chunk=32))
    np.testing.assert_array_equal(picked, _labels(alone, str(tmp_path / "b.zarr"), ReadOptions(chunk=32)))


@pytest.mark.slow
def test_an_ome_zarr_plane_segments_as_that_plane_alone(tmp_path):
    stack = np.stack(
        [np.stack([make_blob_image(40, 44, seed=10 * t + z).transpose(2, 0, 1) for z in range(4)], 1) for t in range(2)]
    )
    assert stack.shape == (2, 3, 4, 40, 44)  # T, C, Z, Y, X
    path = tmp_path / "tczyx.zarr"
    _ome_image(zarr.open_group(path, mode="w", zarr_format=3), stack, "tczyx")
    with pytest.raises(InputError, match="holds 2 T planes"):
        open_image(path, plane={"z": 1})
    image = open_image(path, plane={"t": 1, "z": 3})
    np.testing.assert_array_equal(image.data.compute(), stack[1, :, 3].transpose(1, 2, 0))
    alone = tmp_path / "alone.zarr"
    _ome_image(zarr.open_group(alone, mode="w", zarr_format=3), stack[1, :, 3], "cyx")
    picked = _labels(str(path), str(tmp_path / "a.zarr"), ReadOptions(plane={"t": 1, "z": 3}, chunk=32))
    np.testing.assert_array_equal(picked, _labels(str(alone), str(tmp_path / "b.zarr"), ReadOptions(chunk=32)))


@pytest.mark.parametrize("name", ["x.ndpi", "x.qptiff"])
def test_tiff_based_formats_are_read_by_content(tmp_path, capsys, name):
    path = str(tmp_path / name)
    tifffile.imwrite(path, make_blob_image(32, 48), photometric="rgb", tile=(16, 16), bigtiff=True)
    assert main(["info", path]) == 0
    stdout = capsys.readouterr().out
    assert "format: tiff" in stdout and "reader: tifffile" in stdout and "shape: 32x48x3" in stdout
