"""The run report ``OUTPUT.report.html``: valid HTML, self-contained, its table equals the statistics,
and the command it prints reproduces the labels."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import html5lib
import numpy as np
import pytest
import tifffile
import zarr
from conftest import make_blob_image

from pixseg.cli import main
from pixseg.options import FitOptions, OutputOptions, ReadOptions
from pixseg.report import REPORT_SIGNATURE, ReportRun, render_report, reproduce_command
from pixseg.runner import segment


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """A segment run of a small blob TIFF with a pixel size, non-default options and previews."""
    directory = tmp_path_factory.mktemp("report")
    source = str(directory / "blobs in space.tif")  # a path that needs quoting
    tifffile.imwrite(source, make_blob_image(150, 230, seed=3), tile=(64, 64), photometric="rgb")
    out = str(directory / "labels.zarr")
    result = segment(
        source,
        out,
        read=ReadOptions(chunk=96),
        fit=FitOptions(clusters=3, sample_size=3000, seed=7, features=("channels", "smooth"), sigmas=(1.5,)),
        output=OutputOptions(pixel_size=(0.5, 0.25)),
    )
    return result, out


def _document(path: str):
    with open(path, "rb") as handle:
        return html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(handle)


@pytest.mark.slow
def test_report_is_valid_html_and_its_table_equals_the_statistics(segmented):
    result, out = segmented
    report = out + ".report.html"
    assert report in result.side_files
    document = _document(report)  # strict: any parse error raises
    with open(out + ".stats.json", encoding="utf-8") as handle:
        rows = json.load(handle)["labels"]
    table = document.find(".//table[@class='labels']")
    header = [cell.text or "" for cell in table.findall("./tbody/tr/th")]
    body = [row for row in table.findall("./tbody/tr") if row.find("td") is not None]
    assert len(body) == len(rows) == 3
    column = {name: header.index(name) for name in ("label", "pixels", "fraction", "area (µm²)")}
    for tr, row in zip(body, rows, strict=True):
        cells = tr.findall("td")
        assert int(cells[column["label"]].get("data-value")) == row["label"]
        assert int(cells[column["pixels"]].get("data-value")) == row["pixels"]
        assert float(cells[column["fraction"]].get("data-value")) == row["fraction"]
        assert float(cells[column["area (µm²)"]].get("data-value")) == row["area_um2"]
        assert cells[header.index("name")].text == row.get("name", f"label {row['label']}")
    text = Path(report).read_text(encoding="utf-8")
    assert text.startswith(REPORT_SIGNATURE)
    assert "mask fraction" in text and "sample inertia" in text and "total" in text


@pytest.mark.slow
def test_report_references_nothing_outside_itself(segmented):
    _, out = segmented
    text = Path(out + ".report.html").read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    assert "//" not in re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    document = _document(out + ".report.html")
    sources = [element.get("src") for element in document.iter() if element.get("src") is not None]
    assert len(sources) == 3 and all(src.startswith("data:image/png;base64,") for src in sources)
    assert not [e for e in document.iter() if e.tag in ("script", "link", "iframe", "object", "embed")]
    assert not [e for e in document.iter() if e.get("href") is not None]


@pytest.mark.slow
def test_reproduce_command_gives_identical_labels(segmented, tmp_path, capsys):
    _, out = segmented
    document = _document(out + ".report.html")
    command = document.find(".//pre").text
    words = shlex.split(command)
    assert words[:2] == ["pixseg", "segment"] and words[3] == out
    assert "--clusters" in words and "--chunk" in words and "--pixel-size" in words
    again = str(tmp_path / "again.zarr")
    assert main([*words[1:3], again, *words[4:], "--quiet"]) == 0
    capsys.readouterr()
    np.testing.assert_array_equal(zarr.open_group(again, mode="r")["0"][:], zarr.open_group(out, mode="r")["0"][:])


@pytest.mark.slow
def test_no_previews_no_report(tmp_path, blob_tiff):
    out = str(tmp_path / "o.zarr")
    result = segment(blob_tiff, out, fit=FitOptions(clusters=2, sample_size=500), output=OutputOptions(previews=False))
    assert not any(path.endswith(".report.html") for path in result.side_files)
    assert not (tmp_path / "o.zarr.report.html").exists()


def _run(**changes) -> ReportRun:
    spec = SimpleNamespace(groups=("channels",), columns=("ch0",), sigmas=(), mask="none")
    model = SimpleNamespace(
        n_clusters=2,
        feature_spec=spec,
        seed=0,
        sample_size=10,
        n_iter=3,
        sample_inertia=1.5,
        degenerate=None,
        preset=None,
        k_choice=None,
    )
    fingerprint = {
        "input": {"path": "/data/my slide.tif"},
        "read": {"level": 0, "chunk": None, "convert": False, "workdir": "work dir"},
        "output": {"ngff": "0.5", "pixel_size": None, "previews": True},
    }
    values = {"output": "out.zarr", "fingerprint": fingerprint, "model": model, "versions": {}, "started": 0.0}
    return ReportRun(**{**values, **changes})


def test_apply_command_names_the_model_and_mask(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    words = shlex.split(reproduce_command(_run(applied_model="m.json", applied_mask="mask.png")))
    assert words[:5] == ["pixseg", "apply", str(tmp_path / "m.json"), "/data/my slide.tif", str(tmp_path / "out.zarr")]
    assert words[5:9] == ["--mask", str(tmp_path / "mask.png"), "--level", "0"]
    assert "--no-convert" in words and words[words.index("--workdir") + 1] == str(tmp_path / "work dir")
    assert "--chunk" not in words and "--pixel-size" not in words and "--no-previews" not in words


def test_report_escapes_text_and_shows_mean_colours():
    rows = [
        {"label": 1, "name": "<script>x</script>", "pixels": 3, "fraction": 0.75, "area_um2": None, "hex": "#ff0000"},
        {"label": 2, "pixels": 1, "fraction": 0.25, "area_um2": None, "mean_colour": [1.5, 2.0, 3.0]},
    ]
    page = render_report(
        _run(output="<b>.zarr"), rows, {"masked_pixels": 1}, n_pixels=5, images={}, stages=[("all", 1.0)]
    )
    document = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(page)
    assert "<script>" not in page and "<b>" not in page
    assert document.find(".//script") is None
    assert "mean input colour" in page and "#ff0000" in page and "(1.5, 2, 3)" in page
    assert "area (µm²)" not in page and "20.0000%" in page  # no pixel size; 1 of 5 pixels masked
