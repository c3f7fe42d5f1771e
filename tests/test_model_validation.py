"""Model files: every field is checked, and a bad one is refused with exit 2 and one short line."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from conftest import make_blob_image

from pixseg.cli import main
from pixseg.errors import ModelError
from pixseg.features import make_feature_spec
from pixseg.io.json_files import read_json_object
from pixseg.io.model_file import MAX_MODEL_BYTES, load_model, model_document, save_model
from pixseg.kmeans_fit import fit_model
from pixseg.options import MAX_CLUSTERS

#: The longest error line a bad model may give (path, field and a 60-character excerpt).
_MAX_LINE = 400


@pytest.fixture(scope="module")
def document() -> dict:
    """The JSON document of a sound 3-cluster model of RGB uint8 pixels."""
    pixels = make_blob_image(40, 50).reshape(-1, 3).astype(np.float32) / 255  # channel features are in [0, 1]
    spec = make_feature_spec("channels", n_channels=3, has_alpha=False, dtype=np.dtype(np.uint8))
    model = fit_model(pixels, spec, n_clusters=3, seed=0, restarts=1)
    return json.loads(json.dumps(model_document(model)))


@pytest.fixture
def image(tmp_path) -> str:
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, make_blob_image(48, 40), photometric="rgb")
    return str(path)


def _apply(tmp_path: Path, capsys, model: str, image: str) -> tuple[int, list[str]]:
    code = main(["apply", model, image, str(tmp_path / "out.zarr"), "-q"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.strip().splitlines()


def _refused(tmp_path: Path, capsys, model: str, image: str, fragment: str) -> str:
    code, lines = _apply(tmp_path, capsys, model, image)
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: model"), lines
    assert model in lines[0] and fragment in lines[0], lines[0]
    assert len(lines[0]) < _MAX_LINE, lines[0]
    assert not (tmp_path / "out.zarr").exists()
    return lines[0]


def _set(path: str, value):
    """A change to a document: set the field at dotted ``path`` (``features.dtype``) to ``value``."""

    def change(document: dict) -> None:
        *parents, last = path.split(".")
        node = document
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        elif value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return change


_DELETE = object()

BAD_FIELDS = [
    ("NaN centroid", _set("centroids.1.0", float("nan")), "field 'centroids' holds nan at [1, 0]"),
    ("inf centroid", _set("centroids.0.2", float("inf")), "field 'centroids' holds inf at [0, 2]"),
    ("-inf centroid", _set("centroids.2.1", float("-inf")), "holds -inf at [2, 1]"),
    ("1e999 centroid", _set("centroids.0.0", 1e999), "holds inf"),
    ("centroid too large for a float", _set("centroids.0.0", 10**400), "too large for a float64"),
    ("centroids of the wrong width", _set("centroids", [[1.0, 2.0], [3.0, 4.0]]), "lists of 3 numbers"),
    ("ragged centroids", _set("centroids", [[1.0, 2.0, 3.0], [3.0, 4.0]]), "lists of 3 numbers"),
    ("centroids nested deeper", _set("centroids", [[[1.0], [2.0], [3.0]]] * 2), "holds [1.0]"),
    ("one centroid", _set("centroids", [[1.0, 2.0, 3.0]]), "has 1 rows; expected 2 to"),
    ("no centroids", _set("centroids", []), "field 'centroids'"),
    ("centroids as text", _set("centroids", "[[1, 2, 3]]"), "field 'centroids' must be"),
    ("string in the centroids", _set("centroids.0.1", "7"), "holds '7'"),
    ("bool in the centroids", _set("centroids.0.1", True), "holds True"),
    ("missing centroids", _set("centroids", _DELETE), "field 'centroids' is missing"),
    ("mean of the wrong length", _set("feature_mean", [1.0, 2.0]), "field 'feature_mean' must be a list of 3"),
    ("NaN mean", _set("feature_mean.1", float("nan")), "field 'feature_mean' holds nan at [1]"),
    ("std 0", _set("feature_std.0", 0.0), "field 'feature_std' holds 0.0; every std must be > 0"),
    ("negative std", _set("feature_std.2", -1.5), "holds -1.5; every std must be > 0"),
    ("inf std", _set("feature_std.2", float("inf")), "field 'feature_std' holds inf"),
    ("negative seed", _set("seed", -1), "field 'seed' must be an integer from 0"),
    ("float seed", _set("seed", 1e999), "field 'seed' must be an integer"),
    ("sample smaller than K", _set("sample_size", 2), "field 'sample_size' must be an integer >= 3"),
    ("negative n_iter", _set("n_iter", -4), "field 'n_iter'"),
    ("NaN inertia", _set("sample_inertia", float("nan")), "field 'sample_inertia' must be a finite number"),
    ("note that is not text", _set("degenerate", 5), "field 'degenerate'"),
    ("wrong feature columns", _set("feature_columns", ["a", "b", "c"]), "field 'feature_columns'"),
    ("features not an object", _set("features", [1]), "field 'features'"),
    ("unknown dtype", _set("features.dtype", "nonsense"), "field 'dtype' must be the name of an integer or float"),
    ("object dtype", _set("features.dtype", "object"), "field 'dtype'"),
    ("dtype as a number", _set("features.dtype", 8), "field 'dtype'"),
    ("unknown group", _set("features.groups", ["channels", "nope"]), "field 'groups' must be names among"),
    ("no groups", _set("features.groups", []), "field 'groups'"),
    ("repeated group", _set("features.groups", ["channels", "channels"]), "distinct names"),
    (
        "RGB group on one channel",
        lambda d: d["features"].update(groups=["hed"], n_channels=1),
        "field 'n_channels' must be 3 for the RGB feature group 'hed'",
    ),
    ("zero channels", _set("features.n_channels", 0), "field 'n_channels' must be an integer from 1"),
    ("a billion channels", _set("features.n_channels", 10**9), "field 'n_channels'"),
    ("alpha as text", _set("features.has_alpha", "no"), "field 'has_alpha' must be true or false"),
    ("NaN channel range", _set("features.channel_ranges.0", [float("nan"), 255.0]), "field 'channel_ranges'"),
    ("reversed channel range", _set("features.channel_ranges.1", [255.0, 0.0]), "low < high"),
    ("too few channel ranges", _set("features.channel_ranges", [[0, 255]]), "a list of 3 [low, high] pairs"),
    ("sigma out of range", _set("features.sigmas", [1e9]), "field 'sigmas'"),
    ("NaN sigma", _set("features.sigmas", [float("nan")]), "field 'sigmas'"),
    ("unknown mask", _set("features.mask", "maybe"), "field 'mask' must be one of"),
    ("other truncate", _set("features.truncate", 3.0), "field 'truncate'"),
]


@pytest.mark.parametrize(("change", "fragment"), [c[1:] for c in BAD_FIELDS], ids=[c[0] for c in BAD_FIELDS])
def test_bad_field_is_refused_with_one_short_line(tmp_path, capsys, document, image, change, fragment):
    bad = copy.deepcopy(document)
    change(bad)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(bad))
    _refused(tmp_path, capsys, str(path), image, fragment)


def test_sound_model_applies_and_a_long_bad_value_is_cut_short(tmp_path, capsys, document, image):
    path = tmp_path / "model.json"
    path.write_text(json.dumps(document))
    code, lines = _apply(tmp_path, capsys, str(path), image)
    assert code == 0, lines
    assert zarr.open_group(tmp_path / "out.zarr", mode="r")["0"][:].max() >= 2
    bad = copy.deepcopy(document)
    bad["features"]["dtype"] = "x" * 100_000
    bad["centroids"][0] = ["y" * 100_000] * 3
    path.write_text(json.dumps(bad))
    (tmp_path / "again").mkdir()
    line = _refused(tmp_path / "again", capsys, str(path), image, "field 'dtype'")
    assert "x" * 61 not in line
    bad["features"] = document["features"]
    path.write_text(json.dumps(bad))
    line = _refused(tmp_path / "again", capsys, str(path), image, "field 'centroids' holds 'yyy")
    assert "y" * 61 not in line


def test_model_file_over_the_size_limit_is_refused_before_parsing(tmp_path, capsys, document, image):
    path = tmp_path / "model.json"
    text = json.dumps(document)
    path.write_text(text[:-1] + " " * (MAX_MODEL_BYTES - len(text) + 1) + "}")
    assert path.stat().st_size == MAX_MODEL_BYTES + 1
    _refused(tmp_path, capsys, str(path), image, "is larger than 16 MiB")
    path.write_text(text[:-1] + " " * (MAX_MODEL_BYTES - len(text)) + "}")  # exactly the limit still reads
    assert load_model(str(path)).n_clusters == 3


@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_deeply_nested_json_is_refused_without_recursion_error(tmp_path, capsys, image, opening):
    closing = "]" if opening == "[" else "}"
    path = tmp_path / "model.json"
    path.write_text(opening * 100_000 + "1" + closing * 100_000)
    _refused(tmp_path, capsys, str(path), image, "nested too deeply")
    assert read_json_object(str(path)) is None


def test_the_largest_k_round_trips(tmp_path, document):
    rng = np.random.default_rng(1)
    big = copy.deepcopy(document)
    big["centroids"] = rng.random((MAX_CLUSTERS, 3)).tolist()
    big["sample_size"] = MAX_CLUSTERS
    path = tmp_path / "model.json"
    path.write_text(json.dumps(big))
    assert load_model(str(path)).n_clusters == MAX_CLUSTERS
    big["centroids"].append([0.5, 0.5, 0.5])
    path.write_text(json.dumps(big))
    with pytest.raises(ModelError, match=f"expected 2 to {MAX_CLUSTERS} clusters"):
        load_model(str(path))


def test_degenerate_note_round_trips(tmp_path, document):
    model = load_model(_write(tmp_path, {**document, "degenerate": "k-means left 1 of 3 clusters empty"}))
    assert model.degenerate == "k-means left 1 of 3 clusters empty"
    save_model(model, str(tmp_path / "again.json"), provenance={})
    assert load_model(str(tmp_path / "again.json")).degenerate == model.degenerate
    assert "degenerate" not in model_document(load_model(_write(tmp_path, document)))


def _write(tmp_path: Path, document: dict) -> str:
    path = tmp_path / "model.json"
    path.write_text(json.dumps(document))
    return str(path)
