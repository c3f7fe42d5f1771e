"""Pixel sizes come from each format's own metadata; a missing or default value is unknown (None)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile
import zarr
from conftest import make_blob_image

from pixseg.io.label_groups import ome_label_metadata
from pixseg.io.readers import open_image
from pixseg.io.readers.pixel_size import resolution_pixel_size
from pixseg.options import FitOptions, OutputOptions
from pixseg.runner import segment

PIXELS = make_blob_image(40, 50)
APERIO = "Aperio Image Library v12.0.15\n50x40 [0,0 50x40] (32x32) RAW|AppMag = 20|MPP = 0.4990|Filename = x"


def _tiff(tmp_path, **kwargs) -> str:
    path = str(tmp_path / "image.tif")
    tifffile.imwrite(path, PIXELS, photometric="rgb", **kwargs)
    return path


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, None),  # no resolution tags: tifffile reports (1, 1) inch
        ({"resolution": (72.0, 72.0), "resolutionunit": "INCH"}, None),  # a screen default
        ({"resolution": (96.0, 96.0), "resolutionunit": "INCH"}, None),
        ({"resolution": (300.0, 300.0), "resolutionunit": "INCH"}, None),  # a print default
        ({"resolution": (25400.0, 25400.0), "resolutionunit": "INCH"}, (1.0, 1.0)),
        ({"resolution": (40000.0, 20000.0), "resolutionunit": "CENTIMETER"}, (0.5, 0.25)),
        ({"resolution": (72 / 2.54, 72 / 2.54), "resolutionunit": "CENTIMETER"}, None),  # 72 dpi in cm
        ({"resolution": (40000.0, 40000.0), "resolutionunit": "NONE"}, None),
        ({"description": APERIO, "tile": (32, 32)}, (0.499, 0.499)),
    ],
)
def test_tiff_pixel_size_from_resolution_tags_and_aperio(tmp_path, kwargs, expected):
    size = open_image(_tiff(tmp_path, **kwargs)).pixel_size
    assert size == (pytest.approx(expected) if expected else None)


@pytest.mark.parametrize(("unit", "expected"), [("µm", 0.25), ("nm", 250e-3)])
def test_ome_physical_size_in_its_unit(tmp_path, unit, expected):
    path = str(tmp_path / "image.ome.tif")
    value = 0.25 if unit == "µm" else 250.0
    metadata = {"axes": "YXS", "PhysicalSizeX": value, "PhysicalSizeY": value}
    tifffile.imwrite(
        path, PIXELS, photometric="rgb", metadata={**metadata, "PhysicalSizeXUnit": unit, "PhysicalSizeYUnit": unit}
    )
    assert open_image(path).pixel_size == pytest.approx((expected, expected))


def test_pyramid_levels_scale_the_pixel_size(tmp_path):
    path = str(tmp_path / "pyramid.tif")
    with tifffile.TiffWriter(path) as tif:
        options = {"tile": (16, 16), "photometric": "rgb", "resolutionunit": "CENTIMETER"}
        tif.write(PIXELS, subifds=1, resolution=(40000.0, 40000.0), **options)
        tif.write(PIXELS[::2, ::2], subfiletype=1, resolution=(20000.0, 20000.0), **options)
    assert open_image(path, level=1).pixel_size == pytest.approx((0.5, 0.5))


@pytest.mark.parametrize(
    ("unit", "expected"), [("micrometer", (0.5, 0.25)), ("nanometer", (0.5e-3, 0.25e-3)), (None, None)]
)
def test_ome_zarr_scale_with_axis_units(tmp_path, unit, expected):
    path = tmp_path / "image.zarr"
    group = zarr.open_group(path, mode="w", zarr_format=3)
    group.create_array("0", shape=(3, 40, 50), chunks=(3, 16, 16), dtype=np.uint8)[:] = PIXELS.transpose(2, 0, 1)
    axes = [{"name": "c", "type": "channel"}, *({"name": a, "type": "space", "unit": unit} for a in "yx")]
    scale = {"type": "scale", "scale": [1.0, 0.5, 0.25]}
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [{"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": [scale]}]}],
    }
    size = open_image(path).pixel_size
    assert size == (pytest.approx(expected) if expected else None)


def test_resolution_rules():
    assert resolution_pixel_size(1, (40000.0, 40000.0)) is None  # unit NONE
    assert resolution_pixel_size(3, (1.0, 1.0)) is None
    assert resolution_pixel_size(2, (999.0, 999.0)) is None
    assert resolution_pixel_size(2, (2540.0, 5080.0)) == pytest.approx((5.0, 10.0))


def test_unknown_pixel_size_writes_no_micrometre_scale():
    multiscale = ome_label_metadata(n_levels=2, name="l", pixel_size=None, properties=[], source_image=None)
    (entry,) = multiscale["multiscales"]
    assert all("unit" not in axis for axis in entry["axes"])
    assert entry["datasets"][1]["coordinateTransformations"][0]["scale"] == [2.0, 2.0]


@pytest.mark.slow
def test_unknown_pixel_size_warns_once_and_the_option_sets_it(tmp_path, caplog):
    source = _tiff(tmp_path, resolution=(72.0, 72.0), resolutionunit="INCH")
    fit = FitOptions(clusters=3, sample_size=500)
    with caplog.at_level(logging.WARNING):
        result = segment(source, str(tmp_path / "a.zarr"), fit=fit, output=OutputOptions(previews=False))
    warned = [r.getMessage() for r in caplog.records if "pixel size unknown" in r.getMessage()]
    assert warned == ["pixel size unknown: areas in pixels; pass --pixel-size UM to set it"]
    assert all(row.get("area_um2") is None for row in result.statistics)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        given = OutputOptions(previews=False, pixel_size=(0.5, 0.5))
        result = segment(source, str(tmp_path / "b.zarr"), fit=fit, output=given)
    assert not [r for r in caplog.records if "pixel size unknown" in r.getMessage()]
    assert zarr.open_group(tmp_path / "b.zarr").attrs["ome"]["multiscales"][0]["axes"][0]["unit"] == "micrometer"
