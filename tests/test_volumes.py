"""3-D volumes: NIfTI and DICOM readers, the 3-D sample, labels, NIfTI and OME-Zarr label outputs."""

from __future__ import annotations

import importlib
import json
import math
import os
import random
import shutil
import threading
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

import pixseg
from pixseg.cli import main
from pixseg.features import make_feature_spec
from pixseg.io.label_volume import pyramid_factors
from pixseg.io.model_file import load_model, model_document
from pixseg.io.readers.volume import open_volume
from pixseg.volume_sampling import plan_volume_blocks, sample_voxels
from pixseg.volumes import VoxelFeatures, volume_features, volume_spec

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

#: (centre z, y, x, radius, intensity) of the phantom's spheres; background 100.
SPHERES = ((11, 17, 12, 7, 400.0), (12, 18, 29, 6, 800.0), (5, 6, 6, 4, 1200.0))


def make_phantom(shape: tuple[int, int, int] = (23, 37, 41), *, seed: int = 0, noise: float = 25.0) -> np.ndarray:
    """Spheres of known intensities in Gaussian noise, float32 (Z, Y, X)."""
    z, y, x = np.indices(shape)
    volume = np.full(shape, 100.0)
    for cz, cy, cx, radius, value in SPHERES:
        volume[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 < radius**2] = value
    return (volume + np.random.default_rng(seed).normal(0.0, noise, shape)).astype(np.float32)


def _cli(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_phantom_labels_match_sklearn_and_any_chunking_or_scheduler():
    phantom = make_phantom()
    reference = KMeans(n_clusters=4, n_init=4, random_state=0).fit_predict(phantom.reshape(-1, 1))
    runs = []
    for chunks, scheduler in (((7, 11, 13), "threads"), ((16, 16, 16), "sync"), ((23, 5, 41), "threads")):
        estimator = pixseg.PixelKMeans(n_clusters=4, volume=True, sample_size=20_000)
        with dask.config.set(scheduler=scheduler):
            labels = estimator.fit_predict(da.from_array(phantom, chunks=chunks)).compute()
        runs.append(labels)
    assert runs[0].shape == phantom.shape and set(np.unique(runs[0])) == {1, 2, 3, 4}
    assert adjusted_rand_score(reference, runs[0].ravel()) >= 0.99
    for other in runs[1:]:
        np.testing.assert_array_equal(other, runs[0])


def test_sample_depends_on_seed_shape_and_voxels_only():
    phantom = make_phantom((40, 30, 50))
    first = sample_voxels(
        da.from_array(phantom[..., None], chunks=(7, 9, 11, 1)), sample_size=500, seed=3, progress=False
    )
    again = sample_voxels(
        da.from_array(phantom[..., None], chunks=(40, 30, 50, 1)), sample_size=500, seed=3, progress=False
    )
    other = sample_voxels(
        da.from_array(phantom[..., None], chunks=(40, 30, 50, 1)), sample_size=500, seed=4, progress=False
    )
    assert first.shape == (500, 1)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert set(first[:, 0]) <= set(phantom.ravel().astype(np.float64))


def test_stratified_blocks_cover_the_volume():
    shape = (70, 45, 90)
    regions, weights = plan_volume_blocks(shape, stride=2, seed=5, block=8)
    cube_voxels = np.prod(regions[:, 3:] - regions[:, :3], axis=1)
    assert np.isclose((weights * cube_voxels).sum(), np.prod(shape))  # the strata tile the volume
    assert len(regions) == np.prod([math.ceil(math.ceil(n / 8) / 2) for n in shape])  # one cube per stratum
    assert np.all(regions[:, 3:] <= shape) and np.all(regions[:, :3] % 8 == 0)
    again, _ = plan_volume_blocks(shape, stride=2, seed=5, block=8)
    np.testing.assert_array_equal(regions, again)


def test_window_clips_then_scales():
    raw = np.array([[-2000.0], [40.0], [5000.0], [np.nan]], dtype=np.float32)
    spec = volume_spec(raw[:3], dtype=np.float32, features=("channels",), normalise="robust", window=(-160.0, 240.0))
    assert spec.channel_ranges == ((-160.0, 240.0),)  # the window, not the sample's percentiles
    features = VoxelFeatures(spec)(raw[:, None, :])[:, 0, 0]
    np.testing.assert_allclose(features[:3], [0.0, 0.5, 1.0])
    assert np.isnan(features[3])


def _phantom_spec(features: str, *, sigma: float):
    """The feature spec of :func:`make_phantom` voxels (one float32 channel scaled from 0..1000)."""
    return make_feature_spec(
        features, n_channels=1, has_alpha=False, dtype=np.float32, channel_ranges=[(0.0, 1e3)], sigmas=(sigma,)
    )


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.8, 0.8)])
def test_3d_texture_is_exact_across_chunk_borders(spacing):
    from scipy import ndimage

    phantom = make_phantom((20, 30, 34))
    spec = _phantom_spec("channels,smooth,std,gradient,log", sigma=1.5)
    features = volume_features(da.from_array(phantom[..., None], chunks=(7, 9, 11, 1)), VoxelFeatures(spec, spacing))
    assert features.chunks[:3] == ((7, 7, 6), (9, 9, 9, 3), (11, 11, 11, 1))
    x = (phantom.astype(np.float64) / 1000.0).astype(np.float32).astype(np.float64)
    sigmas = [1.5 / s for s in spacing]

    def gaussian(source, order=(0, 0, 0)):
        return ndimage.gaussian_filter(source, sigmas, order=order, mode="reflect", truncate=4.0)

    smooth = gaussian(x)
    std = np.sqrt(np.maximum(gaussian(x * x) - smooth**2, 0.0))
    axes = np.eye(3, dtype=int)
    if spacing == (1.0, 1.0, 1.0):
        gradient = ndimage.gaussian_gradient_magnitude(x, 1.5, mode="reflect", truncate=4.0)
        log = ndimage.gaussian_laplace(x, 1.5, mode="reflect", truncate=4.0)
    else:
        gradient = np.sqrt(sum((gaussian(x, tuple(a)) / s) ** 2 for a, s in zip(axes, spacing, strict=True)))
        log = sum(gaussian(x, tuple(2 * a)) / s**2 for a, s in zip(axes, spacing, strict=True))
    expected = np.stack([x, smooth, std, gradient, log], axis=-1)
    assert spec.columns == ("ch0", "smooth_s1.5", "std_s1.5", "gradient_s1.5", "log_s1.5")
    np.testing.assert_allclose(features.compute(), expected, rtol=1e-5, atol=1e-5)


def test_3d_texture_of_a_volume_thinner_than_its_halo():
    from scipy import ndimage

    thin = np.random.default_rng(0).random((3, 40, 41)).astype(np.float32)
    spec = make_feature_spec(
        "smooth", n_channels=1, has_alpha=False, dtype=np.float32, channel_ranges=[(0.0, 1.0)], sigmas=(2.0,)
    )
    features = volume_features(da.from_array(thin[..., None], chunks=(1, 13, 7, 1)), VoxelFeatures(spec)).compute()
    expected = ndimage.gaussian_filter(thin.astype(np.float64), 2.0, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(features[..., 0], expected, rtol=1e-5, atol=1e-6)


def test_texture_sample_holds_the_whole_volumes_features():
    phantom = make_phantom((20, 30, 34))
    spec = _phantom_spec("channels,smooth,gradient", sigma=2.0)
    features = VoxelFeatures(spec, (2.0, 1.0, 1.0))
    data = da.from_array(phantom[..., None], chunks=(6, 8, 10, 1))
    sample = sample_voxels(data, sample_size=500, seed=1, progress=False, featurise=features, depth=features.halo)
    whole = features(phantom[..., None]).reshape(-1, 3).astype(np.float64)  # one block: the whole volume
    rows = {tuple(row) for row in whole}
    assert sample.shape == (500, 3) and all(tuple(vector) in rows for vector in sample)


def test_pyramid_factors_stride_fine_axes_until_near_isotropic():
    factors = pyramid_factors((100, 512, 512), (3.0, 0.75, 0.75))
    assert factors[:3] == [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
    spacing = np.array([3.0, 0.75, 0.75]) * np.prod(factors[:2], axis=0)
    assert spacing.max() / spacing.min() <= np.sqrt(2)
    assert pyramid_factors((40, 50, 60), (1.0, 1.0, 1.0)) == []


@pytest.mark.slow
def test_nifti_labels_keep_the_affine_and_orientation(tmp_path, capsys):
    from nibabel.testing import data_path

    source = os.path.join(data_path, "anatomical.nii")  # big-endian int16, 33 x 41 x 25, 2 mm
    out = tmp_path / "labels.nii.gz"
    code, stdout, _ = _cli(capsys, "segment", source, out, "--clusters", "3", "--chunk", "16")
    assert code == 0 and "labels 1..3" in stdout
    code, info, _ = _cli(capsys, "info", source)
    assert code == 0 and "shape (ZxYxX): 25x41x33" in info and "dtype: int16" in info
    scan, labels = nib.load(source), nib.load(str(out))
    assert labels.shape == scan.shape and labels.get_data_dtype() == np.uint8
    np.testing.assert_allclose(labels.affine, scan.affine)
    # the same model on nibabel's own array, transposed to (Z, Y, X), gives the same labels in place
    in_memory = np.asarray(scan.dataobj).transpose(2, 1, 0)
    expected = pixseg.PixelKMeans(n_clusters=3, volume=True).fit_predict(in_memory).compute()
    np.testing.assert_array_equal(np.asarray(labels.dataobj).transpose(2, 1, 0), expected)


@pytest.mark.slow
def test_compressed_4d_nifti_to_ome_zarr_labels(tmp_path, capsys):
    from nibabel.testing import data_path

    source = os.path.join(data_path, "example4d.nii.gz")  # 128 x 96 x 24 x 2, 2 x 2 x 2.2 mm
    out = tmp_path / "out.zarr"
    code, _, _ = _cli(capsys, "segment", source, out, "--clusters", "4", "--workdir", tmp_path / "work")
    assert code == 0
    assert os.listdir(tmp_path / "work") == []  # the converted copy is removed after the run
    group = zarr.open_group(str(out), mode="r")
    multiscale = group.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in multiscale["axes"]] == ["z", "y", "x"]
    assert {a["unit"] for a in multiscale["axes"]} == {"millimeter"}
    zooms = nib.load(source).header.get_zooms()[:3]
    scale0 = multiscale["datasets"][0]["coordinateTransformations"][0]["scale"]
    np.testing.assert_allclose(scale0, zooms[::-1], rtol=1e-6)
    level0 = group["0"][:]
    assert level0.shape == (24, 96, 128)
    scale1 = multiscale["datasets"][1]["coordinateTransformations"][0]["scale"]
    factor = tuple(round(b / a) for a, b in zip(scale0, scale1, strict=True))
    assert factor == (2, 2, 2)  # 2.2 x 2 x 2 mm is near-isotropic: every axis is strided
    np.testing.assert_array_equal(group["1"][:], level0[::2, ::2, ::2])
    stats = group.attrs["pixseg"]["statistics"]
    assert sum(row["voxels"] for row in stats) == level0.size
    assert stats[0]["volume_mm3"] == pytest.approx(stats[0]["voxels"] * np.prod(zooms), rel=1e-6)


@pytest.mark.slow
def test_ome_zarr_z_stack_segmented_as_a_volume_with_volume_flag(tmp_path, capsys):
    phantom = make_phantom((12, 20, 24))
    source = str(tmp_path / "stack.zarr")
    group = zarr.open_group(source, mode="w", zarr_format=3)
    group.create_array("0", data=phantom, chunks=(5, 8, 8))
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    scale = {"type": "scale", "scale": [2.0, 0.5, 0.25]}
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [{"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": [scale]}]}],
    }
    out = tmp_path / "labels.nii"
    code, _, _ = _cli(capsys, "segment", source, out, "--volume", "--clusters", "3")
    assert code == 0
    labels = nib.load(str(out))
    np.testing.assert_allclose(labels.affine, np.diag([0.25e-3, 0.5e-3, 2e-3, 1.0]))
    expected = pixseg.PixelKMeans(n_clusters=3, volume=True).fit_predict(phantom).compute()
    np.testing.assert_array_equal(np.asarray(labels.dataobj).transpose(2, 1, 0), expected)


def test_nii_gz_is_converted_slab_by_slab_in_bounded_memory(tmp_path, monkeypatch):
    import tracemalloc

    from pixseg.io.readers import nifti

    shape = (96, 128, 400)  # (i, j, k): 9.4 MiB of int16
    voxels = np.fromfunction(lambda i, j, k: (i + 3 * j + 7 * k) % 1000, shape, dtype=np.int64).astype(np.int16)
    source = str(tmp_path / "scan.nii.gz")
    nib.save(nib.Nifti1Image(voxels, np.diag([0.5, 0.5, 1.5, 1.0])), source)
    monkeypatch.setattr(nifti, "SLAB_BYTES", 2**20)
    small = str(tmp_path / "small.nii.gz")
    nib.save(nib.Nifti1Image(voxels[:4, :4, :4], np.eye(4)), small)
    open_volume(small, workdir=str(tmp_path))  # imports what conversion needs, outside the measurement
    importlib.import_module("distributed")  # dask's rechunk imports it on first use
    tracemalloc.start()
    try:
        volume = open_volume(source, workdir=str(tmp_path / "work"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"converting took {peak / 2**20:.1f} MiB"
    assert volume.spacing == (1.5, 0.5, 0.5)
    np.testing.assert_array_equal(volume.data[..., 0].compute(), voxels.transpose(2, 1, 0))
    assert len(os.listdir(tmp_path / "work")) == 1  # one copy, reused by the next open
    again = open_volume(source, workdir=str(tmp_path / "work"))
    assert again.data.shape == volume.data.shape


@pytest.mark.parametrize(
    ("name", "options", "spacing"),
    [
        (
            "ome.ome.tif",
            {
                "ome": True,
                "metadata": {"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0},
            },
            (2e-3, 5e-4, 5e-4),
        ),
        (
            "imagej.tif",
            {"imagej": True, "resolution": (4.0, 4.0), "metadata": {"spacing": 3.0, "unit": "um", "axes": "ZYX"}},
            (3e-3, 2.5e-4, 2.5e-4),
        ),
    ],
)
def test_tiff_z_stacks_read_as_volumes_with_their_voxel_size(tmp_path, capsys, name, options, spacing):
    import tifffile

    stack = np.arange(5 * 6 * 7, dtype=np.uint16).reshape(5, 6, 7)
    path = str(tmp_path / name)
    tifffile.imwrite(path, stack, **options)
    volume = open_volume(path)
    assert volume.spacing == pytest.approx(spacing)
    np.testing.assert_array_equal(volume.data[..., 0].compute(), stack)
    assert main(["info", path, "--volume"]) == 0
    shown = capsys.readouterr().out
    assert "shape (ZxYxX): 5x6x7" in shown and "spacing mm: " + "x".join(f"{s:.6g}" for s in spacing) in shown


def _write_series(folder, pixels: np.ndarray, *, spacing=(0.7, 0.6), step=2.5, uid=None, positions=None) -> str:
    """``pixels`` (Z, Y, X) uint16 as one CT slice file each, under shuffled random names."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    os.makedirs(folder, exist_ok=True)
    uid = uid or generate_uid()
    names = [f"{random.Random(i).getrandbits(40):x}.dcm" for i in range(len(pixels))]
    random.Random(7).shuffle(names)
    for index, (plane, name) in enumerate(zip(pixels, names, strict=True)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.Modality = uid, "CT"
        ds.Rows, ds.Columns = plane.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        z = positions[index] if positions is not None else -40.0 + step * index
        ds.ImagePositionPatient = [-12.5, 30.0, z]
        ds.PixelSpacing = list(spacing)
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = plane.astype(np.uint16).tobytes()
        pydicom.dcmwrite(os.path.join(folder, name), ds, enforce_file_format=True)
    return uid


def test_dicom_series_sorted_by_position_with_spacing_and_hu(tmp_path, capsys):
    pixels = (make_phantom((6, 16, 20), noise=5.0) + 1024).astype(np.uint16)
    folder = tmp_path / "series"
    _write_series(folder, pixels)
    volume = open_volume(str(folder))
    assert volume.spacing == pytest.approx((2.5, 0.7, 0.6))
    np.testing.assert_array_equal(volume.data[..., 0].compute(), pixels.astype(np.float32) - 1024)
    expected_affine = np.array([[-0.6, 0, 0, 12.5], [0, -0.7, 0, -30.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(volume.affine, expected_affine)
    code, info, _ = _cli(capsys, "info", folder)
    assert code == 0 and "spacing mm: 2.5x0.7x0.6" in info and "shape (ZxYxX): 6x16x20" in info
    out = tmp_path / "labels.nii.gz"
    model = tmp_path / "model.json"
    code, _, _ = _cli(capsys, "segment", folder, out, "--clusters", "2", "--window=-160,240", "--save-model", model)
    assert code == 0
    saved = pixseg.PixelKMeans.load(model)
    assert saved.model_.feature_spec.channel_ranges == ((-160.0, 240.0),)
    labels = nib.load(str(out))
    np.testing.assert_allclose(labels.affine, expected_affine)
    assert labels.shape == (20, 16, 6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--resume",), "--resume needs a .zarr output for volumes"),
        (("--mask", "mask.png"), "--mask for a volume is one of none, auto"),
        (("--plane", "z=1"), "--plane is not available for volumes"),
        (("--window", "5,1"), "--window must be LOW,HIGH with LOW < HIGH"),
        (("--features", "hessian"), "--features hessian is not available for volumes"),
    ],
)
def test_unsupported_volume_options_exit_2_before_any_work(tmp_path, capsys, args, message):
    source = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(make_phantom((6, 7, 8)), np.eye(4)), str(source))
    out = tmp_path / ("out.nii.gz" if "--resume" in args else "out.zarr")
    code, stdout, stderr = _cli(capsys, "segment", source, out, *args)
    assert code == 2 and stdout == "" and message in stderr and len(stderr.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["scan.nii.gz"]  # nothing written, not even the converted copy


@pytest.mark.parametrize("defect", ["gap", "mixed"])
def test_bad_dicom_series_exits_2_with_one_line(tmp_path, capsys, defect):
    pixels = np.full((5, 8, 8), 1000, dtype=np.uint16)
    folder = tmp_path / "series"
    if defect == "gap":
        _write_series(folder, pixels, positions=[0.0, 2.5, 5.0, 10.0, 12.5])
    else:
        _write_series(folder, pixels)
        other = _write_series(folder, pixels[:2])
    code, stdout, stderr = _cli(capsys, "segment", folder, tmp_path / "out.nii.gz", "--clusters", "2")
    assert code == 2 and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert ("uneven slice positions" if defect == "gap" else "--series-uid") in lines[0]
    if defect == "mixed":
        assert open_volume(str(folder), series_uid=other).shape == (2, 8, 8, 1)


def test_dicom_whole_slide_folders_stay_slides(tmp_path):
    from pixseg.io.readers.volume import is_volume_input

    slide = os.path.join(os.path.dirname(__file__), "data", "dicom-boxes")  # VL whole-slide instances
    assert not is_volume_input(slide)
    _write_series(tmp_path / "series", np.zeros((2, 4, 4), dtype=np.uint16))
    assert is_volume_input(str(tmp_path / "series"))


def test_outputs_never_replace_the_input_or_a_foreign_file(tmp_path, capsys):
    from pixseg.io.label_volume import create_nifti_labels, is_label_nifti

    source = tmp_path / "scan.nii"
    nib.save(nib.Nifti1Image(make_phantom((6, 7, 8)), np.eye(4)), str(source))
    foreign = tmp_path / "theirs.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)), str(foreign))
    for out, message in ((source, "would overwrite the input"), (foreign, "not a pixseg label volume")):
        code, _, stderr = _cli(capsys, "segment", source, out, "--overwrite")
        assert code == 2 and message in stderr
    assert not is_label_nifti(str(foreign))
    ours = tmp_path / "ours.nii"
    create_nifti_labels(str(ours), shape=(2, 3, 4), dtype=np.dtype(np.uint8), affine=np.eye(4))
    assert is_label_nifti(str(ours)) and nib.load(str(ours)).shape == (4, 3, 2)


#: Side files planted beside a volume output: a user's PNG, and a page that copies pixseg's
#: report signature, neither with pixseg's ``.stats.json`` beside it; and statistics not pixseg's.
FOREIGN_SIDE_FILES = {
    ".slices.png": b"\x89PNG\r\n\x1a\nmine",
    ".report.html": b"<!DOCTYPE html><!-- pixseg report -->mine",
    ".stats.json": b"{}",
}


@pytest.mark.parametrize("suffix", FOREIGN_SIDE_FILES)
@pytest.mark.parametrize("output", ["out.nii.gz", "out.zarr"])
def test_a_foreign_side_file_beside_a_volume_output_is_refused_and_left_alone(tmp_path, capsys, output, suffix):
    source = tmp_path / "scan.nii"
    nib.save(nib.Nifti1Image(make_phantom((6, 7, 8)), np.eye(4)), str(source))
    (tmp_path / (output + suffix)).write_bytes(FOREIGN_SIDE_FILES[suffix])
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    for extra in ([], ["--overwrite"]):
        code, _, stderr = _cli(capsys, "segment", source, tmp_path / output, "-k", 2, *extra)
        assert code == 2 and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
        assert "side file" in stderr and "not a pixseg" in stderr
        assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


@pytest.mark.slow
def test_overwrite_replaces_a_volume_outputs_own_side_files_and_its_statistics_count_voxels(tmp_path, capsys):
    import csv

    import imagecodecs

    from pixseg.io.side_files import REPORT_SIGNATURE, is_own_side_file

    source, output = tmp_path / "scan.nii", tmp_path / "out.nii.gz"
    nib.save(nib.Nifti1Image(make_phantom((6, 7, 8)), np.diag([0.8, 0.9, 2.0, 1.0])), str(source))
    assert _cli(capsys, "segment", source, output, "-k", 3)[0] == 0
    side = {suffix: tmp_path / f"out.nii.gz{suffix}" for suffix in (".stats.csv", ".stats.json", *FOREIGN_SIDE_FILES)}
    assert all(is_own_side_file(str(path)) for path in side.values())
    labels = _labels(output)
    source_voxels = np.asarray(nib.load(str(source)).dataobj, dtype=np.float64).transpose(2, 1, 0)
    voxels = np.bincount(labels.ravel(), minlength=4)
    voxel_mm3 = float(np.prod(nib.load(str(source)).header.get_zooms()))
    with open(side[".stats.csv"], newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [int(row["voxels"]) for row in table] == voxels[1:].tolist()
    np.testing.assert_allclose([float(row["volume_mm3"]) for row in table], voxels[1:] * voxel_mm3, rtol=1e-6)
    means = [source_voxels[labels == label].mean() for label in (1, 2, 3)]  # float32 voxels, summed in float64
    np.testing.assert_allclose([float(row["intensity"]) for row in table], means, rtol=1e-6)
    document = json.loads(side[".stats.json"].read_text())
    assert document["masked_voxels"] == voxels[0] == 0
    assert [row["mean_colour"] for row in document["labels"]] == [[float(row["intensity"])] for row in table]
    assert [row["voxels"] for row in document["labels"]] == voxels[1:].tolist()
    # stale previews of pixseg's own output: replaced with --overwrite, kept without it
    side[".slices.png"].write_bytes(FOREIGN_SIDE_FILES[".slices.png"])
    side[".report.html"].write_bytes(FOREIGN_SIDE_FILES[".report.html"])
    code, _, stderr = _cli(capsys, "segment", source, output, "-k", 3)
    assert code == 2 and "exists" in stderr and side[".slices.png"].read_bytes() == FOREIGN_SIDE_FILES[".slices.png"]
    assert _cli(capsys, "segment", source, output, "-k", 3, "--overwrite")[0] == 0
    assert imagecodecs.png_decode(side[".slices.png"].read_bytes()).ndim == 3
    report = side[".report.html"].read_text()
    assert report.startswith(REPORT_SIGNATURE) and report != FOREIGN_SIDE_FILES[".report.html"].decode()
    # side files left by a removed pixseg output do not block a new run (as for slides)
    output.unlink()
    assert _cli(capsys, "segment", source, output, "-k", 3)[0] == 0


def _nifti_phantom(path, shape=(23, 37, 41)) -> np.ndarray:
    """The phantom saved as a NIfTI file (axes reversed to (i, j, k)); returns it as (Z, Y, X)."""
    phantom = make_phantom(shape)
    nib.save(nib.Nifti1Image(phantom.transpose(2, 1, 0), np.diag([0.8, 0.9, 2.0, 1.0])), str(path))
    return phantom


def _labels(path) -> np.ndarray:
    """(Z, Y, X) labels of a NIfTI or OME-Zarr label volume."""
    if str(path).endswith(".zarr"):
        return zarr.open_group(str(path), mode="r")["0"][:]
    return np.asarray(nib.load(str(path)).dataobj).transpose(2, 1, 0)


def test_window_round_trips_through_the_model_and_old_models_still_load():
    from pixseg.features import FeatureSpec

    spec = volume_spec(np.zeros((4, 1)), dtype=np.int16, features=("channels",), normalise="auto", window=(-1.0, 2.0))
    document = spec.to_dict()
    assert document["window"] == [-1.0, 2.0] and FeatureSpec.from_dict(document) == spec
    older = {k: v for k, v in document.items() if k != "window"}
    assert FeatureSpec.from_dict(older).window is None
    with pytest.raises(ValueError, match="window"):
        FeatureSpec.from_dict({**document, "window": [3, 1]})


@pytest.mark.slow
def test_apply_gives_the_labels_segment_gave(tmp_path, capsys):
    source = tmp_path / "scan.nii"
    _nifti_phantom(source)
    model, first = tmp_path / "model.json", tmp_path / "first.zarr"
    args = ("--clusters", "3", "--window=150,900", "--chunk", "16", "--save-model", model)
    code, _, _ = _cli(capsys, "segment", source, first, *args)
    assert code == 0
    code, stdout, _ = _cli(capsys, "apply", model, source, tmp_path / "applied.nii.gz", "--chunk", "20")
    assert code == 0 and "labels 1..3" in stdout
    expected = _labels(first)
    np.testing.assert_array_equal(_labels(tmp_path / "applied.nii.gz"), expected)
    result = pixseg.apply(model, source, tmp_path / "api.zarr")
    assert result.model.feature_spec.window == (150.0, 900.0)
    np.testing.assert_array_equal(_labels(tmp_path / "api.zarr"), expected)
    # the window matters: without it the same centroids would label the clipped voxels otherwise
    assert len(np.unique(expected)) == 3


@pytest.mark.slow
def test_interrupted_zarr_run_resumes_to_the_same_labels(tmp_path, capsys, monkeypatch):
    from pixseg.io import label_volume

    source = tmp_path / "scan.nii"
    _nifti_phantom(source)
    whole = tmp_path / "whole.zarr"
    assert _cli(capsys, "segment", source, whole, "--clusters", "3", "--chunk", "16")[0] == 0
    out = tmp_path / "out.zarr"
    written: list[tuple[slice, ...]] = []
    original = label_volume.write_region

    lock = threading.Lock()

    def failing(target, region, block):
        with lock:
            if len(written) >= 5:
                raise RuntimeError("interrupted")
            original(target, region, block)
            written.append(region)

    monkeypatch.setattr(label_volume, "write_region", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        main(["segment", str(source), str(out), "--clusters", "3", "--chunk", "16"])
    assert not zarr.open_group(str(out), mode="r").attrs["pixseg"]["complete"]
    code, _, stderr = _cli(capsys, "segment", source, out, "--clusters", "3", "--chunk", "16")
    assert code == 2 and "--resume" in stderr  # an existing output needs --resume or --overwrite
    code, _, stderr = _cli(capsys, "segment", source, out, "--clusters", "4", "--chunk", "16", "--resume")
    assert code == 2 and "different fit" in stderr
    resumed: list[tuple[slice, ...]] = []
    monkeypatch.setattr(label_volume, "write_region", lambda t, r, b: (original(t, r, b), resumed.append(r)))
    code, stdout, _ = _cli(capsys, "segment", source, out, "--clusters", "3", "--chunk", "16", "--resume")
    assert code == 0
    n_chunks = math.prod(label_volume.zarr.open_array(str(out / "0")).cdata_shape)
    starts = {tuple(r.start for r in region) for region in written}
    assert len(resumed) == n_chunks - 5 and not {tuple(r.start for r in region) for region in resumed} & starts
    np.testing.assert_array_equal(_labels(out), _labels(whole))
    group, reference = zarr.open_group(str(out), mode="r"), zarr.open_group(str(whole), mode="r")
    assert group.attrs["pixseg"]["complete"] and group.attrs["ome"] == reference.attrs["ome"]
    assert group.attrs["pixseg"]["statistics"] == reference.attrs["pixseg"]["statistics"]
    code, stdout, _ = _cli(capsys, "segment", source, out, "--clusters", "3", "--chunk", "16", "--resume")
    assert code == 0 and "0 chunks" in stdout  # finished: nothing recomputed


def _body_phantom(shape=(40, 64, 72), *, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like body in air: an ellipsoid of soft tissue (40 HU) holding a lung-like air pocket and a
    bright bone sphere, in air (-1000 HU), with noise; returns (volume, the body's true mask)."""
    z, y, x = np.indices(shape).astype(np.float64)
    cz, cy, cx = (n / 2 for n in shape)
    body = ((z - cz) / (0.42 * shape[0])) ** 2 + ((y - cy) / (0.38 * shape[1])) ** 2 + ((x - cx) / 0.4 / shape[2]) ** 2
    body = body < 1
    volume = np.where(body, 40.0, -1000.0)
    lung = ((z - cz) / 8) ** 2 + ((y - cy) / 9) ** 2 + ((x - cx + 8) / 7) ** 2 < 1
    volume[lung] = -850.0
    volume[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx - 10) ** 2 < 25] = 700.0
    noise = np.random.default_rng(seed).normal(0.0, 30.0, shape)
    return (volume + noise).astype(np.float32), body


def test_auto_body_mask_matches_the_phantoms_body():
    from pixseg.volume_mask import body_mask

    volume, truth = _body_phantom()
    mask = body_mask(da.from_array(volume[..., None], chunks=(9, 17, 20, 1)))
    assert mask.chunks == ((9, 9, 9, 9, 4), (17, 17, 17, 13), (20, 20, 20, 12))
    kept = mask.compute()
    iou = (kept & truth).sum() / (kept | truth).sum()
    assert iou >= 0.95, iou


def test_auto_body_mask_upsamples_its_low_resolution_copy(monkeypatch):
    from pixseg import volume_mask

    volume, truth = _body_phantom()
    monkeypatch.setattr(volume_mask, "AUTO_MASK_EDGE", 24)  # factors (2, 3, 3): a coarse copy
    kept = volume_mask.body_mask(da.from_array(volume[..., None], chunks=(16, 16, 16, 1))).compute()
    assert kept.shape == truth.shape
    assert (kept & truth).sum() / (kept | truth).sum() >= 0.9


@pytest.mark.slow
def test_mask_auto_labels_air_0_and_apply_reuses_it(tmp_path, capsys):
    volume, truth = _body_phantom((30, 48, 52))
    source = tmp_path / "ct.nii"
    nib.save(nib.Nifti1Image(volume.transpose(2, 1, 0), np.eye(4)), str(source))
    model = tmp_path / "model.json"
    code, _, _ = _cli(capsys, "segment", source, tmp_path / "a.zarr", "--clusters", "3", "--mask", "auto",
                      "--save-model", model)  # fmt: skip
    assert code == 0
    labels = _labels(tmp_path / "a.zarr")
    assert ((labels > 0) & truth).sum() / ((labels > 0) | truth).sum() >= 0.95
    assert pixseg.PixelKMeans.load(model).model_.feature_spec.mask == "auto"
    assert _cli(capsys, "apply", model, source, tmp_path / "b.nii")[0] == 0  # the model's mask mode
    np.testing.assert_array_equal(_labels(tmp_path / "b.nii"), labels)


def test_auto_body_mask_keeps_a_volume_without_background():
    from nibabel.testing import data_path

    from pixseg.volume_mask import body_mask_low

    cropped = np.asarray(nib.load(os.path.join(data_path, "anatomical.nii")).dataobj).astype(np.float32)
    assert body_mask_low(cropped).all()  # cropped inside the head: no air to drop
    with_background = np.asarray(nib.load(os.path.join(data_path, "example4d.nii.gz")).dataobj)[..., 0]
    kept = body_mask_low(with_background.astype(np.float32))
    assert 0.1 < kept.mean() < 0.9 and with_background[kept].mean() > 5 * with_background[~kept].mean()


#: ``output.format`` of a batch over volumes -> the outputs' suffix.
VOLUME_FORMATS = {"zarr": ".zarr", "nifti": ".nii.gz"}


def _volume_config(tmp_path, *, model: str, fmt: str = "zarr") -> str:
    path = tmp_path / f"run-{model}-{fmt}.yaml"
    path.write_text(
        f"inputs: ['{tmp_path}/scans/*.nii']\noutput: {{directory: {tmp_path}/out-{model}-{fmt}, format: {fmt}}}\n"
        f"model: {model}\nclusters: 3\nread: {{chunk: 16}}\n"
    )
    return str(path)


@pytest.mark.parametrize("fmt", VOLUME_FORMATS)
def test_dry_run_plans_volumes_from_their_headers_and_computes_nothing(tmp_path, capsys, fmt):
    from conftest import raise_if_dask_computes

    (tmp_path / "scans").mkdir()
    shapes = {"a.nii": (23, 37, 41), "b.nii.gz": (20, 18, 17)}  # (Z, Y, X)
    zooms = (0.8, 0.9, 2.0)  # (i, j, k) = (x, y, z)
    for name, shape in shapes.items():
        image = nib.Nifti1Image(make_phantom(shape).transpose(2, 1, 0), np.diag([*zooms, 1.0]))
        nib.save(image, str(tmp_path / "scans" / name))
    config = Path(_volume_config(tmp_path, model="per-image", fmt=fmt))
    config.write_text(config.read_text().replace("*.nii", "*.nii*"))
    with raise_if_dask_computes():
        code, stdout, stderr = _cli(capsys, "run", config, "--dry-run")
    assert code == 0, stderr
    for name, shape in shapes.items():
        header = nib.load(str(tmp_path / "scans" / name)).header
        z, y, x = header.get_data_shape()[::-1]
        assert (z, y, x) == shape
        spacing = "x".join(f"{s:g}" for s in np.float32(header.get_zooms()[::-1]).astype(float))
        # slabs of whole slices for .nii (16**3 voxels), cubes of 16 for .nii.gz (its OME-Zarr copy)
        chunk = (max(1, 16**3 // (y * x)), y, x) if name.endswith(".nii") else (16, 16, 16)
        n_chunks = math.prod(-(-n // c) for n, c in zip(shape, chunk, strict=True))
        output = tmp_path / f"out-per-image-{fmt}" / (name.split(".")[0] + VOLUME_FORMATS[fmt])
        layout = f"{z}x{y}x{x}x1 float32, voxels of {spacing} mm, {n_chunks} chunks of {'x'.join(map(str, chunk))}"
        assert f"run   {tmp_path / 'scans' / name} ({layout}) -> {output}" in stdout
    assert "images: 2 (2 run)" in stdout
    assert sorted(os.listdir(tmp_path)) == ["run-per-image-" + fmt + ".yaml", "scans"]  # no copy, no output
    code, stdout, stderr = _cli(capsys, "run", _volume_config(tmp_path, model="fit-once"), "--dry-run")
    assert code == 0, stderr
    assert f"fit-once: fit {tmp_path / 'out-fit-once-zarr' / 'cohort-model.json'}" in stdout


def test_fit_once_over_slides_and_volumes_together_is_refused_before_any_work(tmp_path, capsys):
    import tifffile

    (tmp_path / "scans").mkdir()
    _nifti_phantom(tmp_path / "scans" / "a.nii", shape=(8, 9, 10))
    tifffile.imwrite(tmp_path / "slide.tif", np.zeros((16, 16, 3), np.uint8))
    config = Path(_volume_config(tmp_path, model="fit-once"))
    config.write_text(config.read_text().replace("*.nii']", f"*.nii', '{tmp_path}/slide.tif']"))
    for extra in ((), ("--dry-run",)):
        code, stdout, stderr = _cli(capsys, "run", config, "-q", *extra)
        assert code == 2 and stdout == "" and len(stderr.strip().splitlines()) == 1
        assert "cannot pool slides and volumes" in stderr and not (tmp_path / "out-fit-once-zarr").exists()


@pytest.mark.slow
def test_run_config_fit_once_over_volumes_equals_apply_of_the_cohort_model_and_is_deterministic(tmp_path, capsys):
    (tmp_path / "scans").mkdir()
    _nifti_phantom(tmp_path / "scans" / "a.nii")
    _nifti_phantom(tmp_path / "scans" / "b.nii", shape=(17, 29, 31))
    config, out = _volume_config(tmp_path, model="fit-once"), tmp_path / "out-fit-once-zarr"
    assert _cli(capsys, "run", config, "-q")[0] == 0
    model = out / "cohort-model.json"
    cohort = json.loads(model.read_text())["provenance"]["cohort"]
    assert [Path(member["input"]).name for member in cohort] == ["a.nii", "b.nii"]
    first = {}
    for name in ("a", "b"):
        single = tmp_path / f"{name}-apply.zarr"
        assert _cli(capsys, "apply", model, tmp_path / "scans" / f"{name}.nii", single, "--chunk", 16)[0] == 0
        first[name] = _labels(out / f"{name}.zarr")
        np.testing.assert_array_equal(first[name], _labels(single))
        assert set(np.unique(first[name])) == {1, 2, 3}
    assert _cli(capsys, "run", config, "-q")[0] == 0  # done outputs skipped, the cohort model reused
    summary = json.loads((out / "pixseg-run.json").read_text())
    assert summary["counts"] == {"done": 0, "skipped": 2, "failed": 0}
    fitted = model_document(load_model(str(model)))
    shutil.rmtree(out)
    assert _cli(capsys, "run", config, "-q")[0] == 0
    assert model_document(load_model(str(model))) == fitted
    for name in ("a", "b"):
        np.testing.assert_array_equal(_labels(out / f"{name}.zarr"), first[name])


@pytest.mark.slow
def test_run_config_over_volumes_segments_each(tmp_path, capsys):
    (tmp_path / "scans").mkdir()
    _nifti_phantom(tmp_path / "scans" / "a.nii")
    _nifti_phantom(tmp_path / "scans" / "b.nii", shape=(17, 29, 31))
    configs = {suffix: _volume_config(tmp_path, model="per-image", fmt=fmt) for fmt, suffix in VOLUME_FORMATS.items()}
    for config in configs.values():
        assert _cli(capsys, "run", config, "-q")[0] == 0
    for name in ("a", "b"):
        single = tmp_path / f"{name}-single.zarr"
        assert (
            _cli(capsys, "segment", tmp_path / "scans" / f"{name}.nii", single, "--clusters", 3, "--chunk", 16)[0] == 0
        )
        for fmt, suffix in VOLUME_FORMATS.items():
            np.testing.assert_array_equal(
                _labels(tmp_path / f"out-per-image-{fmt}" / f"{name}{suffix}"), _labels(single)
            )
    for fmt, config in zip(VOLUME_FORMATS, configs.values(), strict=True):
        assert _cli(capsys, "run", config, "-q")[0] == 0  # complete outputs are recognised and skipped
        summary = json.loads((tmp_path / f"out-per-image-{fmt}" / "pixseg-run.json").read_text())
        assert summary["counts"] == {"done": 0, "skipped": 2, "failed": 0}


@pytest.mark.slow
def test_slices_preview_and_report_keep_the_spacing_and_the_legend_colours(tmp_path, capsys):
    import imagecodecs

    from pixseg.colours import label_colours
    from pixseg.io.side_files import REPORT_SIGNATURE

    source = tmp_path / "scan.nii"
    _nifti_phantom(source)  # shape (23, 37, 41)
    sx, sy, sz = (float(s) for s in nib.load(str(source)).header.get_zooms())  # 0.8, 0.9, 2.0 as float32
    height, gap = round(23 * sz / sx), 4  # one display pixel per 0.8 mm
    for output in (tmp_path / "out.nii.gz", tmp_path / "out.zarr"):
        assert _cli(capsys, "segment", source, output, "--clusters", 4, "--chunk", 16)[0] == 0
        png = imagecodecs.png_decode((tmp_path / f"{output.name}.slices.png").read_bytes())
        assert png.shape == (2 * height + gap, 41 + 41 + round(37 * sy / sx) + 2 * gap, 3)
        labels, colours = _labels(output), label_colours(4)
        # (z, y, x) voxel -> (row, column) in the upper row: axial at z=11; coronal at y=18, z up
        coronal_row = height - 1 - int(12 * sz / sx)
        for (z, y, x), (row, column) in (
            ((11, 17, 12), (int(17 * sy / sx), 12)),
            ((12, 18, 29), (coronal_row, 45 + 29)),
        ):
            grey = png[row, column].astype(float)
            assert labels[z, y, x] != labels[0, 0, 0]  # inside a sphere, not the background
            colour = np.array(colours[labels[z, y, x] - 1][:3])
            np.testing.assert_allclose(png[row + height + gap, column], grey * 0.55 + colour * 0.45, atol=1)
        report = (tmp_path / f"{output.name}.report.html").read_text()
        counts = np.bincount(labels.ravel(), minlength=5)[1:]
        assert report.startswith(REPORT_SIGNATURE) and "data:image/png;base64," in report
        for count, colour in zip(counts, colours, strict=True):  # the legend: each label's voxels and colour
            assert f'data-value="{count}"' in report and f"rgb({colour[0]}, {colour[1]}, {colour[2]})" in report
    assert _cli(capsys, "segment", source, tmp_path / "bare.nii", "--clusters", 2, "--no-previews")[0] == 0
    assert sorted(path.name for path in tmp_path.glob("bare.nii.*")) == ["bare.nii.stats.csv", "bare.nii.stats.json"]


@pytest.mark.slow
def test_clusters_auto_finds_the_phantoms_intensity_classes(tmp_path):
    # four diagonal layers of similar volume (the silhouette prefers K=2 when one class holds
    # nine tenths of the voxels, as the background of the spheres phantom does)
    z, y, x = np.indices((23, 37, 41))
    classes = (z + y + x) * 4 // (23 + 37 + 41 - 2)
    values = np.array([100.0, 400.0, 800.0, 1200.0])[classes] + np.random.default_rng(0).normal(
        0.0, 25.0, classes.shape
    )
    source = tmp_path / "layers.nii"
    nib.save(nib.Nifti1Image(values.astype(np.float32).transpose(2, 1, 0), np.diag([0.8, 0.9, 2.0, 1.0])), str(source))
    result = pixseg.segment(source, tmp_path / "out.zarr", clusters="auto:2-6", chunk=16)
    assert result.model.k_choice is not None and result.model.n_clusters == 4
    assert adjusted_rand_score(classes.ravel(), _labels(tmp_path / "out.zarr").ravel()) >= 0.99


@pytest.mark.parametrize("suffix", [".nii.gz", ".zarr"])
def test_a_volume_output_being_written_is_locked_against_a_second_run(tmp_path, capsys, suffix):
    from pixseg.io.label_groups import label_side_base
    from pixseg.io.locks import lock_path_for, output_lock

    source = str(tmp_path / "scan.nii")
    nib.save(nib.Nifti1Image(make_phantom((6, 10, 12)).astype(np.int16), np.eye(4)), source)
    out = str(tmp_path / f"labels{suffix}")
    with output_lock(lock_path_for(label_side_base(out))):
        code, _, err = _cli(capsys, "segment", source, out, "--clusters", "2")
    assert code == 2 and err.count("error:") == 1 and f"pid {os.getpid()}" in err
    assert sorted(os.listdir(tmp_path)) == ["scan.nii"]  # nothing written, the lock is gone
