"""The Python API: ``import pixseg`` gives segment, apply and PixelKMeans, a scikit-learn estimator
that runs the CLI's sample, fit and labels on numpy, dask and xarray arrays."""

from __future__ import annotations

import subprocess
import sys

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from conftest import raise_if_dask_computes
from sklearn.base import clone

import pixseg
from pixseg.cli import main
from pixseg.errors import InputError, ModelError
from pixseg.options import OptionError


def _labels(path) -> np.ndarray:
    return zarr.open_group(str(path), mode="r")["0"][:]


@pytest.mark.slow
def test_import_pixseg_gives_the_api_and_imports_nothing_heavy():
    code = (
        "import sys, pixseg; heavy = [m for m in ('dask', 'zarr', 'sklearn', 'numpy') if m in sys.modules];"
        "assert not heavy, heavy; assert sorted(pixseg.__all__) == ['PixelKMeans', '__version__', 'apply', 'segment'];"
        "assert callable(pixseg.segment) and callable(pixseg.apply) and isinstance(pixseg.__version__, str)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_estimator_follows_scikit_learn_conventions():
    estimator = pixseg.PixelKMeans(n_clusters=5, features=("channels", "lab"), seed=3)
    params = estimator.get_params()
    assert params["n_clusters"] == 5 and params["features"] == ("channels", "lab") and params["seed"] == 3
    copy = clone(estimator)
    assert copy is not estimator and copy.get_params() == params
    copy.set_params(n_clusters=7, mask="auto")
    assert copy.n_clusters == 7 and copy.mask == "auto" and estimator.n_clusters == 5
    pixseg.PixelKMeans(n_clusters=1)  # __init__ only stores: validation happens in fit
    with pytest.raises(OptionError, match="clusters must be between 2 and"):
        pixseg.PixelKMeans(n_clusters=1).fit(np.zeros((8, 8, 3), np.uint8))
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        pixseg.PixelKMeans().predict(np.zeros((8, 8, 3), np.uint8))


@pytest.mark.slow
def test_labels_equal_the_cli_on_the_same_image_and_options(tmp_path, capsys, ihc_image):
    path = tmp_path / "ihc.tif"
    tifffile.imwrite(path, ihc_image, tile=(128, 128), photometric="rgb")
    out = tmp_path / "ihc.zarr"
    argv = [
        "segment",
        str(path),
        str(out),
        "-k",
        "5",
        "--features",
        "hed,smooth",
        "--seed",
        "7",
        "--sample-size",
        "20000",
    ]
    assert main([*argv, "-q"]) == 0
    estimator = pixseg.PixelKMeans(n_clusters=5, features="hed,smooth", seed=7, sample_size=20_000)
    labels = estimator.fit(ihc_image).predict(ihc_image)
    np.testing.assert_array_equal(labels.compute(), _labels(out))
    # dask input in other chunks, and an xarray DataArray, give the same labels
    chunked = da.from_array(ihc_image, chunks=(100, 170, 3))
    again = clone(estimator).fit(chunked)
    np.testing.assert_allclose(again.cluster_centers_, estimator.cluster_centers_)
    np.testing.assert_array_equal(again.predict(chunked).compute(), _labels(out))
    xarray = pytest.importorskip("xarray")
    array = xarray.DataArray(ihc_image, dims=("y", "x", "c"))
    np.testing.assert_array_equal(clone(estimator).fit_predict(array).compute(), _labels(out))


def test_predict_is_lazy_and_fit_computes_only_the_sample(blob_image):
    estimator = pixseg.PixelKMeans(n_clusters=4, sample_size=3000).fit(blob_image)
    big = da.from_array(np.tile(blob_image, (4, 4, 1)), chunks=(128, 128, 3))
    with raise_if_dask_computes():
        labels = estimator.predict(big)
    assert isinstance(labels, da.Array) and labels.shape == big.shape[:2] and labels.dtype == np.uint8
    assert labels.chunks[:2] == big.chunks[:2]
    values = labels.compute()
    assert set(np.unique(values)) == {1, 2, 3, 4}
    assert estimator.cluster_centers_.shape == (4, 3) and estimator.feature_names_out_ == ("ch0", "ch1", "ch2")


@pytest.mark.slow
def test_grey_images_and_bad_arrays(blob_image):
    grey = blob_image[..., 0]
    labels = pixseg.PixelKMeans(n_clusters=3).fit(grey).predict(grey).compute()
    assert labels.shape == grey.shape and set(np.unique(labels)) <= {1, 2, 3}
    with pytest.raises(InputError, match=r"shape \(Y, X\) or \(Y, X, C\), got shape \(4,\)"):
        pixseg.PixelKMeans().fit(np.zeros(4))
    with pytest.raises(InputError, match="integer or float dtype, got 'bool'"):
        pixseg.PixelKMeans().fit(np.zeros((8, 8), bool))
    fitted = pixseg.PixelKMeans(n_clusters=3).fit(blob_image)
    with pytest.raises(ModelError, match="fitted on 3 colour channel"):
        fitted.predict(grey)


@pytest.mark.slow
def test_save_load_and_apply_round_trip(tmp_path, blob_image, blob_tiff):
    estimator = pixseg.PixelKMeans(n_clusters=4, seed=1).fit(blob_image)
    model_path = tmp_path / "model.json"
    estimator.save(model_path)
    loaded = pixseg.PixelKMeans.load(model_path)
    assert loaded.n_clusters == 4 and loaded.features == ("channels",)
    np.testing.assert_array_equal(loaded.cluster_centers_, estimator.cluster_centers_)
    np.testing.assert_array_equal(loaded.predict(blob_image).compute(), estimator.predict(blob_image).compute())
    result = pixseg.apply(model_path, blob_tiff, tmp_path / "applied.zarr", chunk=64)
    assert result.model.n_clusters == 4
    np.testing.assert_array_equal(_labels(tmp_path / "applied.zarr"), estimator.predict(blob_image).compute())


@pytest.mark.slow
def test_segment_takes_the_options_as_keywords(tmp_path, blob_tiff):
    out = tmp_path / "labels.zarr"
    result = pixseg.segment(
        blob_tiff, out, clusters=3, features=["channels", "lab"], chunk=64, save_model=tmp_path / "m.json"
    )
    assert result.output == str(out) and result.model.n_clusters == 3
    assert result.model.feature_spec.groups == ("channels", "lab")
    assert set(np.unique(_labels(out))) == {1, 2, 3} and (tmp_path / "m.json").is_file()
    assert sum(row["pixels"] for row in result.statistics) == 150 * 230
    with pytest.raises(OptionError, match="sample_size must be between 1 and"):
        pixseg.segment(blob_tiff, tmp_path / "other.zarr", sample_size=0)


def test_a_model_fitted_without_alpha_labels_an_rgba_input(tmp_path, blob_image, blob_tiff):
    """Alpha only marks pixels without data: an RGB model labels the RGBA copy of its image as it
    labels the RGB image, with label 0 where alpha is 0 (OpenSlide's formats read as RGBA)."""
    model_path = str(tmp_path / "model.json")
    pixseg.PixelKMeans(n_clusters=4, seed=1).fit(blob_image).save(model_path)
    alpha = np.full(blob_image.shape[:2], 255, np.uint8)
    alpha[:40, :70] = 0
    rgba_path = str(tmp_path / "blobs-rgba.tif")
    rgba = np.dstack([blob_image, alpha])
    tifffile.imwrite(rgba_path, rgba, tile=(64, 64), photometric="rgb", extrasamples=["unassalpha"])
    pixseg.apply(model_path, blob_tiff, str(tmp_path / "rgb.zarr"))
    pixseg.apply(model_path, rgba_path, str(tmp_path / "rgba.zarr"))
    rgb_labels, rgba_labels = _labels(tmp_path / "rgb.zarr"), _labels(tmp_path / "rgba.zarr")
    assert (rgba_labels[:40, :70] == 0).all()
    opaque = alpha > 0
    np.testing.assert_array_equal(rgba_labels[opaque], rgb_labels[opaque])
    assert set(np.unique(rgb_labels[opaque])) == {1, 2, 3, 4}
