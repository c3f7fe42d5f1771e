"""``--clusters auto``: K chosen on the sample by silhouette, deterministic, recorded, printed and plotted."""

from __future__ import annotations

import json

import numpy as np
import pytest
from model_documents import model_document
from sklearn.metrics import calinski_harabasz_score, euclidean_distances, silhouette_score

from benchmarks.bench_auto_k import well_separated
from pixseg.choose_k import KChoice, best_k, choose_clusters, knee_k, mean_silhouette, score_clustering
from pixseg.cli import main
from pixseg.errors import ModelError
from pixseg.features import make_feature_spec
from pixseg.io.model_file import model_from_document
from pixseg.options import FitOptions

SPEC = make_feature_spec("channels", n_channels=3, has_alpha=False, dtype=np.dtype("float32"), value_range=(0.0, 1.0))


@pytest.mark.slow
@pytest.mark.parametrize("true_k", [3, 5, 8])
def test_auto_picks_the_true_k_of_well_separated_data(true_k):
    choice = choose_clusters(well_separated(true_k, n=20_000, seed=true_k), SPEC, k_range=(2, 10), seed=0)
    assert choice.chosen == true_k
    assert [row["k"] for row in choice.table] == list(range(2, 11))


def test_the_choice_is_deterministic_for_a_seed_and_round_trips_through_the_model_json():
    sample = well_separated(3, n=3_000)
    first = choose_clusters(sample, SPEC, k_range=(2, 4), seed=7)
    assert first == choose_clusters(sample, SPEC, k_range=(2, 4), seed=7)
    assert first.chosen == 3 and KChoice.from_dict(json.loads(json.dumps(first.to_dict()))) == first


def test_scores_equal_scikit_learn_and_a_numpy_inertia():
    rng = np.random.default_rng(1)
    vectors, centres = rng.normal(size=(500, 3)), rng.normal(size=(4, 3))
    every = np.arange(len(vectors))
    scores = score_clustering(vectors, centres, silhouette_rows=every)
    distances = ((vectors[:, None] - centres[None]) ** 2).sum(axis=-1)
    labels = distances.argmin(axis=1)
    assert scores["inertia"] == pytest.approx(distances.min(axis=1).sum())
    assert scores["silhouette"] == pytest.approx(silhouette_score(vectors, labels))
    assert scores["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(vectors, labels))


def test_candidate_fits_side_by_side_give_the_table_of_fitting_them_one_after_the_other():
    sample = well_separated(4, n=4_000, seed=2)
    side_by_side = choose_clusters(sample, SPEC, k_range=(2, 7), seed=3, workers=3)
    assert side_by_side == choose_clusters(sample, SPEC, k_range=(2, 7), seed=3, workers=1)  # every float equal
    assert [row["k"] for row in side_by_side.table] == list(range(2, 8)) and side_by_side.chosen == 4


def test_mean_silhouette_equals_scikit_learn_with_a_cluster_of_one_row():
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(300, 4))
    labels = rng.integers(0, 5, len(vectors))
    labels[17] = 9  # alone in its cluster: scores 0
    distances = euclidean_distances(vectors)
    expected = silhouette_score(distances, labels, metric="precomputed")
    assert mean_silhouette(distances, labels) == pytest.approx(expected, rel=1e-12)
    assert mean_silhouette(distances, labels) == pytest.approx(silhouette_score(vectors, labels), rel=1e-12)


def test_scores_from_known_distances_equal_scores_computing_them():
    rng = np.random.default_rng(2)
    vectors, centres = rng.normal(size=(800, 3)), rng.normal(size=(5, 3))
    rows = rng.permutation(len(vectors))[:200]
    given = score_clustering(vectors, centres, silhouette_rows=rows, distances=euclidean_distances(vectors[rows]))
    assert given == score_clustering(vectors, centres, silhouette_rows=rows)


def test_knee_and_best_k():
    ks = list(range(2, 9))
    inertia = [100.0, 40.0, 10.0, 9.0, 8.0, 7.5, 7.0]  # the bend is at K=4
    assert knee_k(ks, inertia) == 4
    table = [
        {"k": k, "inertia": i, "silhouette": -abs(k - 6), "calinski_harabasz": k}
        for k, i in zip(ks, inertia, strict=True)
    ]
    assert (best_k(table, "inertia"), best_k(table, "silhouette"), best_k(table, "calinski_harabasz")) == (4, 6, 8)


@pytest.mark.parametrize(("given", "expected"), [("auto", "auto:2-12"), ("AUTO:3-7", "auto:3-7"), ("5", 5), (6, 6)])
def test_clusters_option_forms(given, expected):
    assert FitOptions(clusters=given).clusters == expected


@pytest.mark.parametrize("bad", ["auto:1-5", "auto:5-5", "auto:3", "auto5-8", "auto:2-2000"])
def test_bad_auto_ranges_exit_2_naming_the_flag(capsys, tmp_path, bad):
    assert main(["segment", "in.tif", str(tmp_path / "o.zarr"), "--clusters", bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --clusters must be") and err.count("\n") == 1


def test_a_malformed_k_choice_in_a_model_is_refused():
    k_choice = {"criterion": "silhouette", "chosen": 9, "table": [{"k": 2, "inertia": 1.0}]}
    with pytest.raises(ModelError, match="k_choice"):
        model_from_document(model_document(k_choice=k_choice), "m.json")


@pytest.mark.slow
def test_segment_auto_records_prints_and_plots_the_choice(tmp_path, capsys, blob_tiff):
    out, model_path = tmp_path / "out.zarr", tmp_path / "m.json"
    argv = ["segment", blob_tiff, str(out), "--clusters", "auto:2-6", "--save-model", str(model_path), "-q"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    model = json.loads(model_path.read_text())
    assert model["k_choice"]["chosen"] == 4 == len(model["centroids"])  # the blob image has four colours
    assert "<- chosen (highest silhouette)" in stdout and "labels 1..4" in stdout
    assert (tmp_path / "out.zarr.k-choice.png").read_bytes().startswith(b"\x89PNG")
    assert "choice of K" in (tmp_path / "out.zarr.report.html").read_text()
