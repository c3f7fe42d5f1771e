"""Outputs checked by independent readers: ome-zarr-py, OpenSlide, tifffile; pyramids, statistics, previews."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from conftest import make_blob_image

from pixseg.cli import main
from pixseg.io.readers import open_image
from pixseg.options import FitOptions, OutputOptions, ReadOptions
from pixseg.runner import segment

FIT = FitOptions(clusters=4, sample_size=5000)


@pytest.fixture(scope="module")
def wide_tiff(tmp_path_factory) -> str:
    """A 2300 x 1500 RGB tiled TIFF with a pixel size of 0.25 x 0.5 um (Y, X), so the pyramid has 3 levels."""
    path = str(tmp_path_factory.mktemp("wide") / "wide.tif")
    pixels = make_blob_image(1500, 2300, seed=5)
    tifffile.imwrite(
        path,
        pixels,
        tile=(256, 256),
        photometric="rgb",
        resolution=(1e4 / 0.5, 1e4 / 0.25),
        resolutionunit="CENTIMETER",
    )
    return path


def _levels_from_metadata(path: str) -> list[np.ndarray]:
    group = zarr.open_group(path, mode="r")
    attrs = group.attrs.asdict()
    multiscales = attrs["ome"]["multiscales"] if "ome" in attrs else attrs["multiscales"]
    return [group[d["path"]][:] for d in multiscales[0]["datasets"]]


@pytest.mark.slow
@pytest.mark.parametrize("ngff", ["0.5", "0.4"])
def test_label_pyramid_read_by_ome_zarr_py(tmp_path, wide_tiff, ngff):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    out = str(tmp_path / "labels.zarr")
    result = segment(wide_tiff, out, read=ReadOptions(chunk=512), fit=FIT, output=OutputOptions(ngff=ngff))
    assert result.levels == [(1500, 2300), (750, 1150), (375, 575)]
    assert zarr.open_group(out, mode="r").metadata.zarr_format == (3 if ngff == "0.5" else 2)
    nodes = list(Reader(parse_url(out))())
    node = nodes[0]
    assert node.load(Multiscales) is not None and node.load(Label) is not None
    levels = _levels_from_metadata(out)
    assert [np.asarray(level).shape for level in node.data] == [level.shape for level in levels]
    for reader_level, level in zip(node.data, levels, strict=True):
        np.testing.assert_array_equal(np.asarray(reader_level), level)
    colours = node.metadata["color"]
    assert sorted(colours) == [1, 2, 3, 4]


@pytest.mark.slow
def test_pyramid_levels_are_label_safe_strides(tmp_path, wide_tiff):
    out = str(tmp_path / "labels.zarr")
    segment(wide_tiff, out, read=ReadOptions(chunk=300), fit=FIT)
    levels = _levels_from_metadata(out)
    for above, below in zip(levels, levels[1:], strict=False):
        assert set(np.unique(below)) <= set(np.unique(above))
        np.testing.assert_array_equal(below, above[::2, ::2])
    ome = zarr.open_group(out, mode="r").attrs["ome"]
    level1 = ome["multiscales"][0]["datasets"][1]["coordinateTransformations"]
    # a stride from index 0: level-1 pixel i is level-0 pixel 2i, centre on centre, no translation
    assert level1 == [{"type": "scale", "scale": [0.5, 1.0]}]
    assert ome["multiscales"][0]["axes"][0] == {"name": "y", "type": "space", "unit": "micrometer"}


@pytest.mark.slow
def test_statistics_equal_numpy_counts(tmp_path, wide_tiff):
    out = str(tmp_path / "labels.zarr")
    result = segment(wide_tiff, out, read=ReadOptions(chunk=512), fit=FIT)
    labels = zarr.open_group(out, mode="r")["0"][:]
    counts = np.bincount(labels.ravel(), minlength=5)
    assert [row["pixels"] for row in result.statistics] == counts[1:].tolist()
    np.testing.assert_allclose([row["fraction"] for row in result.statistics], counts[1:] / counts[1:].sum())
    np.testing.assert_allclose([row["area_um2"] for row in result.statistics], counts[1:] * 0.25 * 0.5)
    np.testing.assert_allclose(
        [list(row["centroid"].values()) for row in result.statistics], result.model.centroids, rtol=0, atol=0
    )
    with open(out + ".stats.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [int(row["pixels"]) for row in table] == counts[1:].tolist()
    assert float(table[0]["centroid_ch0"]) == result.model.centroids[0, 0]
    saved = json.loads(Path(out + ".stats.json").read_text())
    assert saved["masked_pixels"] == counts[0] == 0 and saved["pixel_size_um"] == [0.25, 0.5]
    properties = zarr.open_group(out, mode="r").attrs["ome"]["image-label"]["properties"]
    assert [p["pixels"] for p in properties] == counts[1:].tolist()


@pytest.mark.slow
def test_tiff_pyramid_read_by_openslide_and_tifffile(tmp_path, wide_tiff):
    openslide = pytest.importorskip("openslide")
    out = str(tmp_path / "labels.tif")
    result = segment(wide_tiff, out, read=ReadOptions(chunk=512), fit=FIT, output=OutputOptions(tiff_tile=256))
    with tifffile.TiffFile(out) as tif:
        levels = [level.asarray() for level in tif.series[0].levels]
        first = tif.pages.first
        assert tif.is_bigtiff and first.is_tiled and first.tilewidth == 256
        assert first.compression == tifffile.COMPRESSION.ZSTD
        assert [p.subfiletype for p in tif.pages] == [0, 1, 1]
        assert first.get_resolution("micrometer") == pytest.approx((2.0, 4.0))
        assert first.photometric == tifffile.PHOTOMETRIC.PALETTE and first.colormap.shape == (3, 256)
        colormap = first.colormap
    assert [level.shape for level in levels] == result.levels
    # the palette: label 0 black, labels 1..K the run's display colours (16-bit entries)
    table = np.zeros((256, 3), np.uint8)
    table[1:5] = [row["colour_rgba"][:3] for row in result.statistics]
    np.testing.assert_array_equal(colormap.T, table.astype(np.uint16) * 257)
    slide = openslide.OpenSlide(out)
    try:
        assert slide.level_count == 3
        assert slide.level_dimensions == tuple((x, y) for y, x in result.levels)
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        for index, level in enumerate(levels):
            height, width = level.shape
            region = np.asarray(slide.read_region((0, 0), index, (width, height)))
            np.testing.assert_array_equal(region[..., :3], table[level])  # OpenSlide shows the palette as RGB
            assert (region[..., 3] == 255).all()
    finally:
        slide.close()
    for above, below in zip(levels, levels[1:], strict=False):
        np.testing.assert_array_equal(below, above[::2, ::2])


@pytest.mark.slow
def test_ome_tiff_flavour_uses_subifds(tmp_path, wide_tiff):
    out = str(tmp_path / "labels.ome.tif")
    segment(wide_tiff, out, fit=FIT, output=OutputOptions(tiff_flavour="ome", tiff_compression="zlib"))
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and len(tif.pages) == 1
        assert [level.shape for level in tif.series[0].levels] == [(1500, 2300), (750, 1150), (375, 575)]
        assert tif.pages.first.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert 'PhysicalSizeX="0.5"' in tif.ome_metadata and 'PhysicalSizeY="0.25"' in tif.ome_metadata
    assert open_image(out).pixel_size == (0.25, 0.5)


def _tree_digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in path.rglob("*") if p.is_file()
    }


@pytest.mark.slow
@pytest.mark.parametrize("zarr_format", [3, 2])
def test_labels_written_beside_an_ome_zarr_image(tmp_path, capsys, zarr_format):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    pixels = make_blob_image(300, 200)
    image_path = tmp_path / "image.ome.zarr"
    group = zarr.open_group(image_path, mode="w", zarr_format=zarr_format)
    chw = np.moveaxis(pixels, -1, 0)
    group.create_array("s0", shape=chw.shape, chunks=(3, 100, 100), dtype=np.uint8)[:] = chw
    multiscales = [
        {
            "axes": [
                {"name": "c", "type": "channel"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.3, 0.3]}]}],
        }
    ]
    if zarr_format == 3:
        group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    else:
        group.attrs["multiscales"] = [{"version": "0.4", **multiscales[0]}]
    before = _tree_digest(image_path)
    code = main(["segment", str(image_path), "--into-input", "clusters", "-q", "-k", "3"])
    assert code == 0, capsys.readouterr().err
    after = _tree_digest(image_path)
    assert {k: v for k, v in after.items() if not k.startswith("labels")} == before
    labels_group = zarr.open_group(image_path / "labels", mode="r")
    listed = labels_group.attrs["ome"]["labels"] if zarr_format == 3 else labels_group.attrs["labels"]
    assert listed == ["clusters"]
    label_attrs = zarr.open_group(image_path / "labels" / "clusters", mode="r").attrs.asdict()
    image_label = label_attrs["ome"]["image-label"] if zarr_format == 3 else label_attrs["image-label"]
    assert image_label["source"] == {"image": "../../"}
    multiscale = (label_attrs["ome"] if zarr_format == 3 else label_attrs)["multiscales"][0]
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == pytest.approx([0.3, 0.3])
    nodes = list(Reader(parse_url(str(image_path)))())
    assert any(node.metadata.get("name") == "clusters" for node in nodes)
    assert len(nodes) >= 2
    labels = zarr.open_group(image_path / "labels" / "clusters", mode="r")["0"][:]
    assert labels.shape == (300, 200) and set(np.unique(labels)) == {1, 2, 3}
    assert Path(str(image_path) + ".clusters.stats.csv").exists()


def test_into_input_needs_an_ome_zarr_image(tmp_path, capsys, blob_tiff):
    code = main(["segment", blob_tiff, "--into-input", "x", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "labels can only be written into an OME-Zarr image" in err


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (
            lambda p, a: tifffile.imwrite(
                p,
                a,
                metadata={
                    "axes": "YXS",
                    "PhysicalSizeX": 0.4,
                    "PhysicalSizeY": 0.2,
                    "PhysicalSizeXUnit": "nm",
                    "PhysicalSizeYUnit": "nm",
                },
                photometric="rgb",
            ),
            (0.2e-3, 0.4e-3),
        ),
        (
            lambda p, a: tifffile.imwrite(p, a, resolution=(2540.0, 5080.0), resolutionunit="INCH", photometric="rgb"),
            (5.0, 10.0),
        ),
        (lambda p, a: tifffile.imwrite(p, a, photometric="rgb"), None),
    ],
)
def test_pixel_size_from_tiff_metadata(tmp_path, write, expected):
    path = str(tmp_path / "image.ome.tif")
    write(path, make_blob_image(40, 50))
    size = open_image(path).pixel_size
    assert size == (pytest.approx(expected) if expected else None)


@pytest.mark.slow
def test_pixel_size_option_overrides_and_previews(tmp_path, blob_image, blob_tiff):
    from PIL import Image

    out = str(tmp_path / "labels.zarr")
    result = segment(blob_tiff, out, fit=FIT, output=OutputOptions(pixel_size=(2.0, 3.0)))
    assert result.pixel_size == (2.0, 3.0)
    assert result.statistics[0]["area_um2"] == result.statistics[0]["pixels"] * 6.0

    def read(suffix):
        with Image.open(out + suffix) as png:
            return np.asarray(png)

    np.testing.assert_array_equal(read(".thumbnail.png"), blob_image)  # small input: stride 1
    coloured = read(".labels.png")
    labels = zarr.open_group(out, mode="r")["0"][:]
    np.testing.assert_array_equal(coloured[labels == 2][0], result.statistics[1]["colour_rgba"])
    assert read(".overlay.png").shape == (150, 230, 4)
    assert read(".legend.png").shape[0] > 4 * 20


@pytest.mark.slow
def test_info_shows_levels_pixel_size_and_label_table(tmp_path, capsys, wide_tiff):
    out = str(tmp_path / "labels.zarr")
    segment(wide_tiff, out, fit=FIT, output=OutputOptions(previews=False))
    assert not Path(out + ".thumbnail.png").exists() and Path(out + ".stats.csv").exists()
    assert main(["info", out]) == 0
    stdout = capsys.readouterr().out
    assert "levels: 1500x2300, 750x1150, 375x575" in stdout
    assert "pixel_size_um: [0.25, 0.5]" in stdout and "complete: complete" in stdout
    assert "label name                 pixels" in stdout and "area mm^2" in stdout and "mean colour" in stdout


def test_existing_side_file_needs_overwrite(tmp_path, capsys, blob_tiff):
    Path(tmp_path / "o.zarr.stats.csv").write_text("old")
    code = main(["segment", blob_tiff, str(tmp_path / "o.zarr"), "-q"])
    assert code == 2 and "o.zarr.stats.csv' already exists" in capsys.readouterr().err


@pytest.mark.parametrize("with_pixels", [True, False])
def test_one_pass_writes_counts_and_takes_the_strided_preview(tmp_path, with_pixels):
    import dask.array as da

    from pixseg.io.label_zarr import store_count_and_preview

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 5, size=(150, 230), dtype=np.uint8)
    pixels = rng.integers(0, 255, size=(150, 230, 3), dtype=np.uint8)
    array = zarr.create_array(str(tmp_path / "l.zarr"), shape=labels.shape, chunks=(64, 64), dtype=np.uint8)
    counts, sums, preview = store_count_and_preview(
        da.from_array(labels, chunks=(64, 64)),
        array,
        5,
        pixels=da.from_array(pixels, chunks=(64, 64, 3)),
        n_colour=3,
        preview=with_pixels,
        step=7,  # chunk edges are not multiples of the stride
    )
    assert preview is None if not with_pixels else preview.shape == pixels[::7, ::7].shape
    computed = da.compute(counts, sums, *([preview] if with_pixels else []))
    np.testing.assert_array_equal(computed[0], np.bincount(labels.ravel(), minlength=5))
    np.testing.assert_array_equal(array[:], labels)
    expected = [np.bincount(labels.ravel(), weights=pixels[..., c].ravel(), minlength=5) for c in range(3)]
    np.testing.assert_array_equal(computed[1][1:], np.stack(expected, axis=1)[1:])
    if with_pixels:
        np.testing.assert_array_equal(computed[2], pixels[::7, ::7])


def test_preview_pieces_do_not_keep_their_chunk_alive(tmp_path):
    from pixseg.io.label_zarr import _strided_copy, _write_and_summarise

    labels = np.ones((64, 64, 1), np.uint8)
    pixels = np.arange(64 * 64 * 3, dtype=np.uint32).reshape(64, 64, 3)
    array = zarr.create_array(str(tmp_path / "l.zarr"), shape=(64, 64), chunks=(64, 64), dtype=np.uint8)
    block_info = {0: {"array-location": [(0, 64), (0, 64), (0, 1)]}}
    summary = _write_and_summarise(labels, pixels, array=array, n_values=2, n_colour=3, block_info=block_info)
    assert summary.shape == (1, 1, 2, 4) and summary.dtype == np.float64
    assert summary[0, 0, :, 0].tolist() == [0, 64 * 64]  # the counts, then the colour sums
    assert summary[0, 0, 1, 1:].tolist() == pixels.reshape(-1, 3).sum(axis=0).tolist()
    # the chunk at (72, 80) of an image previewed every 8 pixels: rows 0, 8, ... and columns 0, 8, ...
    piece = _strided_copy(pixels, 8, block_info={0: {"array-location": [(72, 136), (80, 144), (0, 3)]}})
    np.testing.assert_array_equal(piece, pixels[::8, ::8])
    shifted = _strided_copy(pixels, 8, block_info={0: {"array-location": [(70, 134), (77, 141), (0, 3)]}})
    np.testing.assert_array_equal(shifted, pixels[2::8, 3::8])  # image rows 72, 80, ... and columns 80, 88, ...
    assert not np.shares_memory(piece, pixels)  # a view would pin the whole chunk until the pass ends
