"""Texture and colour features against scipy.ndimage / scikit-image on whole images, chunk borders exact."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage
from skimage.color import rgb2hed, rgb2hsv
from skimage.feature import hessian_matrix, hessian_matrix_eigvals

from pixseg.errors import ParameterError
from pixseg.features import FeatureSpec, build_features, compute_features, make_feature_spec

SIGMAS = (1.0, 2.5)


def _spec(groups, image, **kwargs):
    return make_feature_spec(groups, n_channels=image.shape[2], has_alpha=False, dtype=image.dtype, **kwargs)


def _column(features, spec, name):
    return features[..., spec.columns.index(name)]


def _intensity(image):
    """The grey image texture is computed on, in float64."""
    return compute_features(image, _spec("grey", image))[..., 0].astype(np.float64)


def _reference(kind, grey, sigma):
    """The texture columns of ``kind`` computed by scipy.ndimage / scikit-image on a whole image."""
    if kind == "smooth":
        return [ndimage.gaussian_filter(grey, sigma)]
    if kind == "std":
        mean = ndimage.gaussian_filter(grey, sigma)
        return [np.sqrt(np.maximum(ndimage.gaussian_filter(grey**2, sigma) - mean**2, 0))]
    if kind == "gradient":
        return [ndimage.gaussian_gradient_magnitude(grey, sigma)]
    if kind == "log":
        return [ndimage.gaussian_laplace(grey, sigma)]
    elements = [ndimage.gaussian_filter(grey, sigma, order=order) for order in ((2, 0), (1, 1), (0, 2))]
    return list(hessian_matrix_eigvals(elements))


@pytest.fixture
def small_rgb(ihc_image):
    """A 10 x 14 crop with tissue texture: every (5, 7) chunk border crosses structure."""
    return np.ascontiguousarray(ihc_image[300:310, 200:214])


def _assert_close_to_scipy(kind, features, expected):
    """Filtering runs in float32 (OpenCV), scipy in float64: equal to float32 rounding of the
    filter sums, 3e-6 of a column's largest value. The local standard deviation subtracts two
    such sums (mean of squares - squared mean) and keeps 1e-5 in intensity units (0-1): 400
    times finer than one 8-bit grey level."""
    assert features.shape == expected.shape
    for column in range(expected.shape[-1]):
        atol = 1e-5 if kind == "std" else 3e-6 * np.abs(expected[..., column]).max()
        np.testing.assert_allclose(features[..., column], expected[..., column], rtol=1e-5, atol=atol)


@pytest.mark.parametrize("kind", ["smooth", "std", "gradient", "log", "hessian"])
@pytest.mark.parametrize("sigmas", [SIGMAS, (7.0,)])  # 57 weights at sigma 7: OpenCV's other filter path
def test_texture_equals_scipy_on_the_whole_image(kind, sigmas, small_rgb):
    spec = _spec(kind, small_rgb, sigmas=sigmas)
    features = compute_features(small_rgb, spec)
    grey = _intensity(small_rgb)
    expected = [column for sigma in sigmas for column in _reference(kind, grey, sigma)]
    assert features.shape == (10, 14, len(expected)) and features.dtype == np.float32
    _assert_close_to_scipy(kind, features, np.stack(expected, axis=-1))
    assert np.abs(features).max() > 1e-4  # not trivially zero


@pytest.mark.parametrize("kind", ["smooth", "std", "gradient", "log", "hessian"])
def test_texture_equals_scipy_on_a_wide_image(kind, ihc_image):
    # rows of hundreds of pixels: OpenCV's vector loops and their scalar tails both run
    image = ihc_image[40:72, :333]
    spec = _spec(kind, image, sigmas=(1.0, 4.0))
    grey = _intensity(image)
    expected = np.stack([column for sigma in (1.0, 4.0) for column in _reference(kind, grey, sigma)], axis=-1)
    _assert_close_to_scipy(kind, compute_features(image, spec), expected)


@pytest.mark.parametrize("kind", ["smooth", "std", "gradient", "log", "hessian"])
@pytest.mark.parametrize("chunks", [(5, 7), (3, 4), (10, 14)])
def test_chunk_borders_are_exact(kind, chunks, small_rgb):
    # sigma 2.5 needs a halo of 10 pixels: larger than the 5 x 7 and 3 x 4 chunks (merged for the halo)
    spec = _spec(f"channels,{kind}", small_rgb, sigmas=SIGMAS)
    lazy = build_features(da.from_array(small_rgb, chunks=(*chunks, 3)), spec)
    assert lazy.chunks[:2] == da.from_array(small_rgb, chunks=(*chunks, 3)).chunks[:2]
    np.testing.assert_array_equal(lazy.compute(), compute_features(small_rgb, spec))


def test_chunk_borders_exact_with_large_chunks_and_halo(ihc_image):
    image = ihc_image[:100, :140]
    spec = _spec("hed,texture,hessian,coordinates", image, sigmas=(1, 4))
    assert spec.halo() == (16, 16)
    lazy = build_features(da.from_array(image, chunks=(37, 45, 3)), spec)
    assert lazy.chunks[:2] == ((37, 37, 26), (45, 45, 45, 5))
    np.testing.assert_array_equal(lazy.compute(), compute_features(image, spec))


def test_hessian_matches_scikit_image_away_from_the_border(ihc_image):
    image = ihc_image[100:200, 200:300]
    spec = _spec("hessian", image, sigmas=(2.5,))
    features = compute_features(image, spec)
    grey = _intensity(image)
    eigenvalues = hessian_matrix_eigvals(
        hessian_matrix(grey, 2.5, mode="reflect", order="rc", use_gaussian_derivatives=True)
    )
    inner = (slice(20, -20), slice(20, -20))  # scikit-image filters twice (and reflects twice) with truncate 8
    scale = np.abs(eigenvalues).max()
    np.testing.assert_allclose(features[inner][..., 0], eigenvalues[0][inner], atol=5e-3 * scale)
    np.testing.assert_allclose(features[inner][..., 1], eigenvalues[1][inner], atol=5e-3 * scale)


def test_texture_at_a_downsampled_level_uses_scaled_sigma_and_full_resolution_units(small_rgb):
    spec = _spec("smooth,gradient,log", small_rgb, sigmas=(4.0,))
    features = compute_features(small_rgb, spec, scale=(2.0, 2.0))
    grey = _intensity(small_rgb)
    expected = [
        ndimage.gaussian_filter(grey, 2.0),
        ndimage.gaussian_gradient_magnitude(grey, 2.0) / 2,
        ndimage.gaussian_laplace(grey, 2.0) / 4,
    ]
    _assert_close_to_scipy("smooth,gradient,log", features, np.stack(expected, axis=-1))
    assert spec.halo((2.0, 2.0)) == (8, 8) and spec.halo((4.0, 2.0)) == (4, 8)


def test_coordinates_are_chunk_independent_and_level_independent():
    image = np.zeros((10, 14, 1), dtype=np.uint8)
    spec = make_feature_spec("coordinates", n_channels=1, has_alpha=False, dtype=image.dtype)
    lazy = build_features(da.from_array(image, chunks=(3, 5, 1)), spec).compute()
    rows, cols = np.mgrid[0:10, 0:14]
    np.testing.assert_allclose(lazy[..., 0], (rows + 0.5) / 10)
    np.testing.assert_allclose(lazy[..., 1], (cols + 0.5) / 14)
    assert spec.columns == ("row", "column") and spec.sigmas == ()


def test_invalid_pixels_are_nan_in_texture_columns_too():
    rgba = np.full((12, 9, 4), 120, dtype=np.uint8)
    rgba[..., :3] = np.random.default_rng(1).integers(0, 255, (12, 9, 3))
    rgba[4, 5, 3] = 0
    spec = make_feature_spec("grey,texture", n_channels=4, has_alpha=True, dtype=rgba.dtype, sigmas=(1,))
    lazy = build_features(da.from_array(rgba, chunks=(5, 4, 4)), spec).compute()
    assert np.isnan(lazy[4, 5]).all()
    assert np.isfinite(np.delete(lazy.reshape(-1, lazy.shape[-1]), 4 * 9 + 5, axis=0)).all()


def test_hsv_and_hed_equal_scikit_image(ihc_image):
    features = compute_features(ihc_image, _spec("hsv,hed", ihc_image))
    assert features.shape == (512, 512, 6)
    np.testing.assert_allclose(features[..., :3], rgb2hsv(ihc_image), atol=1e-6)
    np.testing.assert_allclose(features[..., 3:], rgb2hed(ihc_image), atol=1e-6)


def test_hsv_of_greys_and_primaries_equals_scikit_image():
    pixels = np.array(
        [[[0, 0, 0], [255, 255, 255], [128, 128, 128], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]]],
        dtype=np.uint8,
    )
    np.testing.assert_allclose(compute_features(pixels, _spec("hsv", pixels)), rgb2hsv(pixels), atol=1e-6)


def test_per_channel_ranges_scale_each_channel():
    pixels = np.array([[[100, 1000], [300, 5000]]], dtype=np.uint16)
    spec = make_feature_spec(
        "channels", n_channels=2, has_alpha=False, dtype=pixels.dtype, channel_ranges=[(100, 300), (1000, 5000)]
    )
    np.testing.assert_allclose(compute_features(pixels, spec)[0], [[0, 0], [1, 1]])


def test_bad_texture_options_are_parameter_errors(small_rgb):
    with pytest.raises(ParameterError, match="--sigmas must be"):
        _spec("texture", small_rgb, sigmas=())
    with pytest.raises(ParameterError, match="--sigmas must be"):
        _spec("std", small_rgb, sigmas=(0.0,))
    with pytest.raises(ParameterError, match="--sigmas must be"):
        _spec("std", small_rgb, sigmas=(1000.0,))
    with pytest.raises(ParameterError, match="repeated sigma"):
        _spec("std", small_rgb, sigmas=(2, 2))
    with pytest.raises(ParameterError, match="hed needs an RGB image"):
        _spec("hed", small_rgb[..., :1])
    with pytest.raises(ParameterError, match="channel ranges"):
        _spec("channels", small_rgb, channel_ranges=[(0, 1), (1, 1), (0, 1)])


def test_texture_alias_and_column_names(small_rgb):
    spec = _spec("hed,texture", small_rgb, sigmas=(1, 4))
    assert spec.groups == ("hed", "smooth", "std", "gradient", "log")
    assert spec.columns[:5] == ("haematoxylin", "eosin", "dab", "smooth_s1", "smooth_s4")
    assert len(spec.columns) == 3 + 4 * 2


def test_spec_round_trips_and_reads_schema_1(small_rgb):
    spec = _spec("hed,texture,hessian,coordinates", small_rgb, sigmas=(1.5, 3), mask="auto")
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    old = {
        "groups": ["channels", "lab"],
        "n_channels": 3,
        "has_alpha": False,
        "dtype": "uint8",
        "value_range": [0, 255],
    }
    assert FeatureSpec.from_dict(old) == _spec("channels,lab", small_rgb)


def test_band_height_does_not_change_any_value(ihc_image, monkeypatch):
    """Chunks are featurised in bands of rows, each filtered with its own context rows: bands of
    5 rows, far thinner than the sigma-7 filter's 57 weights, give the one-band result bit for bit."""
    from pixseg import features as features_module

    image = ihc_image[:90, :75]
    spec = _spec("grey,hed,texture,hessian,coordinates", image, sigmas=(1.0, 7.0))
    halo = ((28, 28), (0, 0))
    monkeypatch.setattr(features_module, "_BAND_PIXELS", 90 * 75)
    whole = compute_features(image, spec, halo=halo, origin=(28, 0), image_shape=(90, 75))
    monkeypatch.setattr(features_module, "_BAND_PIXELS", 5 * 75)
    banded = compute_features(image, spec, halo=halo, origin=(28, 0), image_shape=(90, 75))
    np.testing.assert_array_equal(banded, whole)
    assert np.array_equal(banded.view(np.uint32), whole.view(np.uint32))  # signs of zeros too
