"""``--mask auto`` at full resolution against tissue outlines drawn by hand on real slides
(``tests/data/tissue-masks/*.geojson``; how they were drawn: ``tests/data/README.md``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import pytest

from pixseg.graphs import open_mask
from pixseg.io.readers import open_image
from pixseg.mask_apply import upsample_mask
from pixseg.options import ReadOptions

DATA = Path(__file__).parent / "data"


def rasterise(geojson: Path, shape: tuple[int, int]) -> np.ndarray:
    """The (Y, X) bool mask of every polygon of ``geojson`` (level-0 pixels), inner rings cut out."""
    canvas = PIL.Image.new("1", (shape[1], shape[0]), 0)
    draw = PIL.ImageDraw.Draw(canvas)
    for feature in json.loads(geojson.read_text())["features"]:
        outer, *holes = feature["geometry"]["coordinates"]
        for ring, value in [(outer, 1), *((hole, 0) for hole in holes)]:
            draw.polygon([(float(x), float(y)) for x, y in ring], fill=value)
    return np.asarray(canvas, dtype=bool)


def auto_mask_full_resolution(path: Path) -> np.ndarray:
    """``--mask auto`` of the slide at ``path``, upsampled to level 0 as segmenting applies it."""
    image = open_image(path)
    mask = open_mask("auto", image, read=ReadOptions(), progress=False)
    return np.asarray(upsample_mask(mask, image.shape[:2], image.data.chunks[:2]).compute())


# The CMU slide misses the 0.95 target: its two hand outlines agree with each other at IoU 0.84 only
# (clefts between collagen bundles, the keratin-filled hollow, loose fibres: see tests/data/README.md).
@pytest.mark.slow
@pytest.mark.parametrize(
    ("slide", "outline", "minimum"),
    [
        ("tcga-cr-7395-01a-01-ts1", "tcga-cr-7395-01a-01-ts1", 0.95),
        ("cmu-1-small-region", "cmu-1-small-region", 0.80),
        ("cmu-1-small-region", "cmu-1-small-region-full-resolution", 0.88),
    ],
)
def test_auto_mask_matches_a_hand_drawn_outline(slide, outline, minimum):
    auto = auto_mask_full_resolution(DATA / f"{slide}.svs")
    truth = rasterise(DATA / "tissue-masks" / f"{outline}.geojson", auto.shape)
    assert 0.2 < truth.mean() < 0.8  # the outline is drawn on this slide's pixel grid
    iou = (auto & truth).sum() / (auto | truth).sum()
    assert iou >= minimum
