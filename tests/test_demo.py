"""The demo slide: tissue islands from a real photo on glass, a pyramid, a pixel size."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from pixseg.cli import main
from pixseg.demo import DEMO_PIXEL_SIZE_UM, GLASS, demo_level_shapes, demo_tissue_mask, write_demo_tiff
from pixseg.errors import ParameterError
from pixseg.io.readers import open_image


@pytest.mark.slow
def test_slide_is_a_tiled_pyramid_with_a_pixel_size_glass_and_tissue(tmp_path):
    path = str(tmp_path / "slide.tif")
    write_demo_tiff(path, size=1100)
    image = open_image(path)
    assert image.level_shapes == ((1100, 1100), (550, 550)) == tuple(demo_level_shapes(1100))
    assert image.pixel_size == (DEMO_PIXEL_SIZE_UM, DEMO_PIXEL_SIZE_UM)
    with tifffile.TiffFile(path) as tif:
        assert all(page.is_tiled and page.tilewidth == 512 for page in tif.pages)
        assert tif.pages[1].subfiletype == 1
    pixels = np.asarray(image.data)
    tissue = demo_tissue_mask(1100, (1100, 1100))
    assert 0.1 < tissue.mean() < 0.6
    glass = pixels[~tissue].astype(float)
    assert np.abs(np.median(glass, axis=0) - GLASS).max() < 8 and 1 < glass.std(axis=0).min() < 6
    assert pixels[tissue].mean() < np.mean(GLASS) - 40  # stained tissue is darker than glass
    reduced = np.asarray(open_image(path, level=1).data).astype(float)
    halved = pixels.astype(float).reshape(550, 2, 550, 2, 3).mean(axis=(1, 3))
    assert np.abs(reduced - halved).mean() < 6  # level 1 is level 0 at half the resolution


def test_slide_is_the_same_at_any_size_and_deterministic(tmp_path):
    small, again = str(tmp_path / "a.tif"), str(tmp_path / "b.tif")
    write_demo_tiff(small, size=600)
    write_demo_tiff(again, size=600)
    assert tifffile.imread(small).tobytes() == tifffile.imread(again).tobytes()
    coarse = demo_tissue_mask(600, (150, 150))
    fine = demo_tissue_mask(2400, (150, 150))
    assert (coarse == fine).mean() > 0.999


def test_size_below_a_tile_is_refused(tmp_path):
    with pytest.raises(ParameterError, match="--size"):
        write_demo_tiff(str(tmp_path / "x.tif"), size=100)


@pytest.mark.slow
def test_demo_masks_the_glass_and_keeps_the_islands(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "demo"), "--size", "1100", "-q"]) == 0
    out = capsys.readouterr().out
    output = tmp_path / "demo" / "demo-labels.zarr"
    assert f"pixseg view {output}" in out and "1100x1100 labels 1..5" in out
    labels = zarr.open_group(output, mode="r")["0"][:]
    kept, islands = labels > 0, demo_tissue_mask(1100, labels.shape)
    assert (kept & islands).sum() / (kept | islands).sum() >= 0.9
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4, 5}
    assert (tmp_path / "demo" / "demo-slide-1100.tif").is_file() and (tmp_path / "demo" / "demo-model.json").is_file()
