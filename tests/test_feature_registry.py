"""The feature registry: every group property derives from one entry, and a new entry needs nothing else."""

from __future__ import annotations

import subprocess
import sys

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

from pixseg import feature_kernels, feature_spec, features
from pixseg.errors import ParameterError
from pixseg.features import FeatureGroup, build_features, compute_features, make_feature_spec


def _inverted(colour: np.ndarray) -> np.ndarray:
    return 1.0 - colour


def _column_slope(d_col: np.ndarray) -> tuple[np.ndarray]:
    return (np.abs(d_col),)


_INVERTED = FeatureGroup("inverted", "colour", _inverted, lambda n: tuple(f"inv{i}" for i in range(n)))
_SLOPE = FeatureGroup("slope", "texture", _column_slope, ("slope",), (feature_kernels.D_COL,), aliases=("edges",))
_RED_ONLY = FeatureGroup("redness", "colour", _inverted, ("r", "g", "b"), needs_rgb=True)


@pytest.fixture
def toy_registry(monkeypatch):
    """A temporary registry: the built-in groups plus three toy ones, seen by the spec and the features."""
    registry = {**features.FEATURE_REGISTRY, **{g.name: g for g in (_INVERTED, _SLOPE, _RED_ONLY)}}
    for module in (features, feature_spec):
        monkeypatch.setattr(module, "FEATURE_REGISTRY", registry)
    return registry


@pytest.fixture
def small_rgb(ihc_image):
    """A 10 x 14 crop: (5, 7) chunks cross tissue structure."""
    return np.ascontiguousarray(ihc_image[300:310, 200:214])


def _spec(groups, image, **kwargs):
    return make_feature_spec(groups, n_channels=image.shape[2], has_alpha=False, dtype=image.dtype, **kwargs)


def test_a_new_colour_group_needs_only_its_entry(toy_registry, small_rgb):
    spec = _spec("grey,inverted", small_rgb)
    assert spec.columns == ("grey", "inv0", "inv1", "inv2")
    assert spec.column_groups == ("grey", "inverted", "inverted", "inverted")
    assert spec.pointwise and spec.halo() == (0, 0) and spec.sigmas == ()
    features_ = compute_features(small_rgb, spec)
    np.testing.assert_allclose(features_[..., 1:], 1.0 - small_rgb / 255.0, atol=1e-6)
    lazy = build_features(da.from_array(small_rgb, chunks=(5, 7, 3)), spec)
    np.testing.assert_array_equal(lazy.compute(), features_)
    assert type(spec).from_dict(spec.to_dict()) == spec


def test_a_new_texture_group_gets_sigma_columns_a_halo_and_its_alias(toy_registry, small_rgb):
    spec = _spec("channels,edges", small_rgb, sigmas=(1.0, 2.5))
    assert spec.groups == ("channels", "slope")
    assert spec.columns == ("ch0", "ch1", "ch2", "slope_s1", "slope_s2.5")
    assert not spec.pointwise and spec.halo() == (10, 10) and spec.halo((2.0, 1.0)) == (5, 10)
    grey = compute_features(small_rgb, _spec("grey", small_rgb))[..., 0].astype(np.float64)
    expected = [np.abs(ndimage.gaussian_filter(grey, sigma, order=(0, 1))) for sigma in (1.0, 2.5)]
    features_ = compute_features(small_rgb, spec)
    np.testing.assert_allclose(features_[..., 3:], np.stack(expected, axis=-1), rtol=1e-5, atol=1e-7)
    lazy = build_features(da.from_array(small_rgb, chunks=(5, 7, 3)), spec)
    np.testing.assert_array_equal(lazy.compute(), features_)


def test_validation_reads_the_registry(toy_registry, small_rgb):
    with pytest.raises(ParameterError, match="redness needs an RGB image; this one has 1"):
        _spec("redness", small_rgb[..., :1])
    with pytest.raises(ParameterError, match="choose from .*inverted.*slope.*texture, edges"):
        _spec("nonsense", small_rgb)
    assert _spec("redness", small_rgb).columns == ("r", "g", "b")


def test_toy_groups_are_unknown_outside_the_temporary_registry(small_rgb):
    with pytest.raises(ParameterError, match="unknown feature \\['inverted'\\]"):
        _spec("inverted", small_rgb)


def test_group_lists_derive_from_the_registry():
    assert features.FEATURE_GROUPS == tuple(features.FEATURE_REGISTRY)
    assert features.FEATURE_GROUPS == (
        *features.COLOUR_GROUPS,
        *features.TEXTURE_GROUPS,
        "coordinates",
    )
    assert features.COLOUR_GROUPS == ("channels", "grey", "lab", "hsv", "hed")
    assert features.TEXTURE_GROUPS == ("smooth", "std", "gradient", "log", "hessian")
    assert features.FEATURE_ALIASES == {"texture": ("smooth", "std", "gradient", "log")}
    assert all(name == group.name for name, group in features.FEATURE_REGISTRY.items())


@pytest.mark.parametrize(
    ("groups", "pointwise"),
    [("channels,grey,lab,hsv,hed", True), ("channels,coordinates", False), ("hed,smooth", False)],
)
def test_spec_pointwise(groups, pointwise, small_rgb):
    assert _spec(groups, small_rgb).pointwise is pointwise


def test_filters_belong_to_texture_groups_only():
    with pytest.raises(ValueError, match="'bad': filters"):
        FeatureGroup("bad", "colour", _inverted, ("x",), (feature_kernels.MEAN,))
    with pytest.raises(ValueError, match="'bad': filters"):
        FeatureGroup("bad", "texture", _column_slope, ("x",))


def test_importing_features_does_not_import_dask():
    code = "import pixseg.features, sys; sys.exit('dask' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
