"""The bad-input corpus: malformed inputs and arguments, each with the exit code and message it must give.

Each case builds its files in a fresh directory and returns the ``pixseg`` arguments to run.
``expect`` is a substring of the one-line ``error:`` message (exit 2), or ``None`` where a correct
result makes sense (exit 0).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import zarr
from conftest import make_blob_image


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], list[str]]
    expect: str | None


def _tiff(tmp: Path, pixels: np.ndarray, name: str = "in.tif", **kwargs) -> str:
    path = tmp / name
    tifffile.imwrite(path, pixels, **kwargs)
    return str(path)


def _bytes(tmp: Path, name: str, data: bytes) -> str:
    path = tmp / name
    path.write_bytes(data)
    return str(path)


def _rgb(tmp: Path) -> str:
    return _tiff(tmp, make_blob_image(64, 80), photometric="rgb")


def _segment(source: str, tmp: Path, *extra: str) -> list[str]:
    return ["segment", source, str(tmp / "out.zarr"), "-q", *extra]


def _huge_empty_tiff(tmp: Path) -> list[str]:
    """A classic TIFF header declaring 100000 x 100000 uint8 pixels in one strip that is not there."""
    entries = [
        (256, 4, 1, 100_000),  # ImageWidth
        (257, 4, 1, 100_000),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: min-is-black
        (273, 4, 1, 4096),  # StripOffsets: beyond the end of the file
        (278, 4, 1, 100_000),  # RowsPerStrip
        (279, 4, 1, 10_000_000_000 % 2**32),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHII", tag, kind, count, value)
    ifd += struct.pack("<I", 0)
    path = _bytes(tmp, "huge.tif", b"II*\x00" + struct.pack("<I", 8) + ifd)
    return _segment(path, tmp)


def _ome_zarr(tmp: Path, multiscales: object) -> str:
    path = tmp / "image.zarr"
    group = zarr.open_group(path, mode="w", zarr_format=3)
    group.create_array("0", shape=(32, 32), chunks=(16, 16), dtype=np.uint8)[:] = 7
    group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    return str(path)


def _model_file(tmp: Path, document: object) -> list[str]:
    model = tmp / "model.json"
    model.write_text(document if isinstance(document, str) else json.dumps(document))
    return ["apply", str(model), _rgb(tmp), str(tmp / "out.zarr"), "-q"]


def _float_with_nan_and_inf(tmp: Path) -> list[str]:
    pixels = make_blob_image(60, 60).astype(np.float32) / 255
    pixels[:5, :5] = np.nan
    pixels[10, 10:20] = np.inf
    return _segment(_tiff(tmp, pixels, photometric="rgb"), tmp)


def _unwritable(tmp: Path) -> list[str]:
    # root may write anywhere on a normal file system; /proc refuses new files to everyone
    return ["segment", _rgb(tmp), "/proc/pixseg-out.zarr", "-q"]


CASES = [
    Case("missing input", lambda t: _segment(str(t / "missing.tif"), t), "does not exist"),
    Case("empty TIFF", lambda t: _segment(_bytes(t, "empty.tif", b""), t), "cannot read TIFF"),
    Case(
        "text with .tif suffix",
        lambda t: _segment(_bytes(t, "notes.tif", b"hello, world\n" * 20), t),
        "cannot read TIFF",
    ),
    Case("text with .png suffix", lambda t: _segment(_bytes(t, "notes.png", b"hello"), t), "cannot read image"),
    Case("JPEG garbage", lambda t: _segment(_bytes(t, "x.jpg", b"\xff\xd8\xff\xe0garbage"), t), "image"),
    Case(
        "truncated TIFF",
        lambda t: _segment(_bytes(t, "cut.tif", Path(_rgb(t)).read_bytes()[:300]), t),
        "input",
    ),
    Case("complex dtype", lambda t: _segment(_tiff(t, np.zeros((8, 8), np.complex64)), t), "dtype 'complex64'"),
    Case("bool dtype", lambda t: _segment(_tiff(t, np.zeros((8, 8), bool)), t), "dtype 'bool'"),
    Case(
        "4-D stack",
        lambda t: _segment(
            _tiff(t, np.zeros((3, 4, 8, 8), np.uint8), metadata={"axes": "TZYX"}, photometric="minisblack"), t
        ),
        "is not supported",
    ),
    Case(
        "5-D stack",
        lambda t: _segment(
            _tiff(t, np.zeros((2, 3, 4, 8, 8), np.uint8), metadata={"axes": "TCZYX"}, photometric="minisblack"), t
        ),
        "is not supported",
    ),
    Case("1x1 image, K=2", lambda t: _segment(_tiff(t, np.array([[5]], np.uint8)), t), "more than the 1 distinct"),
    Case(
        "constant image, K=3",
        lambda t: _segment(_tiff(t, np.full((40, 40), 9, np.uint8)), t, "-k", "3"),
        "--clusters 3 is more than the 1 distinct",
    ),
    Case(
        "all-NaN float image",
        lambda t: _segment(_tiff(t, np.full((20, 20), np.nan, np.float32)), t),
        "no valid pixels",
    ),
    Case(
        "fully transparent RGBA",
        lambda t: _segment(
            _tiff(t, np.zeros((20, 20, 4), np.uint8), photometric="rgb", extrasamples=["unassalpha"]), t
        ),
        "no valid pixels",
    ),
    Case("NaN and inf floats", _float_with_nan_and_inf, None),
    Case("huge declared dimensions, no data", _huge_empty_tiff, "pixel data"),
    Case(
        "zarr group without arrays",
        lambda t: _segment(str(zarr.open_group(t / "empty.zarr", mode="w").store.root), t),
        "no arrays",
    ),
    Case(
        "OME-Zarr with broken multiscales",
        lambda t: _segment(_ome_zarr(t, [{"axes": [{"name": "y"}, {"name": "x"}], "datasets": [{"no": "path"}]}]), t),
        "malformed 'multiscales'",
    ),
    Case(
        "OME-Zarr dataset pointing nowhere",
        lambda t: _segment(_ome_zarr(t, [{"axes": ["y", "x"], "datasets": [{"path": "missing"}]}]), t),
        "cannot open the arrays",
    ),
    Case(
        "zero-size zarr array",
        lambda t: _segment(
            str(zarr.create_array(t / "e.zarr", shape=(0, 10), chunks=(1, 10), dtype="u1").store.root), t
        ),
        "empty shape",
    ),
    Case(
        "1-D zarr array",
        lambda t: _segment(str(zarr.create_array(t / "v.zarr", shape=(100,), chunks=(10,), dtype="u1").store.root), t),
        "has 1 dimensions",
    ),
    Case("directory that is not zarr", lambda t: _segment(str(t), t / "x"), "not a zarr store"),
    Case("K = 0", lambda t: _segment(_rgb(t), t, "-k", "0"), "--clusters must be between 2 and"),
    Case("K = 70000", lambda t: _segment(_rgb(t), t, "-k", "70000"), "--clusters must be between 2 and"),
    Case(
        "chunk of 3 pixels",
        lambda t: _segment(_rgb(t), t, "--chunk", "3"),
        "--chunk must be between 16 and 16384, got 3",
    ),
    Case(
        "output under a file",
        lambda t: ["segment", _rgb(t), str(Path(_bytes(t, "file", b"x")) / "out.zarr"), "-q"],
        "is a file, not a directory",
    ),
    Case("output == input", lambda t: ["segment", (p := _rgb(t)), p, "-q"], "is, or is inside, the input"),
    Case("unknown output suffix", lambda t: ["segment", _rgb(t), str(t / "out.h5"), "-q"], "unknown suffix '.h5'"),
    Case("unwritable output directory", _unwritable, "cannot"),
    Case("model that is not JSON", lambda t: _model_file(t, "{oops"), "not readable JSON"),
    Case(
        "model from a newer pixseg",
        lambda t: _model_file(t, {"format": "pixseg-model", "schema_version": 99}),
        "schema_version 99",
    ),
    Case("JSON that is not a model", lambda t: _model_file(t, [1, 2, 3]), "is not a pixseg model"),
]
