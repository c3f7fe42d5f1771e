"""Mean input colours per label, display colours decided from them, the TIFF palette and NGFF transforms."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from conftest import make_blob_image

from pixseg.cli import main
from pixseg.colours import BACKGROUND_RGBA, OKABE_ITO, background_label, colour_lookup, label_colours
from pixseg.io.image_zarr import create_image_zarr, finalise_image_zarr
from pixseg.io.label_groups import ome_label_metadata
from pixseg.preview import colour_labels, overlay
from pixseg.statistics import count_and_sum_colours, count_labels, label_summary, split_summary
from pixseg.tables import format_label_table


def test_palette_and_background_colour():
    assert label_colours(3) == [(*rgb, 255) for rgb in OKABE_ITO[:3]]
    with_background = label_colours(4, background=2)
    assert with_background[1] == BACKGROUND_RGBA
    assert [with_background[i] for i in (0, 2, 3)] == label_colours(3)  # the others keep the palette order
    assert len(set(label_colours(40))) == 40


@pytest.mark.parametrize(
    ("means", "dtype", "expected"),
    [
        ([[40, 40, 120], [236, 234, 230], [220, 218, 215]], np.uint8, 2),  # the brightest near-white
        ([[40, 40, 120], [240, 230, 70]], np.uint8, None),  # bright but saturated (yellow)
        ([[40, 40, 120], [190, 190, 190]], np.uint8, None),  # grey, not near white
        ([[40, 40, 120], [np.nan] * 3], np.uint8, None),  # an empty label
        ([[60000, 59000, 58000], [1000, 1000, 9000]], np.uint16, 1),  # the dtype's full scale
        ([[0.95, 0.95, 0.95], [0.1, 0.2, 0.3]], np.float32, None),  # no known full scale
        ([[250], [10]], np.uint8, None),  # not RGB
    ],
)
def test_background_rule(means, dtype, expected):
    assert background_label(np.array(means, dtype=np.float64), dtype=np.dtype(dtype)) == expected


@pytest.mark.parametrize("shape", [(10, 14), (1, 1), (3, 5), (64, 64)])  # pixel counts off and on the lanes
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_colour_sums_and_counts_equal_bincount(shape, dtype):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 7, size=shape, dtype=np.uint8)
    labels[: shape[0] // 2, : shape[1] // 2] = 2  # a run of one label, as in real label chunks
    pixels = (rng.random((*shape, 4)) * 65535).astype(dtype)
    # label 5 is beyond n_values; the 4th channel is alpha
    counts, sums = count_and_sum_colours(labels, pixels, 5, 3)
    np.testing.assert_array_equal(counts, np.bincount(labels.ravel(), minlength=7)[:5])
    np.testing.assert_array_equal(count_labels(labels, 5), counts)
    table = label_summary(labels, pixels, 5, 3)  # the per-chunk table the label passes add up
    assert table.shape == (5, 4) and table.dtype == np.float64
    split_counts, split_sums = split_summary(table + table)
    np.testing.assert_array_equal(split_counts, 2 * counts)
    np.testing.assert_array_equal(split_sums, 2 * sums)
    assert split_counts.dtype == np.int64
    assert counts.dtype == np.int64 and sums.dtype == np.float64 and sums.shape == (5, 3)
    for c in range(3):
        expected = np.bincount(labels.ravel(), weights=pixels[..., c].astype(np.float64).ravel(), minlength=7)[:5]
        expected[0] = 0  # masked pixels are not summed
        if dtype == np.float32:  # partial sums in another order than bincount's
            np.testing.assert_allclose(sums[:, c], expected, rtol=1e-12)
        else:
            np.testing.assert_array_equal(sums[:, c], expected)


def test_masked_pixels_are_transparent_in_previews():
    labels = np.array([[0, 1], [2, 0]], dtype=np.uint8)
    colours = label_colours(2, background=2)
    coloured = colour_labels(labels, colours)
    assert coloured[0, 0, 3] == 0 and tuple(coloured[1, 0]) == BACKGROUND_RGBA
    blended = overlay(np.full((2, 2, 3), 100, np.uint8), coloured, labels)
    assert blended.shape == (2, 2, 4) and blended[0, 0, 3] == 0 and blended[0, 1, 3] == 255
    table = colour_lookup(colours, 256, masked=(0, 0, 0, 255))
    assert (
        tuple(table[0]) == (0, 0, 0, 255) and tuple(table[2]) == BACKGROUND_RGBA and tuple(table[3]) == (0, 0, 0, 255)
    )


def test_label_table_text_shows_mean_colours():
    rgb = {"label": 1, "name": "background", "pixels": 10, "fraction": 1.0, "area_um2": None}
    rgb.update(mean_colour=[235.0, 235.0, 230.0], hex="#ebebe6", intensity=None, colour="#dddddd")
    grey = {"label": 2, "name": "cluster 2", "pixels": 5, "fraction": 0.5, "area_um2": 2e6}
    grey.update(mean_colour=[1234.5], hex=None, intensity=1234.5, colour="#e69f00")
    old = {"label": 3, "pixels": 5, "fraction": 0.5, "area_um2": None, "centroid": {"ch0": 1.0}}
    lines = format_label_table([rgb, grey, old]).splitlines()
    assert "mean colour" in lines[0] and "centroid" not in lines[0]
    assert "background" in lines[1] and "235.0 235.0 230.0  #ebebe6" in lines[1] and "#dddddd" in lines[1]
    assert lines[2].endswith("1234") or lines[2].endswith("1235")
    assert lines[3].endswith("-") and "cluster 3" in lines[3]


def test_ngff_transforms_of_label_and_image_pyramids(tmp_path):
    rows = [{"label": 1, "name": "cluster 1", "pixels": 3, "colour_rgba": [1, 2, 3, 255], "centroid": {}}]
    ome = ome_label_metadata(n_levels=3, name="l", pixel_size=(0.5, 0.25), properties=rows, source_image=None)
    transforms = [d["coordinateTransformations"] for d in ome["multiscales"][0]["datasets"]]
    # a stride from index 0: level-n pixel i is level-0 pixel i * 2**n, so no translation
    assert transforms == [[{"type": "scale", "scale": [0.5 * 2**n, 0.25 * 2**n]}] for n in range(3)]
    assert ome["image-label"]["colors"] == [{"label-value": 1, "rgba": [1, 2, 3, 255]}]
    assert ome["image-label"]["properties"][0]["name"] == "cluster 1"
    path = str(tmp_path / "image.zarr")
    shapes = [(8, 8), (4, 4), (2, 2)]
    create_image_zarr(
        path, shapes=shapes, channels=3, chunks=(4, 4), dtype=np.dtype(np.uint8), codec="zstd", shard=None, attrs={}
    )
    finalise_image_zarr(path, n_levels=3, name="i", channel_names=["r", "g", "b"], pixel_size=(0.5, 0.25), extra={})
    datasets = zarr.open_group(path, mode="r").attrs["ome"]["multiscales"][0]["datasets"]
    # a 2x2 mean: level-n pixel 0 is centred on level-0 position (2**n - 1) / 2
    assert [d["coordinateTransformations"][-1] for d in datasets[1:]] == [
        {"type": "translation", "translation": [0.0, 0.5 * (2**n - 1) / 2, 0.25 * (2**n - 1) / 2]} for n in (1, 2)
    ]


def _reference_means(labels: np.ndarray, image: np.ndarray, n_labels: int) -> np.ndarray:
    counts = np.bincount(labels.ravel(), minlength=n_labels + 1)
    sums = [np.bincount(labels.ravel(), weights=image[..., c].ravel(), minlength=n_labels + 1) for c in range(3)]
    return np.stack(sums, axis=1)[1:] / counts[1:, np.newaxis]


@pytest.fixture
def bright_tiff(tmp_path) -> tuple[str, np.ndarray]:
    """A 150 x 230 RGB image (glass-like near-white among three colours) in 64 x 64 tiles."""
    image = make_blob_image(150, 230)
    path = str(tmp_path / "blobs.tif")
    tifffile.imwrite(path, image, tile=(64, 64), photometric="rgb", compression="zlib")
    return path, image


@pytest.mark.slow
def test_mean_colours_equal_numpy_and_first_run_equals_resumed(tmp_path, capsys, monkeypatch, bright_tiff):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    from pixseg.io import chunk_files

    path, image = bright_tiff
    argv = ["--chunk", "64", "-k", "4", "-q"]  # 150 x 230 in 64 x 64 chunks: uneven edge chunks
    first = str(tmp_path / "first.zarr")
    assert main(["segment", path, first, *argv]) == 0
    stats = json.loads(Path(first + ".stats.json").read_text())["labels"]
    labels = zarr.open_group(first, mode="r")["0"][:]
    np.testing.assert_allclose([row["mean_colour"] for row in stats], _reference_means(labels, image, 4), rtol=1e-12)
    for row in stats:
        assert row["hex"] == "#{:02x}{:02x}{:02x}".format(*(round(v) for v in row["mean_colour"]))
        assert row["intensity"] is None and row["colour"] == "#{:02x}{:02x}{:02x}".format(*row["colour_rgba"][:3])
    background = [row for row in stats if row["name"] == "background"]
    assert len(background) == 1 and min(background[0]["mean_colour"]) > 204
    assert background[0]["colour_rgba"] == list(BACKGROUND_RGBA)
    # ome-zarr-py reads the same colours
    node = next(iter(Reader(parse_url(first))()))
    assert node.metadata["color"] == {row["label"]: [c / 255 for c in row["colour_rgba"]] for row in stats}

    resumed = str(tmp_path / "resumed.zarr")
    original = chunk_files._replace_file
    calls = {"chunks": 0}

    def failing_write(target, data):
        if os.path.join(resumed, "0", "c", "") in target:
            calls["chunks"] += 1
            if calls["chunks"] == 6:
                raise OSError(errno.ENOSPC, "No space left on device")
        return original(target, data)

    monkeypatch.setattr(chunk_files, "_replace_file", failing_write)
    assert main(["segment", path, resumed, *argv]) == 2
    monkeypatch.setattr(chunk_files, "_replace_file", original)
    capsys.readouterr()
    assert main(["segment", path, resumed, *argv, "--resume"]) == 0
    again = json.loads(Path(resumed + ".stats.json").read_text())["labels"]
    assert again == stats


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["generic", "ome"])
def test_tiff_palette_is_what_openslide_shows(tmp_path, flavour):
    openslide = pytest.importorskip("openslide")
    path = str(tmp_path / "blobs.tif")
    tifffile.imwrite(path, make_blob_image(1100, 900), tile=(256, 256), photometric="rgb", compression="zlib")
    out = str(tmp_path / "labels.tif")
    assert main(["segment", path, out, "-k", "4", "-q", "--tiff-flavour", flavour]) == 0
    stats = json.loads(Path(out + ".stats.json").read_text())["labels"]
    with tifffile.TiffFile(out) as tif:
        page = tif.pages.first
        assert page.photometric == tifffile.PHOTOMETRIC.PALETTE and page.colormap.shape == (3, 256)
        labels = tif.series[0].levels[0].asarray()  # the stored label values, not colours
        n_levels = len(tif.series[0].levels)
        assert n_levels > 1 and tif.is_ome == (flavour == "ome")
        np.testing.assert_array_equal(page.colormap[:, 0], [0, 0, 0])
        for row in stats:
            np.testing.assert_array_equal(page.colormap[:, row["label"]], np.array(row["colour_rgba"][:3]) * 257)
    slide = openslide.OpenSlide(out)
    try:
        # OpenSlide reads the generic layout's pyramid; of the OME layout (SubIFDs), level 0 only
        assert slide.level_count == (n_levels if flavour == "generic" else 1)
        for row in stats:
            y, x = (int(v[0]) for v in np.nonzero(labels == row["label"]))
            pixel = np.asarray(slide.read_region((x, y), 0, (1, 1)))[0, 0]
            assert tuple(pixel) == tuple(row["colour_rgba"])
    finally:
        slide.close()
