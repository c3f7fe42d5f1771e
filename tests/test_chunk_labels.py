"""Labels made band by band from the pixels equal the labels of the features (the two-step graph)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from pixseg.features import build_features, compute_features, make_feature_spec
from pixseg.model import SegmentationModel
from pixseg.predict import build_chunk_labels, build_labels


def _model(spec, features, n_clusters=5, seed=0):
    """A model whose centroids are features of random valid pixels, standardised by their spread."""
    rows = features.reshape(-1, features.shape[-1])
    rows = rows[np.isfinite(rows).all(axis=1)]
    picked = rows[np.random.default_rng(seed).choice(len(rows), n_clusters, replace=False)]
    return SegmentationModel(
        spec, picked.astype(np.float64), rows.mean(axis=0), rows.std(axis=0) + 1e-3, seed, len(rows), 0.0, 1
    )


@pytest.mark.parametrize(
    ("groups", "chunks", "alpha"),
    [
        ("hed,texture", (37, 45), False),
        ("hed,smooth", (64, 70), True),
        ("channels,lab,coordinates", (50, 33), True),
    ],
)
def test_chunk_labels_equal_the_labels_of_the_features(ihc_image, groups, chunks, alpha):
    image = ihc_image[:150, :140]
    if alpha:
        image = np.concatenate([image, np.full((*image.shape[:2], 1), 255, np.uint8)], axis=-1)
        image[20:35, 60:90, 3] = 0
    spec = make_feature_spec(groups, n_channels=image.shape[2], has_alpha=alpha, dtype=image.dtype, sigmas=(1, 4))
    model = _model(spec, compute_features(image, spec))
    pixels = da.from_array(image, chunks=(*chunks, image.shape[2]))
    expected = build_labels(build_features(pixels, spec), model)
    labels = build_chunk_labels(pixels, model)
    assert labels.chunks == expected.chunks and labels.dtype == model.label_dtype
    computed = labels.compute()
    np.testing.assert_array_equal(computed, expected.compute())
    assert len(np.unique(computed)) > 2  # not trivially one label
    if alpha:
        assert (computed[20:35, 60:90] == 0).all()
