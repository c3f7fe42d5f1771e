"""``--regions``: areas per label inside QuPath-style GeoJSON regions, against shapely and numpy."""

from __future__ import annotations

import csv
import json

import dask.array as da
import numpy as np
import pytest
import shapely
import shapely.geometry
import tifffile

from pixseg.cli import main
from pixseg.errors import InputError
from pixseg.regions import parse_regions, region_counts, region_mask, ring_self_intersects

SHAPE = (37, 53)

# vertices off the pixel-centre grid, so no centre lies on an edge and both references agree exactly
TRIANGLE = [[2.3, 1.7], [50.2, 9.6], [20.4, 35.3], [2.3, 1.7]]
SQUARE_WITH_HOLE = [
    [[15.2, 4.1], [44.7, 4.1], [44.7, 30.6], [15.2, 30.6], [15.2, 4.1]],
    [[22.3, 10.4], [35.6, 12.2], [30.1, 24.8], [22.3, 10.4]],
]
MULTI = [[[[0.4, 20.2], [10.6, 20.2], [10.6, 36.9], [0.4, 36.9]]], SQUARE_WITH_HOLE]


def _feature(geometry: dict, properties: dict | None = None) -> dict:
    return {"type": "Feature", "properties": properties or {}, "geometry": geometry}


def _collection(*features: dict) -> dict:
    return {"type": "FeatureCollection", "features": list(features)}


def _shapely_inside(geometry: dict, shape: tuple[int, int]) -> np.ndarray:
    """The pixels whose centres shapely finds inside ``geometry`` (the independent reference)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return shapely.contains_xy(shapely.geometry.shape(geometry), xx + 0.5, yy + 0.5)


GEOMETRIES = {
    "triangle": {"type": "Polygon", "coordinates": [TRIANGLE]},
    "hole": {"type": "Polygon", "coordinates": SQUARE_WITH_HOLE},
    "multi": {"type": "MultiPolygon", "coordinates": MULTI},
}


@pytest.mark.parametrize("name", GEOMETRIES)
def test_region_mask_equals_shapely_over_any_window(name):
    (region,) = parse_regions([_feature(GEOMETRIES[name])], SHAPE, source="r.geojson")
    reference = _shapely_inside(GEOMETRIES[name], SHAPE)
    np.testing.assert_array_equal(region_mask(region, (0, SHAPE[0], 0, SHAPE[1])), reference)
    np.testing.assert_array_equal(region_mask(region, (5, 19, 7, 30)), reference[5:19, 7:30])


def test_counts_cross_chunk_borders_and_equal_a_numpy_reference():
    labels = np.random.default_rng(3).integers(0, 5, SHAPE).astype(np.uint8)
    document = _collection(*(_feature(g, {"name": n}) for n, g in GEOMETRIES.items()))
    regions = parse_regions(document, SHAPE, source="r.geojson")
    counts = region_counts(da.from_array(labels, chunks=(8, 11)), regions, n_labels=5)
    for row, geometry in zip(counts, GEOMETRIES.values(), strict=True):
        expected = np.bincount(labels[_shapely_inside(geometry, SHAPE)], minlength=5)
        np.testing.assert_array_equal(row, expected)


def test_names_from_name_or_classification_and_a_partly_outside_region_is_clipped():
    outside = {"type": "Polygon", "coordinates": [[[40.2, 30.3], [80.6, 30.3], [80.6, 60.1], [40.2, 60.1]]]}
    document = [
        _feature(GEOMETRIES["triangle"], {"name": "tumour", "classification": {"name": "Tumor"}}),
        _feature(outside, {"classification": {"name": "Stroma"}}),
        _feature(GEOMETRIES["hole"]),
    ]
    regions = parse_regions(document, SHAPE, source="r.geojson")
    assert [r.name for r in regions] == ["tumour", "Stroma", "region 3"]
    counts = region_counts(da.from_array(np.ones(SHAPE, np.uint8), chunks=(8, 11)), regions, n_labels=2)
    assert counts[1, 1] == _shapely_inside(outside, SHAPE).sum() == (SHAPE[0] - 30) * (SHAPE[1] - 40)


BOW_TIE = [[0.5, 0.5], [10.5, 10.5], [10.5, 0.5], [0.5, 10.5]]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"type": "Point"}, "FeatureCollection or a list of Features"),
        (_collection(_feature({"type": "LineString", "coordinates": [[0, 0], [1, 1]]})), "Polygon or MultiPolygon"),
        (_collection(_feature({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 0]]]})), "3 distinct"),
        (_collection(_feature({"type": "Polygon", "coordinates": [BOW_TIE]}, {"name": "bt"})), "self-intersecting"),
        (_collection(_feature({"type": "Polygon", "coordinates": [[[1, 1], ["a", 2], [3, 1]]]})), "[x, y] numbers"),
        (
            _collection(_feature({"type": "Polygon", "coordinates": [[[100, 100], [120, 100], [120, 130]]]})),
            "lies outside the image",
        ),
    ],
)
def test_bad_regions_are_refused_naming_the_problem(document, message):
    with pytest.raises(InputError, match="r.geojson") as caught:
        parse_regions(document, SHAPE, source="r.geojson")
    assert message in str(caught.value)


def test_self_intersection_agrees_with_shapely_on_random_rings():
    rng = np.random.default_rng(0)
    for _ in range(600):
        ring = rng.integers(0, 6, (int(rng.integers(4, 9)), 2)).astype(float)
        if len(np.unique(ring, axis=0)) == len(ring):
            assert ring_self_intersects(ring) == (not shapely.LinearRing(ring).is_simple), ring.tolist()


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not readable JSON"),
        (json.dumps(_collection(_feature({"type": "Polygon", "coordinates": [BOW_TIE]}, {"name": "bt"}))), "'bt'"),
    ],
)
def test_cli_refuses_bad_regions_before_any_work(tmp_path, capsys, blob_tiff, content, message):
    regions = tmp_path / "r.geojson"
    regions.write_text(content)
    out = tmp_path / "out.zarr"
    code, _, err = _run(capsys, "segment", blob_tiff, out, "-k", "3", "--regions", regions, "-q")
    assert code == 2 and err.count("error: ") == 1 and message in err and "Traceback" not in err
    assert not out.exists()


def _region_pixels(rows: list[dict], name: str) -> np.ndarray:
    got = np.zeros(5, np.int64)
    for row in rows:
        if row["region"] == name:
            got[int(row["label"])] = int(row["pixels"])
    return got


@pytest.mark.slow
def test_segment_and_the_regions_command_write_areas_of_the_stored_labels(tmp_path, capsys, blob_image):
    source = tmp_path / "b.tif"
    tifffile.imwrite(source, blob_image, tile=(64, 64), photometric="rgb")
    height, width = blob_image.shape[:2]
    big = {"type": "Polygon", "coordinates": [[[10.2, 5.3], [200.7, 20.1], [150.4, 140.2], [12.1, 90.3]]]}
    regions = tmp_path / "r.geojson"
    regions.write_text(json.dumps(_collection(_feature(big, {"name": "A"}), _feature(GEOMETRIES["multi"]))))
    out, model = tmp_path / "out.tif", tmp_path / "m.json"
    argv = ["segment", source, out, "-k", "4", "--chunk", "64", "--pixel-size", "0.5", "--regions", regions]
    code, stdout, _ = _run(capsys, *argv, "--save-model", model, "-q")
    assert code == 0 and "region" in stdout
    labels = tifffile.imread(out)
    with open(f"{out}.regions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for name, geometry in (("A", big), ("region 2", GEOMETRIES["multi"])):
        expected = np.bincount(labels[_shapely_inside(geometry, (height, width))], minlength=5)
        np.testing.assert_array_equal(_region_pixels(rows, name), expected)
    for row in rows:
        assert float(row["area_um2"]) == pytest.approx(int(row["pixels"]) * 0.25)
    document = json.loads((tmp_path / "out.tif.regions.json").read_text())
    assert document["format"] == "pixseg-regions" and len(document["rows"]) == len(rows)
    assert "<h2>Regions</h2>" in (tmp_path / "out.tif.report.html").read_text()
    # the same areas from the finished outputs: the TIFF, and a zarr written by apply
    assert _run(capsys, "apply", model, source, tmp_path / "a.zarr", "--chunk", "64", "-q")[0] == 0
    for output in (out, tmp_path / "a.zarr"):
        code, stdout, _ = _run(capsys, "regions", output, regions, "-q")
        assert code == 0 and "side files:" in stdout
        written = json.loads((tmp_path / f"{output.name}.regions.json").read_text())["rows"]
        assert [r["pixels"] for r in written] == [int(r["pixels"]) for r in rows]
    code, _, err = _run(capsys, "regions", source, regions)
    assert code == 2 and "is not a pixseg label output" in err


def test_a_ring_of_thousands_of_vertices_fills_a_chunk_exactly():
    angle = np.linspace(0, 2 * np.pi, 5000, endpoint=False)
    radius = 300 * (1 + 0.05 * np.sin(40 * angle))
    ring = np.c_[256.3 + radius * np.cos(angle), 256.7 + radius * np.sin(angle)]
    geometry = {"type": "Polygon", "coordinates": [[*ring.tolist(), ring[0].tolist()]]}
    (region,) = parse_regions([_feature(geometry)], (512, 512), source="r.geojson")
    np.testing.assert_array_equal(region_mask(region, (0, 512, 0, 512)), _shapely_inside(geometry, (512, 512)))
