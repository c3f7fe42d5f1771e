"""Sampling, fitting and the nearest-centroid kernel on small in-memory arrays."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pixseg.errors import ParameterError
from pixseg.features import compute_features, make_feature_spec
from pixseg.kmeans_fit import feature_spread, fit_model, order_centroids, squared_inertia
from pixseg.predict import map_pixels, predict_chunk
from pixseg.sample_graph import build_candidates
from pixseg.sampling import SampleSource, candidate_threshold, pixel_keys, plan_blocks, sampling_stride, take_sample


def _features(seed=3, shape=(90, 70, 3), masked=0.8):
    values = np.random.default_rng(seed).random(shape).astype(np.float32)
    values[values[..., 0] > masked] = np.nan
    return values


def _source(values, *, spec=None, mask=None, full_width_reads=False):
    """Pixels that are their own features: float channels scaled by (0, 1), NaN = invalid."""
    spec = spec or make_feature_spec(
        "channels", n_channels=values.shape[2], has_alpha=False, dtype=values.dtype, value_range=(0.0, 1.0)
    )
    return SampleSource(pixels=values, spec=spec, scale=(1.0, 1.0), mask=mask, full_width_reads=full_width_reads)


def _candidates(values, block, *, threshold, seed=5, stride=1, **source):
    plan = plan_blocks(values.shape[:2], stride=stride, seed=seed, block=block)
    return build_candidates(_source(values, **source), plan, threshold=threshold, seed=seed).compute()


def test_keys_are_uniform_and_match_the_numpy_reference():
    values = _features(masked=2.0)
    candidates = _candidates(values, 32, threshold=1.0)
    assert candidates.n_valid == 90 * 70 and len(candidates.keys) == 90 * 70
    rows, cols = np.divmod(candidates.positions, 70)
    np.testing.assert_array_equal(candidates.keys, pixel_keys(rows, cols, width=70, seed=5))
    np.testing.assert_array_equal(candidates.vectors, values[rows, cols])
    hist = np.histogram(candidates.keys, bins=10, range=(0, 1))[0]
    assert hist.min() > 0.8 * 630 and hist.max() < 1.2 * 630


@pytest.mark.slow
@given(block=st.integers(5, 100), full_width=st.booleans(), seed=st.integers(0, 2**40))
@settings(max_examples=25, deadline=None)
def test_sample_of_every_block_does_not_depend_on_the_block_edge_or_reads(block, full_width, seed):
    values = _features()
    reference = _candidates(values, 90, threshold=0.3, seed=seed)
    blocked = _candidates(values, block, threshold=0.3, seed=seed, full_width_reads=full_width)
    assert blocked.n_valid == reference.n_valid == np.count_nonzero(~np.isnan(values[..., 0]))
    np.testing.assert_array_equal(take_sample(blocked, 400), take_sample(reference, 400))


def test_sample_excludes_invalid_pixels_and_depends_on_seed():
    values = _features()
    candidates = _candidates(values, 32, threshold=1.0)
    assert len(candidates.keys) == candidates.n_valid == np.count_nonzero(~np.isnan(values[..., 0]))
    sample = take_sample(candidates, 1000)
    assert sample.shape == (1000, 3) and np.isfinite(sample).all()
    other = take_sample(_candidates(values, 32, threshold=1.0, seed=6), 1000)
    assert not np.array_equal(sample, other)


def test_sample_is_the_same_on_every_scheduler():
    values = _features()
    with dask.config.set(scheduler="sync"):
        sync = take_sample(_candidates(values, 16, threshold=0.5, seed=1, stride=2), 200)
    with dask.config.set(scheduler="threads", num_workers=4):
        threaded = take_sample(_candidates(values, 16, threshold=0.5, seed=1, stride=2), 200)
    np.testing.assert_array_equal(sync, threaded)


def test_threshold_yields_enough_candidates():
    assert candidate_threshold(10, 0) == 1.0
    assert candidate_threshold(1000, 1000) == 1.0
    values = _features(masked=2.0, shape=(300, 300, 1))
    for sample_size in (50, 2000, 20000):
        threshold = candidate_threshold(sample_size, 300 * 300)
        assert len(_candidates(values, 100, threshold=threshold).keys) >= sample_size


def test_plan_reads_one_block_per_stratum_weighted_by_its_stratum():
    shape, block, stride = (1000, 730), 32, 3  # 32 x 23 blocks: partial blocks and strata at the edges
    plan = plan_blocks(shape, stride=stride, seed=4, block=block)
    assert plan.regions.shape == (11 * 8, 4)
    strata = {(top // block // stride, left // block // stride) for top, left, _, _ in plan.regions}
    assert len(strata) == 11 * 8  # exactly one block in every stratum
    assert (plan.regions[:, 2] <= 1000).all() and (plan.regions[:, 3] <= 730).all()
    areas = (plan.regions[:, 2] - plan.regions[:, 0]) * (plan.regions[:, 3] - plan.regions[:, 1])
    assert np.isclose((areas * plan.weights).sum(), 1000 * 730)  # the strata tile the image
    assert not np.array_equal(plan.regions, plan_blocks(shape, stride=stride, seed=5, block=block).regions)
    assert sampling_stride((100_000, 100_000), 200_000) == 24 and sampling_stride((4096, 4096), 200_000) == 1


def test_stratified_sample_is_spread_over_the_image_without_bias():
    values = np.zeros((600, 500, 1), np.float32) + 0.5
    candidates = _candidates(values, 10, threshold=0.02, seed=2, stride=4)  # 1/16 of the blocks read
    rows, cols = np.divmod(candidates.positions, 500)
    assert abs(len(rows) - 0.02 * 600 * 500) < 6 * np.sqrt(0.02 * 600 * 500)  # as many as a whole-image pass
    assert abs(rows.mean() - 299.5) < 12 and abs(cols.mean() - 249.5) < 10
    # the partial strata along the right edge (columns 480-499) hold 4% of the image
    assert abs(np.mean(cols >= 480) - 0.04) < 0.015
    np.testing.assert_allclose(candidates.valid_estimate, 600 * 500, rtol=1e-9)
    weights = np.asarray(candidates.keys) / pixel_keys(rows, cols, width=500, seed=2)
    assert np.all(weights <= 1.0) and np.all(weights >= 1 / 16 - 1e-12)


def test_block_features_equal_the_whole_image_features_with_texture():
    rng = np.random.default_rng(8)
    pixels = (rng.random((97, 83, 3)) * 255).astype(np.uint8)
    spec = make_feature_spec("channels,texture", n_channels=3, has_alpha=False, dtype=pixels.dtype, sigmas=(1, 3))
    candidates = _candidates(pixels, 16, threshold=1.0, stride=2, spec=spec)
    rows, cols = np.divmod(candidates.positions, 83)
    whole = compute_features(pixels, spec)
    np.testing.assert_array_equal(candidates.vectors, whole[rows, cols])
    assert len(rows) == candidates.n_valid < 97 * 83


def test_order_centroids_by_brightness_then_coordinates():
    centroids = np.array([[0.9, 0.9], [0.2, 0.4], [0.4, 0.2], [0.1, 0.1]])
    np.testing.assert_array_equal(order_centroids(centroids), [[0.1, 0.1], [0.2, 0.4], [0.4, 0.2], [0.9, 0.9]])


def _spec(n_channels=3):
    return make_feature_spec("channels", n_channels=n_channels, has_alpha=False, dtype=np.dtype(np.uint8))


def test_fit_recovers_separated_clusters_and_orders_labels():
    rng = np.random.default_rng(0)
    centres = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.5, 0.5, 0.5]])
    sample = np.concatenate([c + rng.normal(0, 0.02, (500, 3)) for c in centres]).astype(np.float32)
    model = fit_model(sample, _spec(), n_clusters=3, seed=0)
    expected = order_centroids(centres)
    np.testing.assert_allclose(model.centroids, expected, atol=0.01)
    assert model.centroids.dtype == np.float64 and model.label_dtype == np.uint8
    standard = (sample - model.feature_mean) / model.feature_std
    assert model.sample_inertia == pytest.approx(
        squared_inertia(standard, (model.centroids - model.feature_mean) / model.feature_std)
    )


@pytest.mark.slow
def test_fit_is_deterministic_and_casts_integers():
    sample = np.random.default_rng(2).integers(0, 255, (3000, 3)).astype(np.uint8)
    first = fit_model(sample, _spec(), n_clusters=5, seed=11)
    second = fit_model(sample, _spec(), n_clusters=5, seed=11)
    np.testing.assert_array_equal(first.centroids, second.centroids)
    assert first.centroids.dtype == np.float64
    assert not np.allclose(first.centroids, np.round(first.centroids))


def test_fit_rejects_bad_k():
    sample = np.tile(np.array([[0.2, 0.2, 0.2], [0.7, 0.7, 0.7]], dtype=np.float32), (100, 1))
    with pytest.raises(ParameterError, match="--clusters 3 is more than the 2 distinct"):
        fit_model(sample, _spec(), n_clusters=3, seed=0)
    with pytest.raises(ParameterError, match="between 2 and"):
        fit_model(sample, _spec(), n_clusters=1, seed=0)


def test_predict_chunk_equals_brute_force_standardised_argmin():
    rng = np.random.default_rng(4)
    features = rng.random((37, 41, 3)).astype(np.float32)
    features[3, 5] = np.nan
    centroids = rng.random((6, 3))
    std = np.array([0.5, 2.0, 1.0])
    weights = (1.0 / std**2).astype(np.float32)
    labels = predict_chunk(features, centroids.astype(np.float32), weights, np.dtype(np.uint8))
    assert labels.shape == (37, 41) and labels.dtype == np.uint8
    standard = features.reshape(-1, 3) / std
    distances = ((standard[:, None, :] - (centroids / std)[None]) ** 2).sum(-1)
    expected = (np.argmin(distances, axis=1) + 1).reshape(37, 41)
    expected[3, 5] = 0
    np.testing.assert_array_equal(labels, expected)


def test_predict_chunk_wide_labels_and_ties_to_lower_label():
    features = np.full((1, 2, 1), 0.5, dtype=np.float32)
    centroids = np.array([[0.25], [0.75]], dtype=np.float32)
    labels = predict_chunk(features, centroids, np.ones(1, np.float32), np.dtype(np.uint16))
    assert labels.dtype == np.uint16
    np.testing.assert_array_equal(labels, [[1, 1]])


def test_channels_share_one_spread_and_derived_columns_have_their_own():
    variances = np.array([1.0, 4.0, 9.0, 0.0, 0.25, 16.0])
    spread = feature_spread(variances, ("channels", "channels", "channels", "grey", "hed", "hed"))
    np.testing.assert_allclose(spread, [np.sqrt(14 / 3)] * 3 + [1.0, 0.5, 4.0])


@pytest.mark.slow
def test_channels_fit_reaches_the_raw_pixel_kmeans_inertia_at_k8():
    from conftest import make_blob_image
    from sklearn.cluster import KMeans

    pixels = make_blob_image(300, 300, seed=5).reshape(-1, 3) / 255.0  # four colours, K=8: many local optima
    model = fit_model(pixels.astype(np.float32), _spec(), n_clusters=8, seed=0)
    # the in-memory recipe (scikit-learn's defaults: one k-means++ init), median over seeds
    reference = np.median([KMeans(n_clusters=8, random_state=seed).fit(pixels).inertia_ for seed in range(5)])
    ours = ((pixels[:, None, :] - model.centroids[None]) ** 2).sum(axis=2).min(axis=1).sum()
    assert ours <= 1.01 * reference
    assert np.all(model.feature_std == model.feature_std[0])  # the channels are scaled as one group


@pytest.mark.slow
def test_more_restarts_never_fit_worse_and_restart_zero_is_the_seed_itself():
    from conftest import make_blob_image

    pixels = (make_blob_image(120, 150, seed=7).reshape(-1, 3) / 255.0).astype(np.float32)
    one = fit_model(pixels, _spec(), n_clusters=8, seed=3, restarts=1)
    three = fit_model(pixels, _spec(), n_clusters=8, seed=3, restarts=3)
    assert three.sample_inertia <= one.sample_inertia
    again = fit_model(pixels, _spec(), n_clusters=8, seed=3, restarts=1)
    np.testing.assert_array_equal(again.centroids, one.centroids)


@pytest.mark.slow
def test_preload_fitting_imports_dask_ml_in_the_background():
    import subprocess
    import sys

    code = (
        "import sys, time\n"
        "from pixseg.kmeans_fit import preload_fitting\n"
        "assert 'dask_ml.cluster' not in sys.modules\n"
        "preload_fitting()\n"
        "deadline = time.monotonic() + 60\n"
        "while 'dask_ml.cluster' not in sys.modules and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "print('dask_ml.cluster' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "True"


def test_map_pixels_maps_every_chunk_without_copying_it():
    values = np.random.default_rng(3).random((50, 70, 3)).astype(np.float32)

    class Reader:  # hands out views of ``values``, as the image readers hand out decoded regions
        shape, dtype, ndim = values.shape, values.dtype, values.ndim

        def __getitem__(self, key):
            return values[key]

    lazy = da.from_array(Reader(), chunks=(20, 30, 3))
    shared = []

    def channel_sum(chunk, offset, *, scale):
        shared.append(np.shares_memory(chunk, values))
        return (chunk.sum(axis=-1) + offset) * scale

    labels = map_pixels(lazy, channel_sum, 1.0, scale=2.0, dtype=np.float32)
    assert labels.chunks == lazy.chunks[:2] and labels.dtype == np.float32
    np.testing.assert_allclose(labels.compute(scheduler="sync"), (values.sum(axis=-1) + 1.0) * 2.0, rtol=1e-6)
    assert len(shared) == 9 and all(shared)


def _rare_bright(shape=(200, 200), n_bright=20) -> tuple[np.ndarray, np.ndarray]:
    """A grey image of one value with ``n_bright`` (0.05%) bright pixels, and its true labels (1, 2)."""
    pixels = np.full((*shape, 3), 40, np.uint8)
    truth = np.ones(shape, np.uint8)
    where = np.unravel_index(np.random.default_rng(0).choice(truth.size, n_bright, replace=False), shape)
    pixels[where] = 220
    truth[where] = 2
    return pixels, truth


@pytest.mark.slow
def test_rare_distinct_values_keep_their_cluster():
    pixels, truth = _rare_bright()
    model = fit_model(pixels.reshape(-1, 3).astype(np.float32) / 255, _spec(), n_clusters=2, seed=0)
    np.testing.assert_allclose(model.centroids, [[40 / 255] * 3, [220 / 255] * 3], atol=1e-9)
    assert model.degenerate is None and model.sample_inertia < 1e-12
    weights = (1.0 / model.feature_std**2).astype(np.float32)
    labels = predict_chunk(pixels.astype(np.float32) / 255, model.centroids.astype(np.float32), weights, np.uint8)
    np.testing.assert_array_equal(labels, truth)


@pytest.mark.slow
def test_rare_bright_pixels_segment_into_their_true_classes(tmp_path, capsys):
    import tifffile
    import zarr

    from pixseg.cli import main

    pixels, truth = _rare_bright()
    tifffile.imwrite(tmp_path / "in.tif", pixels, photometric="rgb")
    assert main(["segment", str(tmp_path / "in.tif"), str(tmp_path / "out.zarr"), "-k", "2", "-q"]) == 0
    assert capsys.readouterr().err == ""
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "out.zarr", mode="r")["0"][:], truth)


def test_constant_sample_is_refused_before_any_fit():
    with pytest.raises(ParameterError, match="--clusters 3 is more than the 1 distinct feature vector"):
        fit_model(np.full((500, 3), 0.3, np.float32), _spec(), n_clusters=3, seed=0)


def test_degenerate_fit_is_reseeded_then_warned_and_recorded(monkeypatch, caplog):
    from pixseg import kmeans_fit as model_module

    calls = []

    def collapsing_fit(scaled, n_clusters, *, seed, restart, tol):
        calls.append(restart)
        return np.zeros((n_clusters, scaled.shape[1])), 1  # every centre the same: all but one empty

    sample = np.random.default_rng(0).random((400, 3)).astype(np.float32)
    monkeypatch.setattr(model_module, "_fit_kmeans", collapsing_fit)
    with caplog.at_level("WARNING", logger="pixseg.kmeans_fit"):
        model = fit_model(sample, _spec(), n_clusters=3, seed=0, restarts=2)
    assert sorted(calls) == list(range(2 + model_module.RESEED_TRIES))  # restarts may run side by side
    assert model.degenerate is not None and "left 2 of 3 clusters without any sampled pixel" in model.degenerate
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "degenerate fit" in caplog.text
    assert model.to_dict()["degenerate"] == model.degenerate


def test_a_degenerate_restart_loses_to_a_sound_one(monkeypatch):
    from pixseg import kmeans_fit as model_module

    real = model_module._fit_kmeans

    def first_collapses(scaled, n_clusters, *, seed, restart, tol):
        if restart == 0:
            return np.zeros((n_clusters, scaled.shape[1])), 1
        return real(scaled, n_clusters, seed=seed, restart=restart, tol=tol)

    sample = np.random.default_rng(0).random((400, 3)).astype(np.float32)
    monkeypatch.setattr(model_module, "_fit_kmeans", first_collapses)
    model = fit_model(sample, _spec(), n_clusters=3, seed=0, restarts=2)
    assert model.degenerate is None and len(np.unique(model.centroids, axis=0)) == 3
