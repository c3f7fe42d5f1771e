"""``pixseg info`` on a model file and on an output: the preset, how K was chosen, the class table."""

from __future__ import annotations

import csv
import json

import pytest
from model_documents import model_document

from pixseg.cli import main
from pixseg.io.model_file import load_model
from pixseg.io.side_files import write_statistics

#: The K table of a made-up ``--clusters auto:2-4`` run that chose K = 3.
K_TABLE = [
    {"k": 2, "inertia": 40.0, "silhouette": 0.61, "calinski_harabasz": 900.0},
    {"k": 3, "inertia": 12.0, "silhouette": 0.83, "calinski_harabasz": 2500.0},
    {"k": 4, "inertia": 10.0, "silhouette": 0.55, "calinski_harabasz": 2100.0},
]


def _info(path: str, capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, str], list[str]]:
    """``pixseg info PATH``: its ``key: value`` lines as a dict, and every line split into words."""
    assert main(["info", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    values = dict(line.strip().split(": ", 1) for line in lines if ": " in line and line.startswith(" "))
    return values, [line.split() for line in lines]


def test_info_on_a_model_shows_its_preset_k_choice_and_classes(tmp_path, capsys):
    choice = {"criterion": "silhouette", "chosen": 3, "table": K_TABLE}
    model = tmp_path / "m.json"
    model.write_text(json.dumps(model_document(preset="fluorescence", k_choice=choice)))
    classes = str(tmp_path / "c.json")
    assert main(["classes", str(model), "--name", "1=nuclei", "--merge", "2,3=background", "-o", classes]) == 0
    capsys.readouterr()
    values, words = _info(classes, capsys)
    assert values["kind"] == "model" and values["preset"] == "fluorescence" and values["features"] == "channels"
    best = max(K_TABLE, key=lambda row: row["silhouette"])["k"]
    assert values["clusters"] == f"{best} (chosen by highest silhouette among K = 2..4)"
    assert values["classes"] == "2 (nuclei, background)"
    chosen = [row for row in words if "<-" in row]
    assert len(chosen) == 1 and chosen[0][0] == str(best) and float(chosen[0][2]) == K_TABLE[1]["silhouette"]
    assert [row[:3] for row in words if row[:2] in (["1", "nuclei"], ["2", "background"])] == [
        ["1", "nuclei", "1"],
        ["2", "background", "2,3"],
    ]
    assert load_model(classes).classes is not None  # what was shown is what the file holds


def test_info_on_a_plain_model_says_k_was_given_and_prints_no_tables(tmp_path, capsys):
    model = tmp_path / "m.json"
    model.write_text(json.dumps(model_document()))
    values, words = _info(str(model), capsys)
    assert values["preset"] == "none" and values["clusters"] == "3 (given)"
    assert values["classes"].startswith("none")
    assert not any("<-" in row or row[:1] == ["class"] for row in words)


def test_info_on_a_json_that_is_not_a_model_is_a_one_line_error(tmp_path, capsys):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": 1}))
    assert main(["info", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a pixseg model" in err and err.count("\n") == 1


@pytest.mark.slow
def test_info_on_an_output_shows_the_preset_the_chosen_k_and_after_relabel_the_classes(tmp_path, capsys, blob_tiff):
    output, model = str(tmp_path / "o.zarr"), str(tmp_path / "m.json")
    argv = ["segment", blob_tiff, output, "--preset", "rgb-photo", "--clusters", "auto:3-5", "--save-model", model]
    assert main([*argv, "-q", "--no-previews"]) == 0
    capsys.readouterr()
    choice = load_model(model).k_choice
    assert choice is not None
    values, _ = _info(output, capsys)
    assert values["kind"] == "output" and values["preset"] == "rgb-photo"
    assert values["clusters"] == f"{choice.chosen} (chosen by highest {choice.criterion} among K = 3..5)"
    assert values["classes"].startswith("none")
    classes = str(tmp_path / "c.json")
    assert main(["classes", model, "--name", "1=first", "-o", classes]) == 0
    assert main(["relabel", output, classes, "-q"]) == 0
    capsys.readouterr()
    values, words = _info(output, capsys)
    assert values["classes"].startswith(f"{choice.chosen} (first, ")
    assert ["1", "first", "1"] in [row[:3] for row in words]


def _stats_row(label: int, **extra: object) -> dict:
    return {"label": label, "pixels": 10, "fraction": 0.5, "area_um2": None, "centroid": {"ch0": 0.25}, **extra}


def test_the_stats_csv_lists_each_class_clusters_only_when_the_labels_are_classes(tmp_path):
    classes = [_stats_row(1, name="nuclei", clusters=[1]), _stats_row(2, name="background", clusters=[2, 3])]
    write_statistics(str(tmp_path / "c"), classes, summary={})
    write_statistics(str(tmp_path / "p"), [_stats_row(1), _stats_row(2)], summary={})
    with open(tmp_path / "c.stats.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    stored = json.loads((tmp_path / "c.stats.json").read_text())["labels"]
    assert [row["clusters"] for row in rows] == [",".join(map(str, r["clusters"])) for r in stored] == ["1", "2,3"]
    with open(tmp_path / "p.stats.csv", newline="") as handle:
        assert "clusters" not in next(csv.reader(handle))
