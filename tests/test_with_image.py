"""``segment/apply --with-image``: the input's image pyramid and the labels in one OME-Zarr store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from pixseg import apply, segment
from pixseg.cli import main
from pixseg.demo import write_demo_tiff
from pixseg.errors import OutputError, OutputExistsError
from pixseg.view.sources import ReaderCache, label_pyramid, open_output, slide_pyramid

pytestmark = pytest.mark.slow

OPTIONS = {"chunk": 512, "clusters": 3, "features": ("hed",), "mask": "auto", "previews": False}


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """A 1100 x 1100 demo slide (two pyramid levels, 512 px tiles: chunks cross tile edges)."""
    path = tmp_path_factory.mktemp("slide") / "slide.tif"
    write_demo_tiff(str(path), size=1100)
    return str(path)


@pytest.fixture(scope="module")
def plain_and_with_image(slide, tmp_path_factory):
    """A plain run's labels and a --with-image run's store of the same job."""
    directory = tmp_path_factory.mktemp("runs")
    plain = segment(slide, str(directory / "plain.zarr"), save_model=str(directory / "model.json"), **OPTIONS)
    store = directory / "out.zarr"
    result = segment(slide, str(store), with_image=True, **OPTIONS)
    return directory, plain, store, result


def test_store_holds_the_image_and_the_labels_of_a_plain_run(plain_and_with_image):
    directory, plain, store, result = plain_and_with_image
    assert result.output == str(store / "labels" / "labels")
    root = zarr.open_group(store, mode="r")
    ome = root.attrs["ome"]
    assert ome["multiscales"][0]["axes"][0] == {"name": "c", "type": "channel"}
    assert [d["path"] for d in ome["multiscales"][0]["datasets"]] == ["0", "1"]
    assert root["0"].shape == (3, 1100, 1100)
    assert root["labels"].attrs["ome"]["labels"] == ["labels"]
    labels = root["labels/labels"]
    assert labels.attrs["ome"]["image-label"]["source"] == {"image": "../../"}
    image_scale = ome["multiscales"][0]["datasets"][1]["coordinateTransformations"]
    label_scale = labels.attrs["ome"]["multiscales"][0]["datasets"][1]["coordinateTransformations"]
    assert image_scale[0]["scale"][-2:] == label_scale[0]["scale"] == [1.0, 1.0]  # 0.5 um, halved
    expected = zarr.open_group(directory / "plain.zarr", mode="r")
    for level in ("0", "1"):
        np.testing.assert_array_equal(labels[level][:], expected[level][:])
    side = json.loads((directory / "out.zarr.labels.stats.json").read_text())
    assert side["masked_pixels"] == zarr.open_group(directory / "plain.zarr").attrs["pixseg"]["masked_pixels"]
    assert {p.name for p in store.rglob("*") if p.is_file() and not p.parent.name.isdigit()} == {"zarr.json"}


def test_ome_zarr_reader_finds_image_and_labels(plain_and_with_image):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    _, _, store, _ = plain_and_with_image
    nodes = list(Reader(parse_url(str(store)))())
    image = [n for n in nodes if n.load(Multiscales) and not n.load(Label)]
    labels = [n for n in nodes if n.load(Label)]
    assert [tuple(a.shape) for a in image[0].data] == [(3, 1100, 1100), (3, 550, 550)]
    assert [tuple(a.shape) for a in labels[0].data] == [(1100, 1100), (550, 550)]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # napari's own imports (pydantic v1 style)
def test_napari_ome_zarr_opens_image_and_labels_from_one_path(plain_and_with_image):
    reader_module = pytest.importorskip("napari_ome_zarr")
    _, _, store, _ = plain_and_with_image
    reader = reader_module.napari_get_reader(str(store))
    layers = reader(str(store))
    kinds = {kind: [tuple(a.shape) for a in data] for data, _, kind in layers}
    assert kinds["image"][0] == (3, 1100, 1100)
    assert kinds["labels"] == [(1100, 1100), (550, 550)]


def test_view_shows_the_labels_over_the_image_in_the_store(plain_and_with_image):
    _, _, store, _ = plain_and_with_image
    output = open_output(str(store))
    assert output.path == str(store / "labels" / "labels") and output.input_path == str(store)
    readers = ReaderCache()
    slide_tile = slide_pyramid(output, None, readers).read(0, slice(0, 64), slice(0, 64))
    assert slide_tile.shape == (64, 64, 3)
    np.testing.assert_array_equal(slide_tile, zarr.open_group(store)["0"][:, :64, :64].transpose(1, 2, 0))
    assert label_pyramid(output, readers).read(1, slice(0, 8), slice(0, 8)).shape == (8, 8)


def test_info_and_resume_and_overwrite(plain_and_with_image, slide, capsys):
    directory, _, store, _ = plain_and_with_image
    assert main(["info", str(store)]) == 0
    shown = capsys.readouterr().out  # the labels inside, with the image named
    assert "complete: complete" in shown and f"image: {store}" in shown and "cluster 1" in shown
    with pytest.raises(OutputExistsError):
        segment(slide, str(store), with_image=True, **OPTIONS)
    finished = segment(slide, str(store), with_image=True, resume=True, **OPTIONS)
    assert finished.side_files == []  # nothing redone
    before = zarr.open_group(store / "labels" / "labels", mode="r")["0"][:]
    again = segment(slide, str(store), with_image=True, overwrite=True, **OPTIONS)
    np.testing.assert_array_equal(zarr.open_group(again.output, mode="r")["0"][:], before)


def test_resume_continues_the_labels_of_an_interrupted_run(slide, tmp_path):
    store = tmp_path / "out.zarr"
    segment(slide, str(store), with_image=True, **OPTIONS)
    labels = store / "labels" / "labels"
    expected = zarr.open_group(labels, mode="r")["0"][:]
    group = zarr.open_group(labels, mode="r+")
    group.attrs["pixseg"] = {**group.attrs["pixseg"], "complete": False}
    for chunk in sorted((labels / "0" / "c").rglob("*"))[-2:]:
        if chunk.is_file():
            chunk.unlink()
    resumed = segment(slide, str(store), with_image=True, resume=True, **OPTIONS)
    np.testing.assert_array_equal(zarr.open_group(resumed.output, mode="r")["0"][:], expected)


def test_overwrite_never_removes_a_label_pixseg_did_not_write(slide, tmp_path):
    store = tmp_path / "out.zarr"
    segment(slide, str(store), with_image=True, **OPTIONS)
    zarr.open_group(store / "labels" / "annotations", mode="w")
    with pytest.raises(OutputError, match="annotations.*not written by pixseg"):
        segment(slide, str(store), with_image=True, overwrite=True, **OPTIONS)
    assert (store / "labels" / "annotations" / "zarr.json").exists()


def test_apply_with_image_equals_a_plain_apply(plain_and_with_image, slide, tmp_path):
    directory, _, _, _ = plain_and_with_image
    model = str(directory / "model.json")
    options = {"chunk": 512, "previews": False}
    plain = apply(model, slide, str(tmp_path / "plain.zarr"), **options)
    result = apply(model, slide, str(tmp_path / "out.zarr"), with_image=True, **options)
    np.testing.assert_array_equal(
        zarr.open_group(result.output, mode="r")["0"][:], zarr.open_group(plain.output, mode="r")["0"][:]
    )
    assert zarr.open_group(tmp_path / "out.zarr", mode="r")["0"].shape == (3, 1100, 1100)


def test_with_image_refuses_a_tiff_output_in_one_line(slide, tmp_path, capsys):
    code = main(["segment", slide, str(tmp_path / "out.tif"), "--with-image", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--with-image" in err and ".zarr" in err
    assert not (tmp_path / "out.tif").exists()
