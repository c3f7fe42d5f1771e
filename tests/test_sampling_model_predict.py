"""Sampling, fitting and the nearest-centroid kernel on small in-memory arrays."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import ParameterError
from pipeline.features import make_feature_spec
from pipeline.model import fit_model, order_centroids, squared_inertia
from pipeline.predict import predict_chunk
from pipeline.sampling import allocate_sample, build_sample, count_valid, full_counts, sample_chunk


@given(
    counts=st.lists(st.integers(0, 5000), min_size=1, max_size=30),
    sample_size=st.integers(1, 20000),
)
@settings(max_examples=200, deadline=None)
def test_allocation_is_exact_proportional_and_capped(counts, sample_size):
    counts = np.array(counts)
    allocation = allocate_sample(counts, sample_size)
    assert allocation.sum() == min(sample_size, counts.sum())
    assert (allocation <= counts).all() and (allocation >= 0).all()
    if counts.sum() > sample_size:
        exact = counts * sample_size / counts.sum()
        assert np.all(np.abs(allocation - exact) < 1.0 + 1e-9)


def test_sample_chunk_depends_on_seed_and_position_only():
    chunk = np.random.default_rng(1).random((40, 30, 2)).astype(np.float32)
    chunk[:10] = np.nan
    first = sample_chunk(chunk, 50, 7, (2, 3))
    assert first.shape == (50, 2) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, sample_chunk(chunk.copy(), 50, 7, (2, 3)))
    assert not np.array_equal(first, sample_chunk(chunk, 50, 7, (3, 2)))
    assert not np.array_equal(first, sample_chunk(chunk, 50, 8, (2, 3)))
    # every drawn row is a valid pixel of the chunk, no pixel twice
    rows = {tuple(r) for r in chunk.reshape(-1, 2)[300:]}
    assert {tuple(r) for r in first} <= rows and len({tuple(r) for r in first}) == 50


def test_sample_and_counts_are_the_same_on_every_scheduler():
    values = np.random.default_rng(3).random((90, 70, 3)).astype(np.float32)
    values[values[..., 0] > 0.8] = np.nan
    features = da.from_array(values, chunks=(32, 25, 3))
    counts = count_valid(features).compute()
    np.testing.assert_array_equal(
        counts, [[np.count_nonzero(~np.isnan(b[..., 0])) for b in np.array_split(r, [25, 50], 1)]
                 for r in np.array_split(values, [32, 64], 0)]
    )
    allocation = allocate_sample(counts, 1000)
    with dask.config.set(scheduler="sync"):
        sync = build_sample(features, allocation, 5).compute()
    with dask.config.set(scheduler="threads", num_workers=4):
        threaded = build_sample(features, allocation, 5).compute()
    assert sync.shape == (1000, 3)
    np.testing.assert_array_equal(sync, threaded)


def test_full_counts_are_chunk_areas():
    features = da.zeros((100, 70, 1), chunks=(64, 50, 1), dtype=np.float32)
    np.testing.assert_array_equal(full_counts(features), [[64 * 50, 64 * 20], [36 * 50, 36 * 20]])


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
