"""Per-chunk features against scikit-image, masking, and the lazy builder."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from skimage.color import rgb2gray, rgb2lab

from pixseg.errors import ParameterError
from pixseg.features import build_features, compute_features, dtype_range, make_feature_spec


def _spec(groups, image, *, has_alpha=False):
    return make_feature_spec(groups, n_channels=image.shape[2], has_alpha=has_alpha, dtype=image.dtype)


def test_channels_scaled_by_dtype_range(ihc_image):
    features = compute_features(ihc_image, _spec("channels", ihc_image))
    assert features.dtype == np.float32
    np.testing.assert_allclose(features, ihc_image / 255.0, rtol=1e-6)


def test_uint16_and_float_ranges():
    assert dtype_range(np.dtype(np.uint16)) == (0.0, 65535.0)
    assert dtype_range(np.dtype(np.int16)) == (-32768.0, 32767.0)
    assert dtype_range(np.dtype(np.float32)) == (0.0, 1.0)
    image = np.array([[[0], [65535]]], dtype=np.uint16)
    np.testing.assert_allclose(compute_features(image, _spec("channels", image))[..., 0], [[0.0, 1.0]])


def test_grey_and_lab_equal_scikit_image(ihc_image):
    features = compute_features(ihc_image, _spec("channels,grey,lab", ihc_image))
    assert features.shape == (512, 512, 7)
    np.testing.assert_allclose(features[..., 3], rgb2gray(ihc_image), atol=1e-5)
    np.testing.assert_allclose(features[..., 4:], rgb2lab(ihc_image), atol=1e-3)


def test_columns_name_each_feature(ihc_image):
    assert _spec("grey,channels,lab", ihc_image).columns == ("grey", "ch0", "ch1", "ch2", "L", "a", "b")


def test_alpha_zero_and_nan_are_invalid_in_every_column():
    rgba = np.full((2, 3, 4), 100, dtype=np.uint8)
    rgba[0, 1, 3] = 0
    features = compute_features(rgba, _spec("channels,grey", rgba, has_alpha=True))
    assert features.shape == (2, 3, 4)
    assert np.isnan(features[0, 1]).all()
    assert np.isfinite(np.delete(features.reshape(6, 4), 1, axis=0)).all()

    floats = np.full((2, 2, 3), 0.5, dtype=np.float32)
    floats[1, 0, 2] = np.nan
    floats[0, 0, 0] = np.inf
    features = compute_features(floats, _spec("channels,lab", floats))
    assert np.isnan(features[1, 0]).all() and np.isnan(features[0, 0]).all()
    assert np.isfinite(features[[0, 1], [1, 1]]).all()


def test_features_do_not_modify_input():
    floats = np.full((2, 2, 3), 0.5, dtype=np.float32)
    floats[1, 0, 2] = np.nan
    before = floats.copy()
    compute_features(floats, _spec("channels", floats))
    np.testing.assert_array_equal(floats, before)


def test_bad_feature_names_are_parameter_errors(ihc_image):
    with pytest.raises(ParameterError, match="unknown feature \\['textures'\\]"):
        _spec("channels,textures", ihc_image)
    with pytest.raises(ParameterError, match="repeated"):
        _spec("grey,grey", ihc_image)
    grey = ihc_image[..., :1]
    with pytest.raises(ParameterError, match="lab needs an RGB image; this one has 1"):
        _spec("lab", grey)


def test_build_features_matches_whole_image_on_uneven_chunks(ihc_image):
    image = ihc_image[:100, :140]
    spec = _spec("channels,grey,lab", image)
    lazy = build_features(da.from_array(image, chunks=(50, 70, 3)), spec)
    assert lazy.chunks[:2] == ((50, 50), (70, 70)) and lazy.dtype == np.float32
    np.testing.assert_array_equal(lazy.compute(), compute_features(image, spec))


def test_spec_round_trips_through_dict(ihc_image):
    spec = _spec("lab,channels", ihc_image)
    assert type(spec).from_dict(spec.to_dict()) == spec


def _every_level(dtype: type) -> np.ndarray:
    """Pixels (N, 3, 3) in which each channel takes every level of ``dtype`` in three different mixes."""
    levels = np.arange(np.iinfo(dtype).max + 1, dtype=np.int64)
    mixes = [
        (levels, levels, levels),
        (levels, levels[::-1], (levels * 7) % len(levels)),
        (levels[::-1], levels, levels),
    ]
    return np.stack([np.stack(mix, axis=-1) for mix in mixes], axis=1).astype(dtype)


def _scaled_float32(pixels: np.ndarray, ranges) -> np.ndarray:
    """The documented integer scaling, ``(value - low) * (1 / (high - low))`` in float32, written out."""
    lows = np.array([low for low, _ in ranges], dtype=np.float32)
    inverse = np.array([1 / (high - low) for low, high in ranges], dtype=np.float32)
    return (pixels.astype(np.float32) - lows) * inverse


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("ranges", [None, [(3.0, 250.0), (0.0, 255.0), (10.0, 240.5)]])
def test_lookup_tables_equal_the_kernels_for_every_level(dtype, ranges):
    """8- and 16-bit RGB is scaled and featurised (grey, hed) through lookup tables: bit-equal to the
    float32 formula and the kernels applied to it, for all 256 / 65,536 levels of every channel."""
    from pixseg import feature_kernels

    pixels = _every_level(dtype)
    spec = make_feature_spec(
        "channels,grey,hed", n_channels=3, has_alpha=False, dtype=pixels.dtype, channel_ranges=ranges
    )
    features = compute_features(pixels, spec)
    scaled = _scaled_float32(pixels, spec.channel_ranges)
    expected = np.concatenate([scaled, feature_kernels.grey(scaled), feature_kernels.rgb_to_hed(scaled)], axis=-1)
    np.testing.assert_array_equal(features, expected)
    np.testing.assert_array_equal(np.signbit(features), np.signbit(expected))


def test_texture_of_8_bit_rgb_with_alpha_equals_the_float_path():
    """The texture intensity from tables treats alpha == 0 pixels as scaled zeros, as the float path does."""
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (23, 19, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rng.random((23, 19)) < 0.2, 0, 255)
    spec = make_feature_spec("hed,texture", n_channels=4, has_alpha=True, dtype=np.uint8, sigmas=(1.0, 2.0))
    floats = np.concatenate([_scaled_float32(rgba[..., :3], spec.channel_ranges), rgba[..., 3:] / 255.0], axis=-1)
    float_spec = make_feature_spec(
        "hed,texture", n_channels=4, has_alpha=True, dtype=np.float32, sigmas=(1.0, 2.0), value_range=(0.0, 1.0)
    )
    np.testing.assert_array_equal(compute_features(rgba, spec), compute_features(floats.astype(np.float32), float_spec))
