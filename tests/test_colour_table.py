"""Labelling 8-bit images through a table of every colour's label equals the feature + kernel path."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from conftest import make_blob_image

from pixseg import predict
from pixseg.features import build_features, make_feature_spec
from pixseg.kmeans_fit import fit_model
from pixseg.options import FitOptions, ReadOptions
from pixseg.predict import build_labels, build_table_labels, table_applies
from pixseg.runner import segment


def _model(pixels: np.ndarray, groups: str, *, has_alpha: bool = False, clusters: int = 5):
    spec = make_feature_spec(groups, n_channels=pixels.shape[2], has_alpha=has_alpha, dtype=pixels.dtype)
    features = build_features(da.from_array(pixels, chunks=(64, 64, pixels.shape[2])), spec).compute()
    vectors = features.reshape(-1, features.shape[-1])
    sample = vectors[np.isfinite(vectors[:, 0])][::7]
    return fit_model(sample, spec, n_clusters=clusters, seed=0, restarts=1), features


@pytest.mark.slow
@pytest.mark.parametrize("groups", ["channels", "channels,grey,lab,hsv,hed"])
def test_table_labels_equal_kernel_labels_on_a_real_photo(ihc_image, groups):
    model, _ = _model(ihc_image, groups)
    pixels = da.from_array(ihc_image, chunks=(100, 130, 3))
    by_table = build_table_labels(pixels, model).compute()
    by_kernel = build_labels(build_features(pixels, model.feature_spec), model).compute()
    np.testing.assert_array_equal(by_table, by_kernel)
    assert len(np.unique(by_table)) == 5


@pytest.mark.slow
def test_table_labels_alpha_and_grey_inputs():
    rgba = np.dstack([make_blob_image(90, 70, seed=2), np.full((90, 70), 255, np.uint8)])
    rgba[10:30, 5:25, 3] = 0
    model, _ = _model(rgba, "channels,lab", has_alpha=True, clusters=4)
    pixels = da.from_array(rgba, chunks=(32, 32, 4))
    by_table = build_table_labels(pixels, model).compute()
    np.testing.assert_array_equal(by_table, build_labels(build_features(pixels, model.feature_spec), model).compute())
    assert (by_table[10:30, 5:25] == 0).all() and (by_table[rgba[..., 3] > 0] > 0).all()
    grey = rgba[..., :1].copy()
    grey_model, _ = _model(grey, "channels", clusters=3)
    grey_pixels = da.from_array(grey, chunks=(32, 32, 1))
    np.testing.assert_array_equal(
        build_table_labels(grey_pixels, grey_model).compute(),
        build_labels(build_features(grey_pixels, grey_model.feature_spec), grey_model).compute(),
    )


@pytest.mark.slow
def test_table_applies_only_where_labels_depend_on_the_colour_alone(ihc_image):
    rgb, _ = _model(ihc_image, "channels,lab")
    assert table_applies(rgb, 4 * 256**3) and not table_applies(rgb, 4 * 256**3 - 1)
    textured, _ = _model(ihc_image, "channels,smooth")
    placed, _ = _model(ihc_image, "channels,coordinates")
    wide, _ = _model(ihc_image.astype(np.uint16), "channels")
    assert not any(table_applies(m, 10**12) for m in (textured, placed, wide))


@pytest.mark.slow
def test_segment_through_the_table_equals_the_kernel_path_with_a_mask(tmp_path, monkeypatch, ihc_image):
    path = str(tmp_path / "ihc.tif")
    tifffile.imwrite(path, ihc_image, tile=(64, 64), photometric="rgb", compression="zlib")
    mask = np.zeros((128, 128), np.uint8)  # a quarter-resolution mask file
    mask[20:100, 30:110] = 1
    mask_path = str(tmp_path / "mask.tif")
    tifffile.imwrite(mask_path, mask)
    fit = FitOptions(clusters=4, features=("channels", "grey"), mask=mask_path, restarts=1)
    outputs = {}
    for name, per_entry in (("table", 0), ("kernel", 10**9)):
        monkeypatch.setattr(predict, "TABLE_PIXELS_PER_ENTRY", per_entry)
        outputs[name] = str(tmp_path / f"{name}.zarr")
        segment(path, outputs[name], read=ReadOptions(chunk=96), fit=fit)
    table = zarr.open_group(outputs["table"], mode="r")["0"][:]
    np.testing.assert_array_equal(table, zarr.open_group(outputs["kernel"], mode="r")["0"][:])
    full_mask = np.kron(mask, np.ones((4, 4), np.uint8)).astype(bool)
    assert (table[~full_mask] == 0).all() and (table[full_mask] > 0).all()


@pytest.mark.slow
def test_table_path_on_a_local_cluster_equals_threads(tmp_path, monkeypatch, ihc_image):
    from pixseg.cluster import open_scheduler

    path = str(tmp_path / "ihc.tif")
    tifffile.imwrite(path, ihc_image, tile=(64, 64), photometric="rgb", compression="zlib")
    monkeypatch.setattr(predict, "TABLE_PIXELS_PER_ENTRY", 0)  # decided on the client, built on the workers
    fit = FitOptions(clusters=4, restarts=1)
    segment(path, str(tmp_path / "threads.zarr"), read=ReadOptions(chunk=128), fit=fit)
    with open_scheduler("local", workers=2) as client:
        assert client is not None
        segment(path, str(tmp_path / "local.zarr"), read=ReadOptions(chunk=128), fit=fit)
    threads = zarr.open_group(str(tmp_path / "threads.zarr"), mode="r")
    local = zarr.open_group(str(tmp_path / "local.zarr"), mode="r")
    np.testing.assert_array_equal(threads["0"][:], local["0"][:])
