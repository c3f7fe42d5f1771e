"""Masks: the automatic tissue mask, user mask files, nearest upsampling, and masked pixels never sampled."""

from __future__ import annotations

import logging

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from skimage import data as skimage_data
from slides import downsample, make_slide, write_pyramid_tiff

import pixseg.masks
from benchmarks.bench_presets import make_image
from pixseg.errors import ParameterError
from pixseg.features import compute_features, make_feature_spec
from pixseg.graphs import open_mask
from pixseg.io.model_file import load_model
from pixseg.io.readers import open_image
from pixseg.mask_apply import check_mask_shape, mask_region, nearest_indices, upsample_mask
from pixseg.masks import block_mean, choose_mask_level, has_dark_background, median_blur, tissue_mask
from pixseg.options import FitOptions, ReadOptions
from pixseg.runner import apply, segment
from pixseg.sample_graph import build_candidates
from pixseg.sampling import SampleSource, plan_blocks


def _labels(path: str) -> np.ndarray:
    return zarr.open_group(path, mode="r")["0"][:]


@pytest.fixture
def slide():
    return make_slide(300, 400)


@pytest.fixture
def slide_tiff(tmp_path, slide):
    return write_pyramid_tiff(str(tmp_path / "slide.tif"), slide[0])


def test_nearest_indices():
    np.testing.assert_array_equal(nearest_indices(12, 3), np.arange(12) // 4)
    np.testing.assert_array_equal(nearest_indices(7, 7), np.arange(7))
    np.testing.assert_array_equal(nearest_indices(10, 4), np.floor((np.arange(10) + 0.5) * 4 / 10).astype(int))
    assert nearest_indices(1001, 500).max() == 499
    np.testing.assert_array_equal(nearest_indices(1001, 500, start=300, stop=420), nearest_indices(1001, 500)[300:420])


def test_upsample_mask_equals_repeat_on_uneven_chunks():
    mask = np.random.default_rng(0).random((15, 10)) < 0.5
    lazy_mask = da.from_array(mask, chunks=(4, 3))
    chunks = ((7, 7, 7, 7, 2), (13, 13, 4))
    up = upsample_mask(lazy_mask, (30, 30), chunks)
    assert up.chunks == chunks and up.dtype == bool
    np.testing.assert_array_equal(up.compute(), np.repeat(np.repeat(mask, 2, axis=0), 3, axis=1))


@pytest.mark.parametrize(
    ("mask_shape", "mask_chunks", "shape", "chunks"),
    [
        ((7, 9), (3, 4), (30, 41), ((7, 8, 15), (10, 10, 10, 11))),  # non-integer factors
        ((5, 5), (2, 2), (101, 99), ((50, 51), (33, 33, 33))),
        ((30, 41), (7, 5), (30, 41), ((30,), (41,))),  # same size, one output chunk over many mask blocks
    ],
)
def test_upsample_mask_and_its_regions_equal_nearest_indexing(mask_shape, mask_chunks, shape, chunks):
    mask = np.random.default_rng(1).random(mask_shape) < 0.5
    lazy_mask = da.from_array(mask, chunks=mask_chunks)
    expected = mask[np.ix_(nearest_indices(shape[0], mask_shape[0]), nearest_indices(shape[1], mask_shape[1]))]
    up = upsample_mask(lazy_mask, shape, chunks)
    assert up.chunks == chunks and up.dtype == bool
    np.testing.assert_array_equal(up.compute(), expected)
    rows, cols = (3, shape[0] - 2), (1, shape[1] - 5)
    region = mask_region(lazy_mask, shape, rows=rows, cols=cols)
    assert region.chunks == ((rows[1] - rows[0],), (cols[1] - cols[0],))
    np.testing.assert_array_equal(region.compute(), expected[rows[0] : rows[1], cols[0] : cols[1]])


def test_choose_mask_level():
    shapes = ((40000, 30000), (10000, 7500), (2500, 1875), (625, 468))
    assert choose_mask_level(shapes, max_edge=2048) == (3, 1)
    assert choose_mask_level(shapes, max_edge=2500) == (2, 1)
    assert choose_mask_level(((40000, 30000),), max_edge=2048) == (0, 20)
    assert choose_mask_level(((1000, 800),), max_edge=2048) == (0, 1)


def _reference_block_mean(pixels: np.ndarray, invalid: np.ndarray, factor: int) -> np.ndarray:
    """float64 numpy block means of the trimmed image, NaN in every channel of a block with an invalid pixel."""
    height, width = (n // factor * factor for n in pixels.shape[:2])
    blocks = (height // factor, factor, width // factor, factor)
    means = pixels[:height, :width].astype(np.float64).reshape(*blocks, -1).mean(axis=(1, 3))
    means[invalid[:height, :width].reshape(blocks).any(axis=(1, 3))] = np.nan
    return means


@pytest.mark.parametrize("factor", [1, 3, 4])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_block_mean_of_integer_pixels_equals_numpy_with_alpha(factor, dtype):
    """Chunks of 7 x 13 are no multiples of 3 or 4, and 50 x 37 leaves partial blocks to drop."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, np.iinfo(dtype).max, (50, 37, 4), endpoint=True).astype(dtype)
    pixels[..., 3] = np.where(rng.random((50, 37)) < 0.02, 0, 255)
    lazy = block_mean(da.from_array(pixels, chunks=(7, 13, 4)), factor, has_alpha=True)
    assert lazy.dtype == np.float32 and lazy.shape == (50 // factor, 37 // factor, 3)
    expected = _reference_block_mean(pixels[..., :3], pixels[..., 3] == 0, factor)
    assert np.isnan(expected).any() and not np.isnan(expected).all()
    np.testing.assert_array_equal(lazy.compute(), expected.astype(np.float32))  # exact: integer sums


@pytest.mark.parametrize("factor", [1, 4])
def test_block_mean_of_float_pixels_equals_numpy_with_nan(factor):
    rng = np.random.default_rng(8)
    pixels = rng.random((30, 41, 2)).astype(np.float32)
    pixels[rng.random((30, 41)) < 0.01, 1] = np.nan
    pixels[3, 5, 0] = np.inf
    lazy = block_mean(da.from_array(pixels, chunks=(8, 10, 2)), factor, has_alpha=False)
    expected = _reference_block_mean(pixels, ~np.isfinite(pixels).all(axis=-1), factor)
    np.testing.assert_allclose(lazy.compute(), expected, rtol=1e-6)


def test_block_mean_refuses_a_factor_below_one():
    with pytest.raises(ValueError, match="factor must be at least 1"):
        block_mean(da.zeros((4, 4, 3), chunks=2), 0, has_alpha=False)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (2, 3), (4, 4), (5, 9), (37, 53)])
@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.uint16])
def test_median_blur_equals_scipy(shape, size, dtype):
    """Reflected borders at every image size, images smaller than the window included."""
    from scipy.ndimage import median_filter

    rng = np.random.default_rng(9)
    image = (rng.random(shape) * 1000).astype(dtype)
    np.testing.assert_array_equal(median_blur(image, size), median_filter(image, size=size))
    transposed = image.T  # not contiguous
    np.testing.assert_array_equal(median_blur(transposed, size), median_filter(transposed, size=size))


@pytest.mark.parametrize(
    ("image", "size"),
    [
        (np.array([[0.0, np.nan]], np.float32), 5),
        (np.zeros((4, 4)), 5),
        (np.zeros((4, 4, 3), np.float32), 5),
        (np.zeros((4, 4), np.float32), 7),
    ],
    ids=["nan", "float64", "3-d", "size-7"],
)
def test_median_blur_refuses_what_opencv_cannot_filter(image, size):
    with pytest.raises(ValueError, match="median_blur needs"):
        median_blur(image, size)


@pytest.mark.parametrize("min_area", [1, 2, 5, 20])
def test_small_objects_and_holes_removed_as_scikit_image_does(min_area):
    from skimage.morphology import remove_small_holes, remove_small_objects

    random = np.random.default_rng(10).random((60, 70)) < 0.45
    for mask in (random, np.ones((5, 6), bool), np.zeros((5, 6), bool)):
        removed = pixseg.masks._remove_small_components(mask, min_area)
        np.testing.assert_array_equal(removed, remove_small_objects(mask, max_size=min_area - 1))
        filled = ~pixseg.masks._remove_small_components(~mask, min_area)
        np.testing.assert_array_equal(filled, remove_small_holes(mask, max_size=min_area - 1))


def test_tissue_mask_recovers_tissue_area_within_two_percent(slide):
    pixels, tissue = slide
    for factor in (1, 4):
        low = downsample(pixels, factor).astype(np.float32)
        mask = tissue_mask(low, white=(255.0, 255.0, 255.0))
        full = np.repeat(np.repeat(mask, factor, axis=0), factor, axis=1)
        error = abs(int(full.sum()) - int(tissue.sum())) / tissue.sum()
        assert error < 0.02, (factor, error)
        assert (full & tissue).sum() / (full | tissue).sum() > 0.95
    assert not tissue_mask(pixels.astype(np.float32))[~tissue].reshape(-1)[:2000].any()  # white from percentiles


def _ellipses(shape: tuple[int, int], ellipses: tuple[tuple[float, float, float, float], ...]) -> np.ndarray:
    """The union of ellipses (centre y, x, radius y, x, as fractions of the shape)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    inside = np.zeros(shape, dtype=bool)
    for cy, cx, ry, rx in ellipses:
        inside |= ((yy - cy * shape[0]) / (ry * shape[0])) ** 2 + ((xx - cx * shape[1]) / (rx * shape[1])) ** 2 <= 1
    return inside


def _brightfield(density: np.ndarray, seed: int) -> np.ndarray:
    """8-bit-range float RGB of per-channel optical densities, plus noise of 4 units."""
    noise = np.random.default_rng(seed).normal(0, 4, density.shape)
    return np.clip(255 * 10.0 ** (-density) + noise, 0, 255).astype(np.float32)


def pale_eosin_slide() -> tuple[np.ndarray, np.ndarray]:
    """Pale eosin-only tissue (mean OD 0.1) with hematoxylin-rich regions, on glass at OD 0.02."""
    shape = (300, 400)
    tissue = _ellipses(shape, ((0.3, 0.3, 0.2, 0.2), (0.65, 0.65, 0.25, 0.22)))
    hematoxylin = _ellipses(shape, ((0.65, 0.65, 0.12, 0.1), (0.25, 0.3, 0.06, 0.06)))
    density = np.full(shape + (3,), 0.02)
    density[tissue] = (0.05, 0.18, 0.07)
    density[tissue & hematoxylin] = (0.7, 0.8, 0.4)
    return _brightfield(density, seed=0), tissue


def dense_slide() -> tuple[np.ndarray, np.ndarray]:
    """Tissue over about 90% of the field, a mix of eosin and hematoxylin; glass in one corner."""
    shape = (300, 400)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    tissue = yy + 0.8 * xx > 0.35 * shape[0]
    density = np.full(shape + (3,), 0.02)
    density[tissue] = (0.15, 0.35, 0.2)
    density[tissue & (np.random.default_rng(1).random(shape) < 0.4)] = (0.6, 0.7, 0.35)
    return _brightfield(density, seed=2), tissue


def fluorescence_image() -> tuple[np.ndarray, np.ndarray]:
    """Dark noisy background, dim green cytoplasm and bright blue nuclei-like blobs."""
    rng = np.random.default_rng(3)
    shape = (300, 400)
    tissue = _ellipses(shape, ((0.35, 0.3, 0.22, 0.18), (0.6, 0.7, 0.25, 0.2)))
    seeds = tissue & (rng.random(shape) < 0.01)
    nuclei = np.logical_or.reduce([np.roll(seeds, (dy, dx), axis=(0, 1)) for dy in range(-2, 3) for dx in range(-2, 3)])
    pixels = np.empty(shape + (3,))
    pixels[:] = (8, 8, 10)
    pixels[tissue] = (15, 60, 20)
    pixels[nuclei & tissue] = (20, 70, 200)
    return np.clip(pixels + rng.normal(0, 4, pixels.shape), 0, 255).astype(np.float32), tissue


def dapi_and_dim_marker(channels: int) -> tuple[np.ndarray, np.ndarray]:
    """DAPI nuclei (channel 0, 30x background) and a cytoplasm marker (last channel) only 3 noise
    units above background, uint16-like counts on a dark background; a third channel, if any, empty."""
    rng = np.random.default_rng(6)
    shape = (300, 400)
    tissue = _ellipses(shape, ((0.35, 0.3, 0.25, 0.2), (0.6, 0.72, 0.22, 0.18)))
    seeds = tissue & (rng.random(shape) < 0.004)
    nuclei = tissue & np.logical_or.reduce(
        [np.roll(seeds, (dy, dx), axis=(0, 1)) for dy in range(-4, 5) for dx in range(-4, 5) if dy * dy + dx * dx <= 16]
    )
    counts = np.full(shape + (channels,), 100.0)
    counts[..., 0][nuclei] = 3000.0
    counts[..., -1][tissue] += 60.0
    return rng.normal(counts, 20 + 0.02 * counts).astype(np.float32), tissue


def _iou(mask: np.ndarray, truth: np.ndarray) -> float:
    return float((mask & truth).sum() / (mask | truth).sum())


@pytest.mark.parametrize(
    ("make", "dark"), [(pale_eosin_slide, False), (dense_slide, False), (fluorescence_image, True)]
)
def test_tissue_mask_on_brightfield_and_fluorescence(make, dark):
    pixels, tissue = make()
    assert has_dark_background(pixels) is dark
    for white in ((255.0, 255.0, 255.0), None):
        assert _iou(tissue_mask(pixels, white=white), tissue) >= 0.95


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_tissue_mask_keeps_a_dim_marker_on_a_dark_background(channels):
    """Tissue is where any channel is above its background: a marker 3 noise units up counts,
    whatever the number of channels (the brightness alone kept only the nuclei: IoU 0.15)."""
    pixels, tissue = dapi_and_dim_marker(channels)
    assert has_dark_background(pixels)
    assert _iou(tissue_mask(pixels), tissue) >= 0.95
    assert _iou(tissue_mask(pixels / 65535.0), tissue) >= 0.95  # as the pipeline passes it: scaled to [0, 1]


@pytest.mark.slow
def test_auto_mask_end_to_end_on_a_two_channel_fluorescence_tiff(tmp_path):
    """A 2-channel uint16 image (DAPI + a dim marker) through ``segment``: the tissue is kept, the
    dark background is label 0."""
    pixels, tissue = dapi_and_dim_marker(2)
    path = str(tmp_path / "fluo.tif")
    tifffile.imwrite(
        path,
        np.clip(pixels, 0, 65535).astype(np.uint16),
        photometric="minisblack",
        planarconfig="contig",
        tile=(64, 64),
    )
    out = str(tmp_path / "labels.zarr")
    segment(path, out, read=ReadOptions(chunk=128), fit=FitOptions(clusters=2, mask="auto"))
    assert _iou(_labels(out) > 0, tissue) >= 0.95


def test_tissue_mask_on_the_presets_fluorescence_slide():
    """The presets benchmark's slide: a membrane marker a tenth as bright as the others is tissue."""
    pixels, classes = make_image("fluorescence", 256)
    tissue = classes != 0
    assert (pixels[classes == 2].max(axis=-1).mean() / pixels[classes == 3].max(axis=-1).mean()) < 0.1
    assert has_dark_background(pixels.astype(np.float32))
    assert _iou(tissue_mask(pixels.astype(np.float32)), tissue) >= 0.95


@pytest.mark.parametrize("seed", [1, 4, 5])
def test_dark_background_found_when_tissue_covers_the_border(seed):
    """Seeds of the presets benchmark's fluorescence slide whose tissue covers most of the border
    (the border alone read them as brightfield): the dimmest channel's median finds the dark background."""
    pixels, classes = make_image("fluorescence", 256, seed)
    pixels = pixels.astype(np.float32)
    ring = np.ones(classes.shape, dtype=bool)
    ring[13:-13, 13:-13] = False
    assert (classes[ring] != 0).mean() > 0.5  # tissue covers most of the border
    assert has_dark_background(pixels)
    assert _iou(tissue_mask(pixels), classes != 0) >= 0.95


def test_tissue_dense_brightfield_without_glass_is_bright():
    """Crops with no glass at all, of the IHC photo and of the dense synthetic field, stay brightfield."""
    photo = skimage_data.immunohistochemistry().astype(np.float32)
    assert not has_dark_background(photo[150:350, 150:350])
    pixels, tissue = dense_slide()
    assert tissue[:, 140:].all()
    assert not has_dark_background(pixels[:, 140:])


def test_tissue_mask_on_immunohistochemistry_photo_on_glass():
    """The photo's stained area is kept, the glass border never; its unstained gaps may be dropped."""
    photo = skimage_data.immunohistochemistry().astype(np.float64)
    pad = 64
    pixels = np.full((photo.shape[0] + 2 * pad, photo.shape[1] + 2 * pad, 3), 240.0)
    pixels[pad:-pad, pad:-pad] = photo
    pixels = np.clip(pixels + np.random.default_rng(4).normal(0, 3, pixels.shape), 0, 255)
    mask = tissue_mask(pixels, white=(255.0, 255.0, 255.0))
    assert not has_dark_background(pixels)
    inside = np.zeros(mask.shape, dtype=bool)
    inside[pad:-pad, pad:-pad] = True
    assert not mask[~inside].any()
    assert mask[inside].mean() > 0.6


@pytest.mark.parametrize(
    ("value", "message"), [(150.0, "keeps 100.0% of the image"), (250.0, "keeps only 0.0% of the image")]
)
def test_tissue_mask_warns_when_it_keeps_all_or_nothing(caplog, value, message):
    pixels = np.full((60, 80, 3), value) + np.random.default_rng(5).normal(0, 2, (60, 80, 3))
    with caplog.at_level(logging.WARNING, logger="pixseg.masks"):
        tissue_mask(pixels, white=(255.0, 255.0, 255.0))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and message in warnings[0]


def test_tissue_mask_warns_when_it_looks_inverted(caplog):
    """Pale glass-like blobs inside a stained frame: the mask covers the border, the rest does not."""
    _, tissue = pale_eosin_slide()
    with caplog.at_level(logging.WARNING, logger="pixseg.masks"):
        tissue_mask(np.where(tissue[..., np.newaxis], 240.0, 120.0).repeat(3, axis=-1), white=(255.0,) * 3)
    assert ["may be inverted" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [True]


def test_tissue_mask_refuses_non_rgb():
    with pytest.raises(ParameterError, match="needs an RGB image"):
        tissue_mask(np.zeros((4, 4, 1)))  # a bright (not dark) background: brightfield, which needs RGB


def test_auto_mask_of_an_image_without_small_levels_averages_level_0(tmp_path, monkeypatch, slide):
    """No level is small enough: level 0 is block-averaged chunk by chunk (7x here, chunks of 48
    are no multiple of it), and the mask is the tissue mask of numpy's block means."""
    pixels, _ = slide
    path = str(tmp_path / "flat.tif")
    tifffile.imwrite(path, pixels, photometric="rgb", tile=(48, 48))
    monkeypatch.setattr(pixseg.masks, "AUTO_MASK_EDGE", 64)
    image = open_image(path, chunk=48)
    assert image.level_shapes == ((300, 400),) and choose_mask_level(image.level_shapes) == (0, 7)
    mask = open_mask("auto", image, read=ReadOptions(chunk=48), progress=False).compute()
    low = pixels[:294, :399].astype(np.float64).reshape(42, 7, 57, 7, 3).mean(axis=(1, 3)).astype(np.float32)
    np.testing.assert_array_equal(mask, tissue_mask(low, white=(255.0, 255.0, 255.0)))
    assert 0.2 < mask.mean() < 0.8


def test_check_mask_shape():
    check_mask_shape((100, 50), (400, 400), source="m.tif")
    with pytest.raises(ParameterError, match="'m.tif' is 99x50, which does not divide the image \\(400x400\\)"):
        check_mask_shape((99, 50), (400, 400), source="m.tif")


@pytest.mark.slow
def test_auto_mask_end_to_end_from_a_low_level(tmp_path, monkeypatch, slide, slide_tiff):
    """The mask comes from level 2 (4x smaller), upsampled: tissue area within 2%, masked pixels never
    sampled (the model is fitted on exactly the mask's pixels) and always label 0."""
    pixels, tissue = slide
    monkeypatch.setattr(pixseg.masks, "AUTO_MASK_EDGE", 128)
    out = str(tmp_path / "labels.zarr")
    model_path = str(tmp_path / "model.json")
    fit = FitOptions(clusters=3, mask="auto", sample_size=pixels.shape[0] * pixels.shape[1])
    result = segment(slide_tiff, out, read=ReadOptions(chunk=64), fit=fit, model_path=model_path)
    labels = _labels(out)
    low_mask = tissue_mask(downsample(pixels, 4).astype(np.float32), white=(255.0, 255.0, 255.0))
    expected = np.repeat(np.repeat(low_mask, 4, axis=0), 4, axis=1)
    np.testing.assert_array_equal(labels > 0, expected)
    error = abs(int((labels > 0).sum()) - int(tissue.sum())) / tissue.sum()
    print(f"auto mask tissue area error: {100 * error:.2f}%")
    assert error < 0.02
    assert result.model.sample_size == expected.sum()  # the whole valid set is the mask
    assert result.model.feature_spec.mask == "auto"
    assert ((labels > 0) & ~tissue).sum() < 0.03 * tissue.sum()  # glass only along the low-level boundary
    again = str(tmp_path / "again.zarr")
    apply(model_path, slide_tiff, again, read=ReadOptions(chunk=100))
    np.testing.assert_array_equal(_labels(again), labels)
    assert load_model(model_path).feature_spec.mask == "auto"


def test_masked_pixels_are_never_candidates(slide):
    pixels, _ = slide
    mask = np.zeros(pixels.shape[:2], bool)
    mask[50:200, 120:330] = True
    spec = make_feature_spec("channels,texture", n_channels=3, has_alpha=False, dtype=pixels.dtype, sigmas=(2,))
    source = SampleSource(pixels=pixels, spec=spec, scale=(1.0, 1.0), mask=da.from_array(mask[::2, ::2]))
    plan = plan_blocks(pixels.shape[:2], stride=1, seed=3, block=64)
    candidates = build_candidates(source, plan, threshold=1.0, seed=3).compute()
    rows, cols = np.divmod(candidates.positions, pixels.shape[1])
    assert mask[rows, cols].all() and len(rows) == candidates.n_valid == mask.sum()
    whole = compute_features(pixels, spec)
    np.testing.assert_array_equal(candidates.vectors, whole[rows, cols])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["zarr", "tiff"])
def test_user_mask_file_at_half_resolution(tmp_path, slide, kind):
    pixels, _ = slide
    path = str(tmp_path / "slide.tif")
    tifffile.imwrite(path, pixels, tile=(64, 64), photometric="rgb")
    mask = np.zeros((150, 200), np.uint8)
    mask[20:130, 30:90] = 255
    mask[100:140, 150:190] = 1
    if kind == "zarr":
        mask_path = str(tmp_path / "mask.zarr")
        zarr.create_array(mask_path, shape=mask.shape, chunks=(64, 64), dtype=np.uint8)[:] = mask
    else:
        mask_path = str(tmp_path / "mask.tif")
        tifffile.imwrite(mask_path, mask)
    out = str(tmp_path / "labels.zarr")
    model_path = str(tmp_path / "m.json")
    segment(path, out, read=ReadOptions(chunk=100), fit=FitOptions(clusters=3, mask=mask_path), model_path=model_path)
    labels = _labels(out)
    np.testing.assert_array_equal(labels > 0, np.repeat(np.repeat(mask > 0, 2, axis=0), 2, axis=1))
    with pytest.raises(ParameterError, match="fitted with a mask file"):
        apply(model_path, path, str(tmp_path / "again.zarr"))
    apply(model_path, path, str(tmp_path / "again.zarr"), mask=mask_path)
    np.testing.assert_array_equal(_labels(str(tmp_path / "again.zarr")), labels)


def test_bad_masks_are_parameter_errors(tmp_path, blob_tiff):
    bad = str(tmp_path / "bad.tif")
    tifffile.imwrite(bad, np.ones((149, 230), np.uint8))
    with pytest.raises(ParameterError, match="does not divide the image"):
        segment(blob_tiff, str(tmp_path / "a.zarr"), fit=FitOptions(mask=bad))
    rgb = str(tmp_path / "rgb.tif")
    tifffile.imwrite(rgb, np.ones((75, 115, 3), np.uint8), photometric="rgb")
    with pytest.raises(ParameterError, match="has 3 channels"):
        segment(blob_tiff, str(tmp_path / "b.zarr"), fit=FitOptions(mask=rgb))
    with pytest.raises(ParameterError, match="neither auto, none nor an existing mask image"):
        segment(blob_tiff, str(tmp_path / "c.zarr"), fit=FitOptions(mask="atuo"))
    grey = str(tmp_path / "grey.tif")
    tifffile.imwrite(grey, np.full((40, 40), 100, np.uint8))
    with pytest.raises(ParameterError, match="--mask auto needs an RGB image"):
        segment(grey, str(tmp_path / "d.zarr"), fit=FitOptions(mask="auto"))
