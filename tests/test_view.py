"""``pixseg view``: Deep Zoom tiles on tiny arrays, the server's routes, the CLI, and the page in a real browser.

The browser tests drive Debian's ``chromium`` with playwright. Without them they are skipped,
except where ``PIXSEG_REQUIRE_BROWSER=1`` (set by .ci/run in CI): there they fail instead.
"""

from __future__ import annotations

import http.client
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from conftest import skip_or_fail
from PIL import Image

import pixseg
from pixseg.cli import main
from pixseg.colours import label_colours
from pixseg.view import make_server
from pixseg.view.tiles import (
    MAX_OVERSAMPLING,
    Pyramid,
    colour_labels,
    dzi_level_shape,
    dzi_max_level,
    label_at,
    label_tile,
    pick_level,
    slide_tile,
    tile_exists,
    tile_span,
    to_rgb8,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
#: The three flat colours of the test slide, in bands of columns [0, 170), [170, 340), [340, 512).
BANDS = {(0, 170): (200, 40, 40), (170, 340): (40, 180, 60), (340, 512): (40, 60, 200)}


# --- tiles on tiny arrays --------------------------------------------------------------------


def _label_pyramid(level0: np.ndarray, n_levels: int, reads: list | None = None) -> Pyramid:
    levels = [level0]
    while len(levels) < n_levels:
        levels.append(levels[-1][::2, ::2])

    def read(level, rows, columns):
        region = levels[level][rows, columns]
        if reads is not None:
            reads.append(region.shape)
        return region

    return Pyramid(
        shape=level0.shape[:2],
        downsamples=tuple((2.0**n, 2.0**n) for n in range(n_levels)),
        level_shapes=tuple(lv.shape[:2] for lv in levels),
        read=read,
    )


def _stitch(pyramid: Pyramid, level: int, tile_size: int, overlap: int) -> np.ndarray:
    """A whole DZI level of labels from its tiles, each cropped of its overlap."""
    height, width = dzi_level_shape(pyramid.shape, level)
    out = np.full((height, width), -1, dtype=np.int64)
    for row in range(math.ceil(height / tile_size)):
        for column in range(math.ceil(width / tile_size)):
            span = tile_span(pyramid.shape, level, column, row, tile_size=tile_size, overlap=overlap)
            tile = label_tile(pyramid, span)
            assert tile.shape == span.shape
            top, left = row * tile_size - span.rows[0], column * tile_size - span.columns[0]
            core = tile[top : top + tile_size, left : left + tile_size]
            out[
                row * tile_size : row * tile_size + core.shape[0],
                column * tile_size : column * tile_size + core.shape[1],
            ] = core
    return out


@pytest.mark.parametrize("shape", [(1, 1), (37, 70), (64, 64), (65, 3)])
def test_tile_grid_covers_every_dzi_level(shape):
    tile_size, overlap = 16, 1
    assert dzi_max_level(shape) == math.ceil(math.log2(max(shape)))
    for level in range(dzi_max_level(shape) + 1):
        scale = 2 ** (dzi_max_level(shape) - level)
        height, width = dzi_level_shape(shape, level)
        assert (height, width) == (math.ceil(shape[0] / scale), math.ceil(shape[1] / scale))
        rows, columns = math.ceil(height / tile_size), math.ceil(width / tile_size)
        for row in range(rows + 1):
            for column in range(columns + 1):
                exists = tile_exists(shape, level, column, row, tile_size=tile_size)
                assert exists == (row < rows and column < columns)
                if not exists:
                    with pytest.raises(ValueError):
                        tile_span(shape, level, column, row, tile_size=tile_size, overlap=overlap)
                    continue
                span = tile_span(shape, level, column, row, tile_size=tile_size, overlap=overlap)
                assert span.scale == scale
                # as OpenSeadragon's DziTileSource cuts them: overlap on inner edges only, clipped at the end
                assert span.columns == (
                    max(column * tile_size - overlap, 0),
                    min((column + 1) * tile_size + overlap, width),
                )
                assert span.rows == (max(row * tile_size - overlap, 0), min((row + 1) * tile_size + overlap, height))
    for bad in [(-1, 0, 0), (dzi_max_level(shape) + 1, 0, 0), (0, -1, 0)]:
        assert not tile_exists(shape, *bad, tile_size=tile_size)


def test_label_tiles_are_nearest_neighbour_and_seamless():
    rng = np.random.default_rng(0)
    level0 = rng.integers(0, 6, size=(37, 70), dtype=np.uint8)
    pyramid = _label_pyramid(level0, n_levels=3)
    top = dzi_max_level(level0.shape)
    np.testing.assert_array_equal(_stitch(pyramid, top, 16, 1), level0)  # full resolution: the labels
    np.testing.assert_array_equal(_stitch(pyramid, top - 1, 16, 1), level0[::2, ::2])  # level 1 as stored
    for level in range(top + 1):
        stitched = _stitch(pyramid, level, 16, 1)
        whole = label_tile(pyramid, tile_span(level0.shape, level, 0, 0, tile_size=128, overlap=0))
        np.testing.assert_array_equal(stitched, whole)  # tiles agree across their edges
        assert set(np.unique(stitched)) <= set(np.unique(level0))  # only stored values, never blended
    assert label_at(pyramid, 69, 36) == level0[36, 69]
    assert label_at(pyramid, 70, 0) is None and label_at(pyramid, 0, -1) is None


def test_a_tile_never_reads_a_whole_level():
    level0 = np.arange(1000 * 3000, dtype=np.uint32).reshape(1000, 3000)
    reads: list = []
    pyramid = _label_pyramid(level0, n_levels=1, reads=reads)  # no pyramid: only level 0
    limit = MAX_OVERSAMPLING * (16 + 2)
    for level in range(dzi_max_level(level0.shape) + 1):
        span = tile_span(level0.shape, level, 0, 0, tile_size=16, overlap=1)
        tile = label_tile(pyramid, span)
        assert np.isin(tile, level0).all()
        assert max(reads[-1]) <= limit, (level, reads[-1])
    pixels = np.zeros((1000, 3000, 3), np.uint8)

    def read_pixels(level, rows, columns):
        reads.append(pixels[rows, columns].shape[:2])
        return pixels[rows, columns]

    slide = Pyramid(pyramid.shape, pyramid.downsamples, pyramid.level_shapes, read_pixels)
    for level in range(dzi_max_level(level0.shape) + 1):
        span = tile_span(level0.shape, level, 0, 0, tile_size=16, overlap=1)
        assert slide_tile(slide, span).shape == (*span.shape, 3)
        assert max(reads[-1]) <= limit, (level, reads[-1])


def test_pick_level_takes_the_coarsest_level_fine_enough():
    downsamples = [(1.0, 1.0), (4.0, 4.0002), (16.0, 16.01)]
    assert [pick_level(downsamples, s) for s in (1, 2, 4, 8, 16, 32, 64)] == [0, 0, 0, 1, 1, 2, 2]
    assert pick_level([(1.0, 1.0), (2.0, 2.0)], 2) == 1


def test_slide_tiles_keep_flat_colours_at_every_level():
    image = np.zeros((50, 90, 3), dtype=np.uint8)
    image[:, :45] = (200, 40, 40)
    image[:, 45:] = (40, 60, 200)
    levels = [image, image[::2, ::2], image[::4, ::4]]
    pyramid = Pyramid(
        shape=(50, 90),
        downsamples=tuple((50 / lv.shape[0], 90 / lv.shape[1]) for lv in levels),
        level_shapes=tuple(lv.shape[:2] for lv in levels),
        read=lambda level, rows, columns: levels[level][rows, columns],
    )
    top = dzi_max_level((50, 90))
    full = slide_tile(pyramid, tile_span((50, 90), top, 0, 0, tile_size=128, overlap=0))
    np.testing.assert_array_equal(full, image)
    for level in range(top + 1):
        tile = slide_tile(pyramid, tile_span((50, 90), level, 0, 0, tile_size=128, overlap=0))
        assert tile.dtype == np.uint8 and tile.shape == (*dzi_level_shape((50, 90), level), 3)
        if tile.shape[1] >= 8:  # away from the boundary the colours are exact
            np.testing.assert_array_equal(tile[:, 0], np.broadcast_to((200, 40, 40), (tile.shape[0], 3)))
            np.testing.assert_array_equal(tile[:, -1], np.broadcast_to((40, 60, 200), (tile.shape[0], 3)))


def test_colour_labels_and_display_conversion():
    colours = label_colours(3)
    rgba = colour_labels(np.array([[0, 1, 2, 3, 4]], dtype=np.uint8), colours, hidden={2, 9})
    np.testing.assert_array_equal(rgba[0], [(0, 0, 0, 0), colours[0], (0, 0, 0, 0), colours[2], (0, 0, 0, 0)])
    assert to_rgb8(np.full((1, 1, 3), 65535, np.uint16)).tolist() == [[[255, 255, 255]]]
    assert to_rgb8(np.array([[[0.5, np.nan, 2.0]]], np.float32)).tolist() == [[[128, 0, 255]]]
    assert to_rgb8(np.array([[[7, 255]]], np.uint8)).tolist() == [[[7, 7, 7]]]  # grey + alpha
    assert to_rgb8(np.array([[[1, 2, 3, 0]]], np.uint8)).tolist() == [[[1, 2, 3]]]  # RGBA


# --- the server and the command ----------------------------------------------------------------


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Path]:
    """A 512 x 512 RGB slide of three flat colour bands, segmented (K=3) into .zarr and .tif outputs."""
    root = tmp_path_factory.mktemp("view")
    slide = np.zeros((512, 512, 3), dtype=np.uint8)
    for (left, right), colour in BANDS.items():
        slide[:, left:right] = colour
    tifffile.imwrite(root / "slide.tif", slide, tile=(128, 128), photometric="rgb")
    for name in ("labels.zarr", "labels.tif"):
        pixseg.segment(root / "slide.tif", root / name, clusters=3)
    return {"slide": root / "slide.tif", "zarr": root / "labels.zarr", "tif": root / "labels.tif"}


@pytest.fixture
def server(request, outputs) -> Iterator:
    viewer = make_server(str(outputs[getattr(request, "param", "zarr")]), port=0)
    thread = threading.Thread(target=viewer.serve_forever, daemon=True)
    thread.start()
    yield viewer
    viewer.shutdown()
    viewer.server_close()


def _get(server, path: str, host: str | None = None) -> tuple[int, bytes]:
    address, port = server.server_address[:2]
    connection = http.client.HTTPConnection(address, port, timeout=30)
    connection.request("GET", path, headers={"Host": host} if host else {})  # the path as given, not normalised
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, body


@pytest.mark.slow
@pytest.mark.parametrize("server", ["zarr", "tif"], indirect=True)
def test_routes_serve_tiles_and_labels_of_both_output_kinds(server, outputs):
    labels = zarr.open_group(outputs["zarr"], mode="r")["0"][:]
    status, body = _get(server, "/info.json")
    info = json.loads(body)
    assert status == 200 and (info["width"], info["height"]) == (512, 512)
    assert [e["label"] for e in info["labels"]] == [1, 2, 3]
    assert sum(e["pixels"] for e in info["labels"]) == 512 * 512
    assert info["masked_pixels"] == int((labels == 0).sum())  # listed as "masked" in the legend when > 0
    assert _get(server, "/slide.dzi")[1].startswith(b'<?xml version="1.0"')
    status, body = _get(server, "/labels_files/9/1_0.png")  # full resolution, columns 255..511
    tile = np.asarray(Image.open(io.BytesIO(body)))
    assert status == 200 and tile.shape == (257, 257, 4)
    colours = np.array(label_colours(3), dtype=np.uint8)
    np.testing.assert_array_equal(tile, colours[labels[:257, 255:] - 1])
    hidden = int(labels[0, 300])
    tile = np.asarray(Image.open(io.BytesIO(_get(server, f"/labels_files/9/1_0.png?hidden={hidden}")[1])))
    assert (tile[labels[:257, 255:] == hidden] == 0).all() and (tile[labels[:257, 255:] != hidden, 3] == 255).all()
    slide = np.asarray(Image.open(io.BytesIO(_get(server, "/slide_files/0/0_0.jpg")[1])))
    assert slide.shape == (1, 1, 3)
    for x, y in [(10, 20), (300, 500), (511, 511)]:
        assert json.loads(_get(server, f"/label?x={x}&y={y}")[1]) == {"x": x, "y": y, "label": int(labels[y, x])}
    assert json.loads(_get(server, "/label?x=512&y=0")[1])["label"] is None


@pytest.mark.slow
def test_only_named_routes_are_served(server):
    assert _get(server, "/")[0] == 200 and _get(server, "/openseadragon/images/home_rest.png")[0] == 200
    for path in [
        "/../pyproject.toml",
        "/openseadragon/../viewer.js",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/openseadragon/images/..%2f..%2fserver.py",
        "/static/index.html",
        "/server.py",
        "/openseadragon/openseadragon.min.js.map",
        "/labels_files/10/0_0.png",
        "/labels_files/9/2_0.png",
        "/slide_files/9/0_0.png",
    ]:
        assert _get(server, path)[0] == 404, path
    assert _get(server, "/label?x=1")[0] == 400
    assert _get(server, "/labels_files/9/0_0.png?hidden=a")[0] == 400
    assert _get(server, "/info.json", host=f"attacker.example:{server.server_address[1]}")[0] == 403


def _assert_user_error(capsys, argv, message):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


@pytest.mark.slow
def test_a_bad_output_or_input_exits_2(tmp_path, capsys, outputs):
    _assert_user_error(capsys, ["view", tmp_path / "missing.zarr", "--no-browser"], "does not exist")
    _assert_user_error(capsys, ["view", outputs["slide"], "--no-browser"], "is not a pixseg label output")
    copy = tmp_path / "copy.zarr"
    shutil.copytree(outputs["zarr"], copy)
    attrs = zarr.open_group(copy, mode="r+").attrs
    attrs["pixseg"] = {**attrs["pixseg"], "input": str(tmp_path / "gone.tif")}
    _assert_user_error(capsys, ["view", copy, "--no-browser"], "pass the slide with --image")
    _assert_user_error(capsys, ["view", copy, "--image", tmp_path / "nope.tif", "--no-browser"], "--image")
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    _assert_user_error(
        capsys, ["view", copy, "--image", small, "--no-browser"], "no pyramid level of the labels' shape"
    )
    attrs["pixseg"] = {**attrs["pixseg"], "complete": False}
    _assert_user_error(capsys, ["view", copy, "--no-browser"], "is incomplete")
    _assert_user_error(capsys, ["view", outputs["zarr"], "--port", "70000", "--no-browser"], "--port")


@pytest.mark.slow
def test_loopback_by_default_other_hosts_with_a_warning(outputs, caplog):
    viewer = make_server(str(outputs["zarr"]))
    assert viewer.server_address[0] == "127.0.0.1" and viewer.url.startswith("http://127.0.0.1:")
    viewer.server_close()
    assert not caplog.records
    viewer = make_server(str(outputs["zarr"]), host="0.0.0.0")
    viewer.server_close()
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "anyone" in caplog.records[0].message


@pytest.mark.slow
def test_ctrl_c_stops_the_command_cleanly(outputs):
    command = [sys.executable, "-m", "pixseg.cli", "view", str(outputs["tif"]), "--no-browser"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        url = line.split(" at ")[1].split()[0]
        host, port = url.removeprefix("http://").rstrip("/").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request("GET", "/info.json")
        assert connection.getresponse().status == 200
        connection.close()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode in (0, 130) and "Traceback" not in err, err


# --- the page in a real browser -----------------------------------------------------------------


def _no_browser(reason: str) -> None:
    skip_or_fail(
        "PIXSEG_REQUIRE_BROWSER", f"no headless browser: {reason} (apt-get install chromium; pip install playwright)"
    )


@pytest.fixture(scope="module")
def browser() -> Iterator:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("playwright is not installed")
    if not os.access(CHROMIUM, os.X_OK):
        _no_browser(f"{CHROMIUM} is not installed")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _wait_for_tiles(page) -> None:
    deadline = time.monotonic() + 60
    # polled with evaluate: the page's Content-Security-Policy forbids wait_for_function's eval
    while not page.evaluate("() => Boolean(window.pixseg && window.pixseg.tilesLoaded())"):
        assert time.monotonic() < deadline, "tiles did not load"
        time.sleep(0.1)
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")


def _pixel(page, x: int, y: int) -> np.ndarray:
    """The screen colour over level-0 pixel (x, y)."""
    where = page.evaluate(f"() => window.pixseg.imageToPage({x} + 0.5, {y} + 0.5)")
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"))
    return shot[int(where["y"]), int(where["x"])].astype(float)


@pytest.mark.slow
def test_the_page_shows_the_slide_with_labels(browser, server, outputs):
    labels = zarr.open_group(outputs["zarr"], mode="r")["0"][:]
    counts = {int(v): int(n) for v, n in zip(*np.unique(labels, return_counts=True), strict=True)}
    colours = label_colours(3)
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(server.url)
    _wait_for_tiles(page)
    opacity = float(page.locator("#opacity").input_value())
    points = {colour: ((left + right) // 2, 256) for (left, right), colour in BANDS.items()}
    for slide_colour, (x, y) in points.items():
        overlay = np.array(colours[labels[y, x] - 1][:3], dtype=float)
        expected = (1 - opacity) * np.array(slide_colour) + opacity * overlay
        assert np.abs(_pixel(page, x, y) - expected).max() <= 12, (x, y)

    rows = page.locator("#legend tbody tr")
    assert rows.count() == 3
    for i in range(3):
        row = rows.nth(i)
        label = int(row.get_attribute("data-label"))
        assert row.locator(".name").inner_text().strip() == f"cluster {label}"
        assert row.locator(".pixels").inner_text() == f"{counts[label]:,}"

    (slide_colour, (x, y)), (other_colour, (ox, oy)) = list(points.items())[:2]
    page.locator(f'#legend tr[data-label="{labels[y, x]}"] input').uncheck()
    _wait_for_tiles(page)
    assert np.abs(_pixel(page, x, y) - slide_colour).max() <= 12  # its colour is gone
    assert np.abs(_pixel(page, ox, oy) - other_colour).max() > 30  # the others stay

    page.locator("#opacity").fill("1")
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
    assert np.abs(_pixel(page, ox, oy) - colours[labels[oy, ox] - 1][:3]).max() <= 12
    assert requests and all(url.startswith(server.url) for url in requests), requests
    page.close()
