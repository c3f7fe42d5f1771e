"""End to end: pixseg against in-memory scikit-learn, chunk invariance, determinism, outputs."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import tifffile
import zarr
from conftest import make_blob_image, raise_if_dask_computes
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from pixseg import sampling
from pixseg.features import build_features, make_feature_spec
from pixseg.io.model_file import load_model
from pixseg.io.readers import open_image
from pixseg.model import SegmentationModel
from pixseg.options import FitOptions, ReadOptions
from pixseg.predict import build_labels, predict_chunk
from pixseg.runner import apply, segment
from pixseg.sample_graph import build_candidates
from pixseg.sampling import SampleSource, plan_blocks


def _labels(path: str) -> np.ndarray:
    if path.endswith(".zarr"):
        return zarr.open_group(path, mode="r")["0"][:]
    return tifffile.imread(path)


def _write_tiff(path, pixels, tile=(64, 64)):
    tifffile.imwrite(path, pixels, tile=tile, photometric="rgb" if pixels.ndim == 3 else "minisblack")
    return str(path)


def _sklearn_labels(pixels: np.ndarray, k: int) -> np.ndarray:
    """The in-memory recipe on the same features: channels / 255 (pixseg scales the channels group
    as one, so it minimises the same inertia)."""
    vectors = pixels.reshape(-1, pixels.shape[-1]) / 255.0
    return KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(vectors)


@pytest.mark.slow
def test_matches_in_memory_sklearn_on_separated_image(tmp_path, blob_image, blob_tiff):
    out = str(tmp_path / "labels.zarr")
    segment(blob_tiff, out, fit=FitOptions(clusters=4, sample_size=blob_image.size))
    labels = _labels(out)
    assert labels.shape == blob_image.shape[:2] and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {1, 2, 3, 4}
    assert adjusted_rand_score(_sklearn_labels(blob_image, 4), labels.ravel()) >= 0.99


@pytest.mark.slow
def test_matches_in_memory_sklearn_on_ihc_photo(tmp_path, ihc_image):
    path = _write_tiff(tmp_path / "ihc.tif", ihc_image, tile=(128, 128))
    out = str(tmp_path / "ihc.zarr")
    segment(path, out, read=ReadOptions(chunk=200), fit=FitOptions(clusters=4, sample_size=ihc_image.size))
    score = adjusted_rand_score(_sklearn_labels(ihc_image, 4), _labels(out).ravel())
    assert score >= 0.90


@pytest.mark.slow
def test_one_percent_sample_matches_sklearn_on_separated_data(tmp_path):
    pixels = make_blob_image(400, 500, seed=3)
    path = _write_tiff(tmp_path / "big.tif", pixels)
    out = str(tmp_path / "big.zarr")
    result = segment(path, out, read=ReadOptions(chunk=100), fit=FitOptions(clusters=4, sample_size=2000))
    assert result.model.sample_size == 2000
    assert adjusted_rand_score(_sklearn_labels(pixels, 4), _labels(out).ravel()) >= 0.95


@pytest.fixture
def small_sampling_blocks(monkeypatch):
    """Sampling blocks of 16 pixels and strata from 4 blocks up, so small images read a fraction."""
    monkeypatch.setattr(sampling, "SAMPLE_BLOCK", 16)
    monkeypatch.setattr(sampling, "MIN_SAMPLE_BLOCKS", 4)
    monkeypatch.setattr(sampling, "READ_PER_SAMPLED", 4)


@pytest.mark.slow
def test_stratified_sample_matches_sklearn_and_reads_a_fraction(tmp_path, small_sampling_blocks, caplog):
    pixels = make_blob_image(400, 500, seed=3)
    path = _write_tiff(tmp_path / "big.tif", pixels)
    out = str(tmp_path / "big.zarr")
    assert sampling.sampling_stride(pixels.shape[:2], 2000) == 5  # 25 x 32 blocks, 1 in 25 read
    with caplog.at_level(logging.INFO, logger="pixseg"):
        result = segment(path, out, fit=FitOptions(clusters=4, sample_size=2000))
    assert result.model.sample_size == 2000
    assert "sampling 2000 pixels from 35 blocks" in caplog.text
    assert adjusted_rand_score(_sklearn_labels(pixels, 4), _labels(out).ravel()) >= 0.95
    again = str(tmp_path / "again.zarr")
    segment(path, again, read=ReadOptions(chunk=70), fit=FitOptions(clusters=4, sample_size=2000))
    np.testing.assert_array_equal(_labels(again), _labels(out))  # chunking changes nothing


@pytest.mark.slow
def test_sparse_valid_pixels_make_the_strata_finer_until_the_sample_is_full(tmp_path, small_sampling_blocks, caplog):
    rgba = np.dstack([make_blob_image(400, 500, seed=3), np.zeros((400, 500), np.uint8)])
    rgba[300:330, 420:445, 3] = 255  # 750 valid pixels in one corner: most strata's blocks hold none
    path = str(tmp_path / "sparse.tif")
    tifffile.imwrite(path, rgba, tile=(64, 64), photometric="rgb", extrasamples=["unassalpha"])
    out = str(tmp_path / "sparse.zarr")
    with caplog.at_level(logging.INFO, logger="pixseg"):
        result = segment(path, out, fit=FitOptions(clusters=3, sample_size=600))
    assert result.model.sample_size == 600
    assert caplog.text.count("sampling 600 pixels from") >= 2  # refined at least once
    labels = _labels(out)
    assert (labels[rgba[..., 3] == 0] == 0).all() and (labels[rgba[..., 3] > 0] > 0).all()


@pytest.mark.slow
def test_labels_ordered_by_brightness(tmp_path, blob_image, blob_tiff):
    out = str(tmp_path / "labels.zarr")
    result = segment(blob_tiff, out, fit=FitOptions(clusters=4))
    labels = _labels(out)
    brightness = [blob_image[labels == k].mean() for k in range(1, 5)]
    assert brightness == sorted(brightness)
    assert np.all(np.diff(result.model.centroids.mean(axis=1)) > 0)


@pytest.mark.slow
def test_chunk_size_does_not_change_labels(tmp_path, blob_tiff):
    model_path = str(tmp_path / "model.json")
    segment(blob_tiff, str(tmp_path / "ref.zarr"), fit=FitOptions(clusters=4), model_path=model_path)
    outputs = []
    for chunk in (64, 100, 1024):
        out = str(tmp_path / f"chunk{chunk}.zarr")
        apply(model_path, blob_tiff, out, read=ReadOptions(chunk=chunk))
        assert zarr.open_group(out, mode="r")["0"].chunks == (min(chunk, 150), min(chunk, 230))
        outputs.append(_labels(out))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], outputs[2])
    np.testing.assert_array_equal(outputs[0], _labels(str(tmp_path / "ref.zarr")))


@pytest.mark.slow
def test_same_seed_same_labels_and_apply_equals_segment(tmp_path, ihc_image):
    path = _write_tiff(tmp_path / "ihc.tif", ihc_image)
    fit = FitOptions(clusters=5, seed=42, sample_size=5000, features=("channels", "lab"))
    first = segment(path, str(tmp_path / "a.zarr"), fit=fit, model_path=str(tmp_path / "m.json"))
    segment(path, str(tmp_path / "b.tif"), read=ReadOptions(chunk=96), fit=fit)
    np.testing.assert_array_equal(_labels(str(tmp_path / "a.zarr")), _labels(str(tmp_path / "b.tif")))
    apply(str(tmp_path / "m.json"), path, str(tmp_path / "c.zarr"))
    np.testing.assert_array_equal(_labels(str(tmp_path / "a.zarr")), _labels(str(tmp_path / "c.zarr")))
    saved = load_model(str(tmp_path / "m.json"))
    np.testing.assert_array_equal(saved.centroids, first.model.centroids)
    other = segment(
        path,
        str(tmp_path / "d.zarr"),
        fit=FitOptions(clusters=5, seed=43, sample_size=5000, features=("channels", "lab")),
    )
    assert not np.array_equal(other.model.centroids, first.model.centroids)


@pytest.mark.slow
def test_local_cluster_gives_the_same_labels_as_threads(tmp_path, blob_tiff):
    from pixseg.cluster import open_scheduler

    fit = FitOptions(clusters=4, sample_size=3000)
    segment(blob_tiff, str(tmp_path / "threads.zarr"), read=ReadOptions(chunk=64), fit=fit)
    with open_scheduler("local", workers=2) as client:
        assert client is not None
        segment(blob_tiff, str(tmp_path / "local.zarr"), read=ReadOptions(chunk=64), fit=fit)
    np.testing.assert_array_equal(_labels(str(tmp_path / "threads.zarr")), _labels(str(tmp_path / "local.zarr")))


def test_building_the_pipeline_computes_nothing(blob_tiff):
    with raise_if_dask_computes():
        image = open_image(blob_tiff, chunk=64)
        spec = make_feature_spec("channels,grey,lab", n_channels=3, has_alpha=False, dtype=image.dtype)
        features = build_features(image.data, spec)
        source = SampleSource(pixels=image.source, spec=spec, scale=(1.0, 1.0), mask=None)
        build_candidates(source, plan_blocks(image.shape[:2], stride=2, seed=0, block=32), threshold=0.1, seed=0)
        model = SegmentationModel(
            feature_spec=spec,
            centroids=np.linspace(0, 1, 4 * 7).reshape(4, 7),
            feature_mean=np.zeros(7),
            feature_std=np.ones(7),
            seed=0,
            sample_size=500,
            sample_inertia=0.0,
            n_iter=1,
        )
        labels = build_labels(features, model)
    assert labels.shape == (150, 230) and labels.dtype == np.uint8


@pytest.mark.slow
def test_masked_pixels_get_label_zero_and_are_never_sampled(tmp_path, blob_image):
    rgba = np.dstack([blob_image, np.full(blob_image.shape[:2], 255, np.uint8)])
    rgba[:40, :60, 3] = 0
    rgba[:40, :60, :3] = 255  # a bright colour that exists nowhere else: sampled, it would form a cluster
    path = str(tmp_path / "rgba.tif")
    tifffile.imwrite(path, rgba, tile=(64, 64), photometric="rgb", extrasamples=["unassalpha"])
    out = str(tmp_path / "rgba.zarr")
    result = segment(path, out, read=ReadOptions(chunk=50), fit=FitOptions(clusters=4, sample_size=rgba.size))
    labels = _labels(out)
    assert (labels[:40, :60] == 0).all() and (labels[rgba[..., 3] > 0] > 0).all()
    assert result.model.sample_size == np.count_nonzero(rgba[..., 3])
    assert result.model.centroids.max() < 0.97


@pytest.mark.slow
def test_float_nan_pixels_are_masked(tmp_path, blob_image):
    floats = blob_image.astype(np.float32) / 255
    floats[10:20, 30:35, 1] = np.nan
    path = str(tmp_path / "float.tif")
    tifffile.imwrite(path, floats, tile=(64, 64), photometric="rgb")
    out = str(tmp_path / "float.zarr")
    segment(path, out, fit=FitOptions(clusters=4))
    labels = _labels(out)
    assert (labels[10:20, 30:35] == 0).all() and np.count_nonzero(labels == 0) == 50


@pytest.mark.slow
def test_tiff_output_is_tiled_bigtiff_equal_to_zarr(tmp_path, blob_tiff):
    model_path = str(tmp_path / "m.json")
    segment(blob_tiff, str(tmp_path / "l.zarr"), fit=FitOptions(clusters=3), model_path=model_path)
    apply(model_path, blob_tiff, str(tmp_path / "l.tif"))
    with tifffile.TiffFile(tmp_path / "l.tif") as tif:
        page = tif.pages.first
        assert tif.is_bigtiff and page.is_tiled and page.compression == tifffile.COMPRESSION.ZSTD
        assert page.dtype == np.uint8 and page.shape == (150, 230)
        np.testing.assert_array_equal(page.asarray(), _labels(str(tmp_path / "l.zarr")))
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*work*"))


@pytest.mark.slow
def test_zarr_output_is_ome_zarr_label_image(tmp_path, blob_tiff):
    out = str(tmp_path / "labels.zarr")
    segment(blob_tiff, out, read=ReadOptions(chunk=64), fit=FitOptions(clusters=4))
    group = zarr.open_group(out, mode="r")
    assert group.metadata.zarr_format == 3
    ome = group.attrs["ome"]
    assert ome["version"] == "0.5"
    assert ome["multiscales"][0]["datasets"][0]["path"] == "0"
    assert [c["label-value"] for c in ome["image-label"]["colors"]] == [1, 2, 3, 4]
    assert group.attrs["pixseg"]["complete"] is True
    assert group["0"].chunks == (64, 64) and group["0"].metadata.dimension_names == ("y", "x")
    json.dumps(group.attrs.asdict())  # metadata is plain JSON

    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(out))())
    np.testing.assert_array_equal(np.asarray(nodes[0].data[0]), group["0"][:])


def test_more_than_255_clusters_use_uint16(blob_image):
    spec = make_feature_spec("channels", n_channels=3, has_alpha=False, dtype=np.dtype(np.uint8))
    centroids = np.random.default_rng(0).random((300, 3))
    model = SegmentationModel(spec, centroids, np.zeros(3), np.ones(3), 0, 1, 0.0, 1)
    assert model.label_dtype == np.uint16
    labels = predict_chunk(blob_image / 255.0, centroids.astype(np.float32), np.ones(3, np.float32), model.label_dtype)
    assert labels.dtype == np.uint16 and labels.max() > 255


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [64, 100])
def test_grey_uint16_zarr_input(tmp_path, chunk):
    pixels = make_blob_image(120, 90)[..., 0].astype(np.uint16) * 257
    path = str(tmp_path / "grey.zarr")
    zarr.create_array(path, shape=pixels.shape, chunks=(40, 40), dtype=np.uint16)[:] = pixels
    out = str(tmp_path / "grey-labels.zarr")
    segment(path, out, read=ReadOptions(chunk=chunk), fit=FitOptions(clusters=3, features=("channels", "grey")))
    labels = _labels(out)
    assert set(np.unique(labels)) == {1, 2, 3}
    for k in (1, 2):  # one intensity axis: label k's pixels are all darker than label k+1's
        assert pixels[labels == k].max() < pixels[labels == k + 1].min()


@pytest.mark.slow
def test_local_workers_get_the_malloc_settings_and_import_the_modules_they_are_given():
    import os

    from pixseg.cluster import LOCAL_WORKER_MALLOC, OPENCV_ONE_THREAD, open_scheduler

    def environ() -> dict:
        return {key: os.environ.get(key) for key in (*LOCAL_WORKER_MALLOC, *OPENCV_ONE_THREAD, "OMP_NUM_THREADS")}

    def worker_state() -> tuple[dict, bool]:
        import sys

        return environ(), "pixseg.predict" in sys.modules

    with open_scheduler("local", workers=1, worker_imports=("pixseg.predict",)) as client:
        seen, imported = next(iter(client.run(worker_state).values()))
    assert seen == {**LOCAL_WORKER_MALLOC, **OPENCV_ONE_THREAD, "OMP_NUM_THREADS": "1"}  # distributed's are kept
    assert imported  # the preload hook imported the modules it was given


@pytest.mark.slow
def test_a_second_local_cluster_gets_its_own_worker_setup_and_the_host_environment_is_left_as_it_was():
    import os

    from pixseg.cluster import LOCAL_WORKER_MALLOC, OPENCV_ONE_THREAD, WORKER_IMPORTS_VARIABLE, open_scheduler

    def imports() -> str | None:
        return os.environ.get(WORKER_IMPORTS_VARIABLE)

    names = (*LOCAL_WORKER_MALLOC, *OPENCV_ONE_THREAD, WORKER_IMPORTS_VARIABLE)
    before = {name: os.environ.get(name) for name in names}
    seen = []
    for modules in (("pixseg.labelling",), ("pixseg.predict",)):
        with open_scheduler("local", workers=1, worker_imports=modules) as client:
            seen.append(next(iter(client.run(imports).values())))
        assert {name: os.environ.get(name) for name in names} == before  # distributed's copy is undone
    assert seen == ["pixseg.labelling", "pixseg.predict"]
