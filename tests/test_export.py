"""``pixseg export --geojson``: valid polygons that follow pixel edges, areas equal pixel counts,
holes, minimum area, level-0 coordinates, QuPath's properties, zarr and TIFF outputs, exit 2."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
import tifffile
import zarr
from conftest import BLOB_COLOURS
from shapely.geometry import shape

from pixseg.cli import main
from pixseg.export import default_level, export_geojson, label_classes, region_features
from pixseg.options import FitOptions
from pixseg.runner import segment

CLASSES = label_classes([], 4)


def _areas(features, classes=CLASSES) -> dict[int, float]:
    names = {c["name"]: label for label, c in classes.items()}
    areas: dict[int, float] = defaultdict(float)
    for feature in features:
        areas[names[feature["properties"]["classification"]["name"]]] += shape(feature["geometry"]).area
    return dict(areas)


def test_regions_follow_pixel_edges_with_holes():
    labels = np.zeros((10, 14), np.uint8)  # 0 = masked: no feature
    labels[1:8, 1:9] = 1
    labels[3:5, 3:6] = 2  # a hole in label 1's region
    labels[0, 13] = 2  # a 1-pixel speck
    labels[6:10, 10:14] = 3
    features = list(region_features(labels, CLASSES, level=0, min_area=0))
    assert len(features) == 4
    assert all(shape(f["geometry"]).is_valid and f["geometry"]["type"] == "Polygon" for f in features)
    assert _areas(features) == {1: 56 - 6, 2: 7, 3: 16}
    (outer,) = [f for f in features if f["properties"]["classification"]["name"] == "label 1"]
    assert len(outer["geometry"]["coordinates"]) == 2  # exterior and the hole
    assert shape(outer["geometry"]).bounds == (1, 1, 9, 8)
    assert outer["properties"] == {
        "objectType": "annotation",
        "classification": {"name": "label 1", "color": CLASSES[1]["color"]},
    }


def test_min_area_and_level_scaling():
    labels = np.zeros((6, 6), np.uint16)
    labels[0:3, 0:3] = 1
    labels[5, 5] = 2
    features = list(region_features(labels, CLASSES, level=2, min_area=17))  # the speck covers 16 level-0 px
    assert _areas(features) == {1: 9 * 16}
    assert shape(features[0]["geometry"]).bounds == (0, 0, 12, 12)
    assert all(isinstance(v, int) for ring in features[0]["geometry"]["coordinates"] for xy in ring for v in xy)
    assert len(list(region_features(labels, CLASSES, level=2, min_area=16))) == 2


def test_default_level_and_classes():
    assert default_level([(8200, 5000), (4100, 2500), (2050, 1250)]) == 2
    assert default_level([(8192, 5000), (4096, 2500), (2048, 1250)]) == 1
    assert default_level([(4096, 10)]) == 0
    assert default_level([(9000, 9000), (4500, 4500)]) == 1  # none small enough: the coarsest
    rows = [{"label": 1, "name": "background", "colour": "#dddddd"}, {"label": 2, "colour_rgba": [1, 2, 3, 255]}]
    classes = label_classes(rows, 3)
    assert classes[1] == {"name": "background", "color": [221, 221, 221]}
    assert classes[2] == {"name": "label 2", "color": [1, 2, 3]}
    assert classes[3] == CLASSES[3]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """A 1100 x 300 image of colour blocks and 6 x 6 patches, segmented (K = 4) into a zarr and a
    TIFF output of two levels."""
    directory = tmp_path_factory.mktemp("export")
    source = str(directory / "tall.tif")
    yy, xx = np.mgrid[0:1100, 0:300]
    region = (yy // 275 + xx // 150) % 3
    region[(yy % 100 < 6) & (xx % 50 < 6)] = 3  # small patches inside the blocks
    noise = np.random.default_rng(2).normal(0.0, 4.0, (1100, 300, 3))
    pixels = np.clip(BLOB_COLOURS[region] + noise, 0, 255).astype(np.uint8)
    tifffile.imwrite(source, pixels, tile=(128, 128), photometric="rgb")
    fit = FitOptions(clusters=4, sample_size=3000)
    zarr_out, tiff_out = str(directory / "o.zarr"), str(directory / "o.tif")
    segment(source, zarr_out, fit=fit)
    segment(source, tiff_out, fit=fit)
    return zarr_out, tiff_out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["zarr", "tiff"])
@pytest.mark.parametrize("level", [0, 1])
def test_areas_equal_pixel_counts_of_the_traced_level(outputs, tmp_path, kind, level):
    output = outputs[0] if kind == "zarr" else outputs[1]
    target = str(tmp_path / "o.geojson")
    result = export_geojson(output, target, level=level, min_area=0)
    stored = zarr.open_group(outputs[0], mode="r")[str(level)][:]
    assert result.shape == stored.shape and result.level == level
    with open(target, encoding="utf-8") as handle:
        document = json.load(handle)
    assert document["type"] == "FeatureCollection" and len(document["features"]) == result.n_features
    assert all(shape(f["geometry"]).is_valid for f in document["features"])
    with open(outputs[0] + ".stats.json", encoding="utf-8") as handle:
        classes = label_classes(json.load(handle)["labels"], 4)  # the output's names and colours
    counts = {label: int((stored == label).sum()) * 4**level for label in (1, 2, 3, 4)}
    assert _areas(document["features"], classes) == {label: n for label, n in counts.items() if n}
    assert all(f["properties"]["classification"] in classes.values() for f in document["features"])
    x0, y0, x1, y1 = np.array([shape(f["geometry"]).bounds for f in document["features"]]).T
    assert x0.min() == 0 and y0.min() == 0 and x1.max() == 300 and y1.max() == 1100  # level-0 pixels


@pytest.mark.slow
def test_cli_default_level_min_area_and_exit_2(outputs, tmp_path, capsys):
    zarr_out, tiff_out = outputs
    target = tmp_path / "o.geojson"
    assert main(["export", zarr_out, "--geojson", str(target), "-q"]) == 0
    assert "level 0" in capsys.readouterr().out  # 1100 x 300 is within 4096 x 4096
    everything = json.loads(target.read_text())["features"]
    assert all(shape(f["geometry"]).area >= 16 for f in everything)
    assert main(["export", zarr_out, "--geojson", str(target), "--min-area", "5000", "--overwrite", "-q"]) == 0
    large = json.loads(target.read_text())["features"]
    assert 0 < len(large) < len(everything) and all(shape(f["geometry"]).area >= 5000 for f in large)
    cases = [
        (["export", zarr_out, "--geojson", str(target)], "already exists"),
        (["export", tiff_out, "--geojson", str(tmp_path / "b.geojson"), "--level", "2"], "level 2 does not exist"),
        (["export", str(tmp_path), "--geojson", str(tmp_path / "c.geojson")], "not a pixseg label output"),
        (["export", zarr_out + ".stats.json", "--geojson", str(tmp_path / "d.geojson")], "not a pixseg label output"),
        (["export", tiff_out, "--geojson", tiff_out, "--overwrite"], "inside) the output"),
        (["export", zarr_out, "--geojson", str(tmp_path / "e.geojson"), "--min-area", "-1"], "min_area"),
        (["export", zarr_out, "--geojson", str(tmp_path / "f.geojson"), "--level", "x"], "invalid int"),
        (["export", zarr_out, "--geojson", str(tmp_path / "g.geojson"), "--level", "-1"], "level -1 does not exist"),
        (["export", zarr_out], "--geojson"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "b.geojson").exists()
