"""Blocks read in groups through shared windows and tiles: the candidates of each block alone, fewer decodes."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any
from unittest import mock

import dask.array as da
import numpy as np
import pytest
import tifffile

from pixseg.features import compute_features, make_feature_spec
from pixseg.fitting import draw_sample
from pixseg.io.readers import open_image
from pixseg.sample_graph import build_candidates
from pixseg.sample_reads import (
    GROUP_BLOCKS,
    featurise_together,
    group_blocks,
    overlapping_tiles,
    plan_reads,
    read_unit,
)
from pixseg.sampling import SampleSource, pixel_keys, plan_blocks, planned_valid_pixels

FEATURES = ("channels", "hed,texture")


def _pixels(shape: tuple[int, int], seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = np.cumsum(np.cumsum(rng.normal(0, 1, (*shape, 3)), axis=0), axis=1)
    smooth = (smooth - smooth.min()) / np.ptp(smooth)
    return (255 * np.clip(0.7 * smooth + 0.3 * rng.random((*shape, 3)), 0, 1)).astype(np.uint8)


def _mask(shape: tuple[int, int], factor: int) -> np.ndarray:
    """A low-resolution mask (``shape`` / ``factor``) with a wholly masked band and scattered holes."""
    low = np.random.default_rng(2).random((shape[0] // factor, shape[1] // factor)) > 0.3
    low[: low.shape[0] // 3] = False
    return low


def _spec(features: str) -> Any:
    return make_feature_spec(features, n_channels=3, has_alpha=False, dtype=np.dtype(np.uint8), sigmas=(1, 3))


def _reference(pixels, spec, plan, *, mask_full, threshold, seed):
    """Candidates from the whole image's features, block by block, in position order (numpy only)."""
    features = compute_features(pixels, spec)
    valid = ~np.isnan(features[..., 0]) & mask_full
    width = pixels.shape[1]
    keys, positions, n_valid, estimate = [], [], 0, 0.0
    for (top, left, bottom, right), weight in zip(plan.regions, plan.weights, strict=True):
        rows, cols = (a.ravel() for a in np.mgrid[top:bottom, left:right])
        ok = valid[rows, cols]
        key = pixel_keys(rows, cols, width=width, seed=seed)
        picked = ok & (key < threshold * weight)
        keys.append(key[picked] / weight)
        positions.append(rows[picked] * width + cols[picked])
        n_valid += int(ok.sum())
        estimate += float(ok.sum()) * weight
    positions = np.concatenate(positions)
    order = np.argsort(positions)
    rows, cols = np.divmod(positions[order], width)
    return np.concatenate(keys)[order], positions[order], features[rows, cols], n_valid, estimate


def _check_equal(candidates, reference):
    keys, positions, vectors, n_valid, estimate = reference
    order = np.argsort(candidates.positions)
    assert np.array_equal(candidates.positions[order], positions)
    assert np.array_equal(candidates.keys[order], keys)
    assert np.array_equal(candidates.vectors[order], vectors, equal_nan=True)
    assert candidates.n_valid == n_valid
    np.testing.assert_allclose(candidates.valid_estimate, estimate, rtol=1e-12)


def _tiff(path, pixels, **layout) -> Any:
    tifffile.imwrite(path, pixels, photometric="rgb", compression="zlib", **layout)
    return open_image(str(path)).source


@pytest.mark.parametrize("features", FEATURES)
@pytest.mark.parametrize(
    ("shape", "stride", "masked"),
    [((97, 83), 1, False), ((98, 140), 1, True), ((150, 98), 2, True), ((161, 130), 3, False)],
)
def test_grouped_windows_give_the_candidates_of_each_block_alone(tmp_path, features, shape, stride, masked):
    """In memory, through shared 16-px tiles, and through full-width strips: the whole image's values."""
    pixels = _pixels(shape)
    spec = _spec(features)
    low = _mask(shape, 2) if masked else None
    mask_full = np.ones(shape, bool) if low is None else np.repeat(np.repeat(low, 2, 0), 2, 1)
    mask = None if low is None else da.from_array(low, chunks=(20, 30))
    plan = plan_blocks(shape, stride=stride, seed=3, block=16)
    reference = _reference(pixels, spec, plan, mask_full=mask_full, threshold=0.4, seed=3)
    readers = {
        "memory": (pixels, False),
        "tiles": (_tiff(tmp_path / "tiled.tif", pixels, tile=(16, 16)), False),
        "strips": (_tiff(tmp_path / "striped.tif", pixels, rowsperstrip=5), True),
    }
    for reader, full_width in readers.values():
        source = SampleSource(pixels=reader, spec=spec, scale=(1.0, 1.0), mask=mask, full_width_reads=full_width)
        _check_equal(build_candidates(source, plan, threshold=0.4, seed=3).compute(), reference)


def test_groups_depend_only_on_block_positions():
    plan = plan_blocks((150, 98), stride=1, seed=0, block=16)  # 10 x 7 blocks
    groups = group_blocks(plan.regions, block=16, full_width=False)
    edge = 16 * GROUP_BLOCKS
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(plan.regions)))
    squares = [{(top // edge, left // edge) for top, left, _, _ in plan.regions[g]} for g in groups]
    assert all(len(square) == 1 for square in squares) and len(groups) == 3 * 2
    assert [featurise_together(plan.regions[g], block=16) for g in groups] == [True] * 6  # full squares, edges
    rows = group_blocks(plan.regions, block=16, full_width=True)
    assert [len(g) for g in rows] == [7] * 10
    assert not featurise_together(plan_blocks((150, 98), stride=2, seed=0, block=16).regions[:2], block=16)


def test_a_tile_two_groups_need_is_read_once_over_what_both_need():
    groups = [np.array([[0, 0, 16, 16]]), np.array([[16, 16, 32, 32]])]
    reads, uses = plan_reads(groups, halo=(2, 2), unit=(32, 32), shape=(64, 64))
    assert reads == [(0, 0, 32, 32), (14, 32, 32, 34), (32, 14, 34, 32), (32, 32, 34, 34)]
    assert uses == [[0], [0, 1, 2, 3]]
    windows = plan_reads(groups, halo=(2, 2), unit=None, shape=(64, 64))
    assert windows == ([(0, 0, 18, 18), (14, 14, 34, 34)], [[0], [1]])


def test_read_units_follow_the_tiles():
    assert read_unit((512, 512), 256) == (512, 512)
    assert read_unit((64, 16), 256) == (128, 128)
    assert read_unit(None, 256) is None and read_unit((4096, 4096), 256) is None
    assert overlapping_tiles((30, 0, 70, 20), (32, 16), (100, 40)) == [
        (0, 0, 32, 16),
        (0, 16, 32, 32),
        (32, 0, 64, 16),
        (32, 16, 64, 32),
        (64, 0, 96, 16),
        (64, 16, 96, 32),
    ]


def _counting_decodes(calls: Counter[str]) -> Any:
    """Patch tifffile so that every tile it decodes is counted (as ``benchmarks.bench_texture`` does)."""
    make_decode = tifffile.TiffPage.__dict__["decode"].func

    def counted(page: Any) -> Callable[..., Any]:
        decode = make_decode(page)

        def counting(*args: Any, **kwargs: Any) -> Any:
            calls["tiles"] += 1
            return decode(*args, **kwargs)

        return counting

    return mock.patch.object(tifffile.TiffPage, "decode", property(counted))


def _tiles(start: int, stop: int) -> range:
    """Indices of the 32-px tiles that pixels ``start:stop`` lie in."""
    return range(start // 32, (stop - 1) // 32 + 1)


@pytest.mark.parametrize(
    ("stride", "features"), [(1, "hed,texture"), (1, "channels"), (2, "hed,texture"), (3, "channels")]
)
def test_each_tile_is_decoded_once(tmp_path, stride, features):
    """Every tile a block or its halo touches is decoded once, not once per block that needs it."""
    pixels = _pixels((256, 224))
    spec = _spec(features)
    calls: Counter[str] = Counter()
    with _counting_decodes(calls):
        reader = _tiff(tmp_path / "tiled.tif", pixels, tile=(32, 32))
        plan = plan_blocks((256, 224), stride=stride, seed=1, block=16)
        source = SampleSource(pixels=reader, spec=spec, scale=(1.0, 1.0), mask=None)
        calls.clear()
        build_candidates(source, plan, threshold=0.5, seed=1).compute()
    h = spec.halo((1.0, 1.0))[0]
    per_block = [  # the 32-px tiles under each block and its halo
        {(y, x) for y in _tiles(max(0, t - h), min(256, b + h)) for x in _tiles(max(0, lf - h), min(224, r + h))}
        for t, lf, b, r in plan.regions.tolist()
    ]
    assert calls["tiles"] == len(set().union(*per_block)) <= 8 * 7
    assert calls["tiles"] < sum(len(tiles) for tiles in per_block)  # what reading each block alone decodes


def test_planned_valid_pixels_count_the_mask_as_the_pass_applies_it():
    shape, low = (150, 98), _mask((150, 98), 2)
    full = np.repeat(np.repeat(low, 2, 0), 2, 1)
    for stride in (1, 3):
        plan = plan_blocks(shape, stride=stride, seed=5, block=16)
        expected = sum(w * full[t:b, lf:r].sum() for (t, lf, b, r), w in zip(plan.regions, plan.weights, strict=True))
        assert planned_valid_pixels(low, shape, plan) == pytest.approx(expected, rel=1e-12)
        assert planned_valid_pixels(None, shape, plan) == 150 * 98


def test_a_masked_image_is_sampled_in_one_pass(caplog):
    """The first threshold counts the mask, so the pass needs no second, higher threshold."""
    pixels = _pixels((150, 98))
    mask = da.from_array(_mask((150, 98), 2))
    source = SampleSource(pixels=pixels, spec=_spec("channels"), scale=(1.0, 1.0), mask=mask)
    with caplog.at_level(logging.INFO, logger="pixseg.fitting"):
        sample = draw_sample(source, sample_size=2000, seed=0, progress=False)
    assert len(sample) == 2000 and caplog.text.count("sampling 2000 pixels from") == 1
