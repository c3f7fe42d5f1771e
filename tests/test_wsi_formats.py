"""Whole-slide formats through real fixture files (``tests/data/README.md``): which reader each gets,
pixels equal to OpenSlide's ``read_region``, pixel sizes, ``info`` and ``segment``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import openslide
import pylibCZIrw.czi as pyczi
import pytest
import tifffile
import zarr
from dicom_wsi_writer import write_dicom_wsi
from mrxs_writer import write_mrxs
from slides import downsample, make_slide

from pixseg.cli import main
from pixseg.errors import InputError
from pixseg.io.readers import formats, open_image
from pixseg.io.readers import openslide_slides as slides
from pixseg.io.readers.selection import Selection
from pixseg.options import FitOptions, ReadOptions
from pixseg.runner import segment
from pixseg.view.sources import ReaderCache, open_output, slide_pyramid

DATA = Path(__file__).parent / "data"
DICOM_DIR = DATA / "dicom-boxes"
CMU_SVS = DATA / "cmu-1-small-region.svs"  # JPEG tiles, MPP 0.499
TCGA_SVS = DATA / "tcga-cr-7395-01a-01-ts1.svs"  # JPEG 2000 tiles, two levels, no MPP


def _openslide_rgba(path: Path, level: int = 0) -> np.ndarray:
    """The whole level as OpenSlide reads it: (Y, X, 4) uint8."""
    with openslide.OpenSlide(str(path)) as slide:
        width, height = slide.level_dimensions[level]
        return np.asarray(slide.read_region((0, 0), level, (width, height)))


@pytest.mark.parametrize("path", [DICOM_DIR, DICOM_DIR / "boxes_0.dcm"], ids=["directory", "instance"])
def test_dicom_wsi_reads_as_openslide_does(path):
    image = open_image(path)
    assert (image.kind, image.reader, image.flavour) == ("openslide", "openslide", "dicom")
    assert image.has_alpha and image.pixel_size == (0.499, 0.499)
    np.testing.assert_array_equal(image.data.compute(), _openslide_rgba(DICOM_DIR / "boxes_0.dcm"))


@pytest.mark.parametrize(("path", "levels", "pixel_size"), [(CMU_SVS, 1, (0.499, 0.499)), (TCGA_SVS, 2, None)])
def test_svs_stays_on_tifffile_and_equals_openslide(path, levels, pixel_size):
    image = open_image(path)
    assert (image.reader, image.flavour, len(image.level_shapes)) == ("tifffile", "svs", levels)
    assert image.pixel_size == (None if pixel_size is None else pytest.approx(pixel_size))
    last = open_image(path, level=levels - 1)
    np.testing.assert_array_equal(last.data.compute(), _openslide_rgba(path, levels - 1)[..., :3])


def test_openslide_reader_regions_equal_tifffile(caplog):
    """The OpenSlide reader itself, read in uneven regions across tile borders; on a level whose
    downsample is not whole (2221 of 4443 columns), exact from its origin, and a warning says why."""
    reader = slides.open_openslide(str(TCGA_SVS), 0, 2**26, Selection())
    reference = open_image(TCGA_SVS).source
    assert reader.shape == (3567, 4443, 4) and reader.reader == "openslide" and reader.flavour == "aperio"
    for ys, xs in [
        (slice(0, 300), slice(0, 700)),
        (slice(250, 1031), slice(1000, 1283)),
        (slice(3500, 3567), slice(4400, 4443)),
    ]:
        np.testing.assert_array_equal(reader[ys, xs, slice(0, 3)], reference[ys, xs, :])
    level1 = slides.open_openslide(str(TCGA_SVS), 1, 2**26, Selection())
    assert "downsample of 2.0005, not a whole number" in caplog.text
    np.testing.assert_array_equal(level1[0:300, 0:700, 0:3], open_image(TCGA_SVS, level=1).source[0:300, 0:700, :])


def test_info_names_openslide_and_the_vendor(capsys):
    assert main(["info", str(DICOM_DIR)]) == 0
    out = capsys.readouterr().out
    assert "reader: openslide" in out and "format: openslide (dicom)" in out and "(0.499, 0.499)" in out


@pytest.mark.slow
def test_segment_a_dicom_wsi_directory(tmp_path):
    out = str(tmp_path / "boxes.zarr")
    assert main(["segment", str(DICOM_DIR), out, "--clusters", "2", "-q"]) == 0
    labels = zarr.open_group(out, mode="r")["0"][:]
    pixels = _openslide_rgba(DICOM_DIR / "boxes_0.dcm")[..., :3].reshape(-1, 3)
    # two clusters split the distinct colours into two groups: equal colours share a label
    _, colour_ids = np.unique(pixels, axis=0, return_inverse=True)
    flat = labels.reshape(-1)
    assert set(np.unique(flat)) == {1, 2}
    for colour in np.unique(colour_ids):
        assert len(np.unique(flat[colour_ids.reshape(-1) == colour])) == 1


def test_corrupt_dicom_is_one_line_naming_the_openslide_error(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    data = (DICOM_DIR / "boxes_0.dcm").read_bytes()
    (broken / "a.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"with OpenSlide: OpenSlide(UnsupportedFormat)?Error: ") as info:
        open_image(broken / "a.dcm", level=0)
    assert "\n" not in str(info.value)


def test_unknown_directory_lists_the_formats(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(
        InputError,
        match=r"not a zarr store .* nor a DICOM WSI \(no DICOM instance\); pixseg reads .*DICOM WSI dir.*\.mrxs",
    ):
        formats.select_format(str(tmp_path))


def test_openslide_level_and_plane_checks():
    with pytest.raises(InputError, match=r"--level 1 does not exist in .*: it has 1 level"):
        open_image(DICOM_DIR, level=1)
    with pytest.raises(InputError, match=r"--plane z=2 does not exist"):
        open_image(DICOM_DIR, plane={"z": 2})
    with pytest.raises(InputError, match=r"--series 1 does not exist"):
        open_image(DICOM_DIR, series=1)


@pytest.fixture
def svs_through_openslide(monkeypatch):
    """Route the CMU SVS to the OpenSlide reader, as a format tifffile could not read would be."""
    openslide_format = next(fmt for fmt in formats.FORMATS if fmt.open is slides.open_openslide and not fmt.directory)
    monkeypatch.setattr(formats, "FORMATS", (openslide_format,))
    return str(CMU_SVS)


@pytest.mark.slow
def test_openslide_labels_identical_on_threads_and_worker_processes(tmp_path, svs_through_openslide):
    from pixseg.cluster import open_scheduler

    read = ReadOptions(chunk=512)
    fit = FitOptions(clusters=3, restarts=1, sample_size=20_000)
    assert open_image(svs_through_openslide).reader == "openslide"
    segment(svs_through_openslide, str(tmp_path / "threads.zarr"), read=read, fit=fit)
    with open_scheduler("local", workers=2) as client:
        assert client is not None
        segment(svs_through_openslide, str(tmp_path / "local.zarr"), read=read, fit=fit)
    threads = zarr.open_group(str(tmp_path / "threads.zarr"), mode="r")["0"][:]
    local = zarr.open_group(str(tmp_path / "local.zarr"), mode="r")["0"][:]
    assert len(np.unique(threads)) == 3
    np.testing.assert_array_equal(threads, local)


def test_dicom_directory_copy_reads_from_its_first_instance(tmp_path):
    copy = tmp_path / "slide"
    shutil.copytree(DICOM_DIR, copy)
    (copy / "0-readme.txt").write_text("not DICOM")
    assert slides._slide_file(str(copy)) == os.path.join(str(copy), "boxes_0.dcm")


@pytest.fixture
def czi_two_scenes(tmp_path) -> tuple[str, list[np.ndarray]]:
    """A CZI written by pylibCZIrw: scene 0 an RGB 90x120 tile at (5, 7), scene 1 an RGB 40x30 tile,
    pixel size 0.25 µm. Returns the path and each scene's RGB pixels."""
    rng = np.random.default_rng(0)
    scenes = [rng.integers(0, 256, (90, 120, 3), dtype=np.uint8), rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)]
    path = str(tmp_path / "two.czi")
    with pyczi.create_czi(path) as writer:
        for index, rgb in enumerate(scenes):
            writer.write(
                np.ascontiguousarray(rgb[..., ::-1]),
                plane={"C": 0, "Z": 0, "T": 0},
                location=(7, 5 + 200 * index),
                scene=index,
            )
        writer.write_metadata(scale_x=0.25e-6, scale_y=0.25e-6)
    return path, scenes


def test_czi_scenes_read_as_rgb_series(czi_two_scenes, capsys):
    path, scenes = czi_two_scenes
    first = open_image(path)
    assert (first.kind, first.reader, first.shape) == ("czi", "pylibCZIrw", (90, 120, 3))
    assert first.pixel_size == pytest.approx((0.25, 0.25))
    np.testing.assert_array_equal(first.data.compute(), scenes[0])
    np.testing.assert_array_equal(open_image(path, series=1, chunk=16).data.compute(), scenes[1])
    assert main(["info", path]) == 0
    assert "0 'scene 0': 90x120x3 (YXC); 1 'scene 1': 40x30x3 (YXC)" in capsys.readouterr().out


def test_czi_grey_stack_needs_a_plane(tmp_path):
    stack = np.arange(3 * 2 * 20 * 24, dtype=np.uint16).reshape(3, 2, 20, 24)  # Z, C, Y, X
    path = str(tmp_path / "stack.czi")
    with pyczi.create_czi(path) as writer:
        for z, c in np.ndindex(3, 2):
            writer.write(stack[z, c], plane={"C": c, "Z": z, "T": 0})
    with pytest.raises(InputError, match=r"holds 3 Z planes.*--plane z=K \(K from 0 to 2\)"):
        open_image(path)
    plane = open_image(path, plane={"z": 2})
    assert plane.dtype == np.uint16 and plane.pixel_size is None
    np.testing.assert_array_equal(plane.data.compute(), np.moveaxis(stack[2], 0, -1))


def test_damaged_czi_is_one_line(czi_two_scenes, tmp_path):
    data = Path(czi_two_scenes[0]).read_bytes()
    cut = tmp_path / "cut.czi"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cannot read CZI .*cut\.czi") as info:
        open_image(cut).data.compute()
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_segment_convert_and_view_a_czi_scene(czi_two_scenes, tmp_path):
    """--series reaches segment, the viewer's slide (from the output's record) and convert."""
    path, scenes = czi_two_scenes
    out = str(tmp_path / "czi.zarr")
    assert main(["segment", path, out, "--series", "1", "--clusters", "3", "--chunk", "16", "-q"]) == 0
    labels = zarr.open_group(out, mode="r")["0"][:]
    assert labels.shape == (40, 30) and set(np.unique(labels)) == {1, 2, 3}
    slide = slide_pyramid(open_output(out), None, ReaderCache())
    np.testing.assert_array_equal(slide.read(0, slice(0, 40), slice(0, 30)), scenes[1])
    converted = str(tmp_path / "scene1.zarr")
    assert main(["convert", path, converted, "--series", "1", "--chunk", "16", "-q"]) == 0
    np.testing.assert_array_equal(open_image(converted).data.compute(), scenes[1])


#: Micrometres per pixel (Y, X) written into the MRXS and DICOM slides: unequal, so that a swap shows.
SLIDE_MPP = (0.24, 0.26)


@pytest.fixture(scope="module")
def mrxs_pixels() -> np.ndarray:
    """A 512x768 synthetic H&E slide: 2x3 camera images of 256^2 (level 1 pads the third column)."""
    return make_slide(512, 768, seed=3)[0]


@pytest.fixture(scope="module")
def mrxs_slide(tmp_path_factory, mrxs_pixels) -> Path:
    """``mrxs_pixels`` as a two-level MRXS slide with PNG images (exact pixels)."""
    return write_mrxs(tmp_path_factory.mktemp("mrxs") / "slide.mrxs", mrxs_pixels, mpp=SLIDE_MPP)


def _mrxs_level1(pixels: np.ndarray) -> np.ndarray:
    """Level 1 of :func:`write_mrxs`: 2x2 block means, the image padded with white to whole images."""
    padded = np.pad(pixels, ((0, 0), (0, 256), (0, 0)), constant_values=255)
    return downsample(padded, 2)[: pixels.shape[0] // 2, : pixels.shape[1] // 2]


@pytest.mark.parametrize(("image_format", "min_psnr"), [("PNG", None), ("BMP24", None), ("JPEG", 30.0)])
def test_openslide_reads_the_mrxs_writer_back(tmp_path, mrxs_pixels, image_format, min_psnr):
    """The test writer against OpenSlide, the independent reader: exact pixels for PNG and BMP
    images, JPEG within its loss; both levels, and the MPP of Slidedat.ini."""
    path = write_mrxs(tmp_path / "s.mrxs", mrxs_pixels, image_format=image_format, mpp=SLIDE_MPP)
    assert openslide.OpenSlide.detect_format(str(path)) == "mirax"
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.level_dimensions == ((768, 512), (384, 256))
        assert (float(slide.properties["openslide.mpp-y"]), float(slide.properties["openslide.mpp-x"])) == SLIDE_MPP
    for level, expected in ((0, mrxs_pixels), (1, _mrxs_level1(mrxs_pixels))):
        read = _openslide_rgba(path, level)
        assert (read[..., 3] == 255).all()
        if min_psnr is None:
            np.testing.assert_array_equal(read[..., :3], expected)
        else:
            mse = np.mean((read[..., :3].astype(np.float64) - expected) ** 2)
            assert 10 * np.log10(255**2 / mse) > min_psnr


def test_mrxs_reads_as_openslide_does(mrxs_slide, mrxs_pixels):
    image = open_image(mrxs_slide)
    assert (image.kind, image.reader, image.flavour) == ("openslide", "openslide", "mirax")
    assert image.level_shapes == ((512, 768), (256, 384)) and image.native_chunks == (256, 256)
    assert image.pixel_size == pytest.approx(SLIDE_MPP)
    np.testing.assert_array_equal(image.data.compute(), _openslide_rgba(mrxs_slide))
    np.testing.assert_array_equal(image.data.compute()[..., :3], mrxs_pixels)
    level1 = open_image(mrxs_slide, level=1, chunk=96)  # chunks across the images' borders
    assert level1.pixel_size == pytest.approx((0.48, 0.52))
    np.testing.assert_array_equal(level1.data.compute()[..., :3], _mrxs_level1(mrxs_pixels))


@pytest.fixture(scope="module")
def dicom_pixels() -> np.ndarray:
    """A 500x700 synthetic H&E slide: partial edge tiles of 256^2 on both axes."""
    return make_slide(500, 700, seed=5)[0]


@pytest.fixture(scope="module")
def dicom_wsi(tmp_path_factory, dicom_pixels) -> Path:
    """``dicom_pixels`` as a two-level DICOM WSI directory written by pydicom (uncompressed frames)."""
    directory = tmp_path_factory.mktemp("dicom") / "slide"
    write_dicom_wsi(directory, dicom_pixels, mpp=SLIDE_MPP)
    return directory


def test_a_larger_dicom_wsi_reads_as_openslide_does(dicom_wsi, dicom_pixels):
    """The test writer against OpenSlide (the independent reader), then pixseg against both."""
    instance = dicom_wsi / "level-0.dcm"
    assert openslide.OpenSlide.detect_format(str(instance)) == "dicom"
    with openslide.OpenSlide(str(instance)) as slide:
        assert slide.level_dimensions == ((700, 500), (350, 250))
        mpp = (float(slide.properties["openslide.mpp-y"]), float(slide.properties["openslide.mpp-x"]))
        assert mpp == pytest.approx(SLIDE_MPP)
    image = open_image(dicom_wsi)
    assert (image.kind, image.reader, image.flavour) == ("openslide", "openslide", "dicom")
    assert image.level_shapes == ((500, 700), (250, 350)) and image.native_chunks == (256, 256)
    assert image.pixel_size == pytest.approx(SLIDE_MPP)
    np.testing.assert_array_equal(image.data.compute(), _openslide_rgba(instance))
    np.testing.assert_array_equal(image.data.compute()[..., :3], dicom_pixels)
    level1 = open_image(dicom_wsi, level=1, chunk=96)
    np.testing.assert_array_equal(level1.data.compute(), _openslide_rgba(instance, 1))
    np.testing.assert_array_equal(level1.data.compute()[..., :3], downsample(dicom_pixels, 2))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("slide", "pixels", "summary"),
    [
        ("mrxs_slide", "mrxs_pixels", ["format: openslide (mirax)", "levels: 512x768, 256x384"]),
        ("dicom_wsi", "dicom_pixels", ["format: openslide (dicom)", "levels: 500x700, 250x350"]),
    ],
)
def test_info_and_segment_equal_a_tiff_of_the_same_pixels(slide, pixels, summary, request, tmp_path, capsys):
    """The same pixels as MRXS or DICOM WSI (OpenSlide) and as a TIFF (tifffile) give identical labels."""
    slide, pixels = request.getfixturevalue(slide), request.getfixturevalue(pixels)
    assert main(["info", str(slide)]) == 0
    out = capsys.readouterr().out
    assert all(line in out for line in summary)
    # OpenSlide derives a DICOM MPP from millimetres (0.24000000000000002); info prints 6 digits
    assert f"pixel_size_um: {tuple(SLIDE_MPP)}" in out
    tiff = str(tmp_path / "slide.tif")
    tifffile.imwrite(tiff, pixels, tile=(256, 256), photometric="rgb")
    for source, out_path in ((str(slide), tmp_path / "slide.zarr"), (tiff, tmp_path / "tiff.zarr")):
        assert main(["segment", source, str(out_path), "--clusters", "3", "--pixel-size", "0.25", "-q"]) == 0
    slide_labels = zarr.open_group(str(tmp_path / "slide.zarr"), mode="r")["0"][:]
    tiff_labels = zarr.open_group(str(tmp_path / "tiff.zarr"), mode="r")["0"][:]
    assert set(np.unique(slide_labels)) == {1, 2, 3}
    np.testing.assert_array_equal(slide_labels, tiff_labels)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # see the `s3` fixture
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_openslide_and_czi_urls_are_refused_in_one_line(s3, mrxs_slide, czi_two_scenes, tmp_path, capsys):
    """OpenSlide and libCZI open local paths only: a URL of their formats, known by suffix or by
    content, gets one line saying so, from `info` and from `segment` before it writes anything."""
    s3.put(str(mrxs_slide), "bkt/slide.mrxs")
    s3.put(czi_two_scenes[0], "bkt/scan")  # no suffix: a CZI by its content
    for name in ("boxes_0.dcm", "boxes_1.dcm"):
        s3.put(str(DICOM_DIR / name), f"bkt/dicom/{name}")
    cases = [
        ("s3://bkt/slide.mrxs", "is MRXS/VMS/VMU/DICOM WSI/SVSlide: "),
        ("s3://bkt/scan", "is Zeiss CZI: "),
        ("s3://bkt/dicom/boxes_0.dcm", "is MRXS/VMS/VMU/DICOM WSI/SVSlide: "),
        ("s3://bkt/dicom", "is a prefix but not a zarr store (no zarr.json, .zgroup, .zarray); if it is a DICOM WSI, "),
    ]
    for url, what in cases:
        assert main(["info", url]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines == [f"error: input {url!r} {what}{formats.LOCAL_ONLY}"]
    out = tmp_path / "labels.zarr"
    assert main(["segment", "s3://bkt/slide.mrxs", str(out), "-q"]) == 2
    assert "OpenSlide and CZI read local files only" in capsys.readouterr().err and not out.exists()
