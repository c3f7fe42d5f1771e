"""Named and merged classes: the class table, model schema 3, ``pixseg classes``, class outputs and ``pixseg relabel``.

References are independent of pixseg's writers: arrays are read with zarr and tifffile and the
class ids computed with numpy from the stored cluster ids.
"""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import tifffile
import zarr
from model_documents import model_document

from pixseg.classes import (
    PixelClass,
    classes_from_mapping,
    edit_classes,
    make_class_table,
    map_clusters,
    parse_edits,
)
from pixseg.cli import main
from pixseg.errors import ParameterError
from pixseg.io.model_file import load_model

#: Five flat colour bands: five well-separated clusters whatever the seed.
BANDS = ((20, 20, 200), (200, 30, 30), (30, 200, 30), (240, 240, 240), (120, 120, 0))


def _run(*argv: str) -> int:
    return main([*argv])


def _one_line_error(capsys: pytest.CaptureFixture[str], code: int, *fragments: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


# --- the pure class table ---------------------------------------------------------------------


def test_edits_order_classes_by_first_cluster_and_lookup_maps_clusters():
    edits = parse_edits(["5=nuclei"], ["4,2=stroma"], ["stroma=#7B3294", "1=#000000"])
    table = edit_classes(None, edits, n_clusters=6)
    assert [c.clusters for c in table.classes] == [(1,), (2, 4), (3,), (5,), (6,)]
    assert [c.title for c in table.classes] == ["cluster 1", "stroma", "cluster 3", "nuclei", "cluster 6"]
    assert table.classes[1].colour == "#7b3294" and table.classes[0].colour == "#000000"
    lookup = table.lookup()
    assert lookup.tolist() == [0, 1, 2, 3, 2, 4, 5] and lookup.dtype == np.uint8
    clusters = np.array([[0, 1, 2], [4, 5, 6]], dtype=np.uint8)
    np.testing.assert_array_equal(map_clusters(clusters, lookup), np.array([[0, 1, 2], [2, 4, 5]]))


def test_editing_an_edited_table_keeps_what_is_not_touched():
    first = edit_classes(None, parse_edits([], ["3,4=background"], ["background=#dddddd"]), n_clusters=5)
    second = edit_classes(first, parse_edits(["1=nuclei"], [], []), n_clusters=5)
    assert [(c.clusters, c.name, c.colour) for c in second.classes] == [
        ((1,), "nuclei", None),
        ((2,), None, None),
        ((3, 4), "background", "#dddddd"),
        ((5,), None, None),
    ]
    # merging the class again under its name keeps its colour
    third = edit_classes(second, parse_edits([], ["3,4,5=background"], []), n_clusters=5)
    assert third.classes[-1] == PixelClass((3, 4, 5), "background", "#dddddd")


def test_yaml_mapping_equals_the_same_flags():
    document = {"classes": {"nuclei": 1, "background": {"clusters": [3, 4], "colour": "#DDDDDD"}}}
    from_yaml = classes_from_mapping(document, n_clusters=5, source="c.yaml")
    from_flags = edit_classes(None, parse_edits(["1=nuclei"], ["3,4=background"], ["background=#dddddd"]), n_clusters=5)
    assert from_yaml == from_flags


@pytest.mark.parametrize(
    ("names", "merges", "colours", "fragment"),
    [
        (["9=x"], [], [], "cluster 9 does not exist"),
        (["3=a"], ["3,4=b"], [], "cluster 3 is given twice"),
        (["1=x", "2=x"], [], [], "'x' is given twice"),
        ([], [], ["x=red"], "'red'"),
        ([], [], ["nobody=#000000"], "no class is named 'nobody'"),
        (["one=x"], [], [], "CLUSTER=NAME"),
        ([], ["3;4=b"], [], "A,B"),
        (["1="], [], [], "CLUSTER=NAME"),
    ],
)
def test_bad_edits_name_the_value(names, merges, colours, fragment):
    with pytest.raises(ParameterError, match=None) as info:
        edit_classes(None, parse_edits(names, merges, colours), n_clusters=5)
    assert fragment in str(info.value)


def test_table_checks_clusters_once_each():
    with pytest.raises(ParameterError, match="two classes"):
        make_class_table(3, [PixelClass((1, 2)), PixelClass((2,))])
    with pytest.raises(ParameterError, match="given twice"):
        make_class_table(3, [PixelClass((1,), "a"), PixelClass((2,), "a")])


# --- model files --------------------------------------------------------------------------------


def _v2(n_clusters: int = 3) -> dict:
    """A schema-2 model document of the shape the version-2 writer gave (no ``classes`` key)."""
    return model_document(n_clusters=n_clusters, schema_version=2, provenance={"input": "somewhere.tif"})


def _v1(document: dict) -> dict:
    """The schema-1 shape: one ``value_range`` for all channels, no texture or mask fields."""
    features = {key: document["features"][key] for key in ("groups", "n_channels", "has_alpha", "dtype")}
    old = {key: value for key, value in document.items() if key != "feature_columns"}
    return {**old, "schema_version": 1, "features": {**features, "value_range": [0.0, 255.0]}}


@pytest.mark.parametrize("version", [1, 2])
def test_old_schema_versions_load_without_classes(tmp_path, version):
    document = _v2()
    if version == 1:
        document = _v1(document)
    path = tmp_path / f"v{version}.json"
    path.write_text(json.dumps(document))
    model = load_model(str(path))
    assert model.classes is None
    np.testing.assert_array_equal(model.centroids, np.array(document["centroids"]))


def test_classes_round_trip_through_model_json(tmp_path, capsys):
    source = tmp_path / "m.json"
    source.write_text(json.dumps(_v2(5)))
    before = source.read_bytes()
    argv = ["classes", str(source), "--name", "1=nuclei", "--merge", "3,4=background", "--colour", "nuclei=#7b3294"]
    assert _run(*argv, "-o", str(tmp_path / "named.json")) == 0
    assert source.read_bytes() == before  # the input model is never modified without --in-place
    written = json.loads((tmp_path / "named.json").read_text())
    assert written["schema_version"] == 3
    assert written["provenance"] == {"input": "somewhere.tif"}
    assert written["classes"]["classes"] == [
        {"id": 1, "clusters": [1], "name": "nuclei", "colour": "#7b3294"},
        {"id": 2, "clusters": [2], "name": None, "colour": None},
        {"id": 3, "clusters": [3, 4], "name": "background", "colour": None},
        {"id": 4, "clusters": [5], "name": None, "colour": None},
    ]
    model = load_model(str(tmp_path / "named.json"))
    assert model.classes is not None and model.classes.lookup().tolist() == [0, 1, 2, 3, 3, 4]
    capsys.readouterr()
    assert _run("classes", str(tmp_path / "named.json")) == 0  # no edits: the table is printed
    table = capsys.readouterr().out
    assert "nuclei" in table and "3,4" in table and "#7b3294" in table


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--name", "1=a"], "pass -o NEW.json"),
        (["--name", "6=a", "-o", "{d}/o.json"], "cluster 6 does not exist"),
        (["--name", "1=a", "--merge", "1,2=b", "-o", "{d}/o.json"], "cluster 1 is given twice"),
        (["--name", "1=a", "--name", "2=a", "-o", "{d}/o.json"], "'a' is given twice"),
        (["--colour", "cluster 1=#12345", "-o", "{d}/o.json"], "'#12345'"),
        (["--name", "1=a", "-o", "{d}/m.json"], "--in-place"),
        (["--name", "1=a", "-o", "{d}/notes.json"], "not a pixseg model file"),
        (["{d}/dup.yaml", "-o", "{d}/o.json"], "duplicate key 'a'"),
        (["{d}/bad.yaml", "-o", "{d}/o.json"], "cluster 7 does not exist"),
    ],
)
def test_classes_command_refuses_bad_input_in_one_line(tmp_path, capsys, extra, fragment):
    (tmp_path / "m.json").write_text(json.dumps(_v2(5)))
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    (tmp_path / "dup.yaml").write_text("classes:\n  a: 1\n  a: 2\n")
    (tmp_path / "bad.yaml").write_text("classes:\n  a: [1, 7]\n")
    code = _run("classes", str(tmp_path / "m.json"), *(arg.format(d=tmp_path) for arg in extra))
    _one_line_error(capsys, code, fragment)
    assert json.loads((tmp_path / "notes.json").read_text()) == {"mine": 1}


def test_in_place_replaces_the_model(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(_v2(3)))
    assert _run("classes", str(path), "--merge", "1,2=tissue", "--in-place") == 0
    assert load_model(str(path)).classes.classes[0].name == "tissue"


# --- outputs and relabel ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """A 5-band image segmented into 5 clusters (saved model), and a class model from it."""
    directory = tmp_path_factory.mktemp("classes")
    rng = np.random.default_rng(0)
    image = np.zeros((200, 1100, 3), np.int16)  # wider than 1024: a two-level pyramid
    for i, colour in enumerate(BANDS):
        image[:, i * 220 : (i + 1) * 220] = colour
    image = np.clip(image + rng.integers(-5, 6, image.shape), 0, 255).astype(np.uint8)
    tifffile.imwrite(directory / "in.tif", image, tile=(128, 128))
    common = ["--chunk", "128", "-q"]
    model, named = str(directory / "m.json"), str(directory / "named.json")
    assert (
        _run(
            "segment",
            str(directory / "in.tif"),
            str(directory / "seg.zarr"),
            "--clusters",
            "5",
            "--save-model",
            model,
            *common,
        )
        == 0
    )
    argv = ["classes", model, "--name", "1=nuclei", "--merge", "3,4=stroma", "--colour", "nuclei=#7b3294", "-o", named]
    assert _run(*argv) == 0
    return directory


def _group(path) -> zarr.Group:
    return zarr.open_group(str(path), mode="r")


@pytest.mark.slow
def test_apply_writes_class_ids_with_names_and_colours(segmented, tmp_path):
    out = tmp_path / "app.zarr"
    assert (
        _run("apply", str(segmented / "named.json"), str(segmented / "in.tif"), str(out), "--chunk", "128", "-q") == 0
    )
    group, seg = _group(out), _group(segmented / "seg.zarr")
    clusters = seg["0"][:]  # the plain segmentation holds the cluster ids
    np.testing.assert_array_equal(group["clusters"][:], clusters)
    lookup = np.array([0, 1, 2, 3, 3, 4])
    np.testing.assert_array_equal(group["0"][:], lookup[clusters])
    label = group.attrs["ome"]["image-label"]
    assert [c["label-value"] for c in label["colors"]] == [1, 2, 3, 4]
    assert label["colors"][0]["rgba"] == [0x7B, 0x32, 0x94, 255]
    names = {p["label-value"]: p["name"] for p in label["properties"]}
    assert names[1] == "nuclei" and names[3] == "stroma" and names[2] == "cluster 2"
    assert label["properties"][2]["clusters"] == [3, 4]
    rows = json.loads((tmp_path / "app.zarr.stats.json").read_text())["labels"]
    assert [r["pixels"] for r in rows] == [int(np.count_nonzero(lookup[clusters] == v)) for v in (1, 2, 3, 4)]
    with open(tmp_path / "app.zarr.stats.csv", newline="") as handle:
        assert [r["name"] for r in csv.DictReader(handle)][:3] == ["nuclei", "cluster 2", "stroma"]
    from pixseg.view.sources import legend, open_output

    assert [entry["name"] for entry in legend(open_output(str(out)))][:3] == ["nuclei", "cluster 2", "stroma"]
    assert "nuclei" in (tmp_path / "app.zarr.report.html").read_text()


@pytest.mark.slow
def test_apply_to_tiff_writes_class_palette_and_relabel_refuses_it(segmented, tmp_path, capsys):
    out = tmp_path / "app.tif"
    assert (
        _run("apply", str(segmented / "named.json"), str(segmented / "in.tif"), str(out), "--chunk", "128", "-q") == 0
    )
    with tifffile.TiffFile(out) as tif:
        page = tif.pages.first
        values = page.asarray()
        colormap = page.colormap
    assert sorted(np.unique(values).tolist()) == [1, 2, 3, 4]
    assert (colormap[:, 1] // 257).tolist() == [0x7B, 0x32, 0x94]
    capsys.readouterr()
    code = _run("relabel", str(out), str(segmented / "named.json"))
    _one_line_error(capsys, code, "TIFF output keeps only the label values")


def _same_output(left, right) -> None:
    a, b = _group(left), _group(right)
    levels = [k for k in ("0", "1", "2", "clusters") if k in a]
    assert levels == [k for k in ("0", "1", "2", "clusters") if k in b] and "1" in levels
    for key in levels:
        np.testing.assert_array_equal(a[key][:], b[key][:])
        assert a[key].dtype == b[key].dtype
    assert a.attrs["ome"]["image-label"] == b.attrs["ome"]["image-label"]
    assert a.attrs["pixseg"]["statistics"] == b.attrs["pixseg"]["statistics"]
    assert a.attrs["pixseg"]["complete"] is True


@pytest.mark.slow
def test_relabel_equals_apply_and_can_be_redone(segmented, tmp_path, monkeypatch):
    named, image = str(segmented / "named.json"), str(segmented / "in.tif")
    work = tmp_path / "seg.zarr"
    # a copy of the plain segmentation, and the apply of the class model to compare with
    shutil.copytree(segmented / "seg.zarr", work)
    assert _run("apply", named, image, str(tmp_path / "app.zarr"), "--chunk", "128", "-q") == 0
    assert _run("relabel", str(work), named, "-q") == 0
    _same_output(work, tmp_path / "app.zarr")
    # another table, from YAML, over a relabelled output: equal to apply with that table's model
    (tmp_path / "other.yaml").write_text("classes:\n  glass: [4, 5]\n  dark: {clusters: [1, 2], colour: '#112233'}\n")
    other = str(tmp_path / "other.json")
    assert _run("classes", str(segmented / "m.json"), str(tmp_path / "other.yaml"), "-o", other) == 0
    assert _run("apply", other, image, str(tmp_path / "app2.zarr"), "--chunk", "128", "-q") == 0

    import pixseg.relabel

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pixseg.relabel, "write_pyramid", interrupted)
    assert _run("relabel", str(work), str(tmp_path / "other.yaml"), "-q") == 130
    status = _group(work).attrs["pixseg"]
    assert status["complete"] is False and "ome" not in _group(work).attrs
    monkeypatch.undo()
    assert _run("apply", named, image, str(work), "--chunk", "128", "--resume", "-q") == 2  # not its own run
    assert _run("relabel", str(work), str(tmp_path / "other.yaml"), "-q") == 0
    _same_output(work, tmp_path / "app2.zarr")
    assert _group(work).attrs["pixseg"]["fingerprint"] == _group(segmented / "seg.zarr").attrs["pixseg"]["fingerprint"]


def test_relabel_refuses_missing_and_foreign_outputs(tmp_path, capsys):
    code = _run("relabel", str(tmp_path / "none.zarr"), str(tmp_path / "c.yaml"))
    _one_line_error(capsys, code, "does not exist")
    zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w")
    code = _run("relabel", str(tmp_path / "foreign.zarr"), str(tmp_path / "c.yaml"))
    _one_line_error(capsys, code, "is not a pixseg label output")
    assert os.path.isdir(tmp_path / "foreign.zarr")
    assert sorted(os.listdir(tmp_path)) == ["foreign.zarr"]  # no lock or side file beside a foreign store


@pytest.mark.slow
def test_resumed_apply_with_classes_equals_an_uninterrupted_one(segmented, tmp_path):
    named, image = str(segmented / "named.json"), str(segmented / "in.tif")
    out = tmp_path / "app.zarr"
    assert _run("apply", named, image, str(tmp_path / "whole.zarr"), "--chunk", "128", "-q") == 0
    assert _run("apply", named, image, str(out), "--chunk", "128", "-q") == 0
    # as if interrupted: two chunks missing, one with its class chunk written but not its cluster ids
    os.remove(out / "clusters" / "c" / "0" / "0")
    os.remove(out / "0" / "c" / "1" / "5")
    os.remove(out / "clusters" / "c" / "1" / "5")
    group = zarr.open_group(str(out), mode="r+")
    group.attrs.put({"pixseg": {**group.attrs["pixseg"], "complete": False}})
    assert _run("apply", named, image, str(out), "--chunk", "128", "--resume", "-q") == 0
    _same_output(out, tmp_path / "whole.zarr")
