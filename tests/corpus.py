"""The bad-input corpus: malformed inputs and arguments, each with the exit code and message it must give.

Each case builds its files in a fresh directory and returns the ``pixseg`` arguments to run.
``expect`` is a substring of the one-line ``error:`` message (exit 2), or ``None`` where a correct
result makes sense (exit 0).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
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


def _bad_model(tmp: Path, change: Callable[[dict], None]) -> list[str]:
    """A sound model document, fitted on the blob pixels, with one field spoiled by ``change``."""
    from pixseg.features import make_feature_spec
    from pixseg.io.model_file import model_document
    from pixseg.kmeans_fit import fit_model

    pixels = make_blob_image(30, 40).reshape(-1, 3).astype(np.float32) / 255
    spec = make_feature_spec("channels", n_channels=3, has_alpha=False, dtype=np.dtype(np.uint8))
    document = json.loads(json.dumps(model_document(fit_model(pixels, spec, n_clusters=3, seed=0, restarts=1))))
    change(document)
    return _model_file(tmp, document)


def _config(tmp: Path, text: str) -> list[str]:
    return ["run", _bytes(tmp, "run.yaml", text.encode()), "--dry-run", "-q"]


def _alias_bomb() -> str:
    lines = ['  a0: &a0 ["lol"]']
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    return "inputs:\n- bomb:\n" + "\n".join(lines) + "\noutput: {directory: out}\n"


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


# --- output safety (tests/test_output_safety.py): destinations that escape, collide or are not pixseg's ---


def _linked_output(tmp: Path) -> list[str]:
    (tmp / "notes.txt").write_text("a user's notes\n")
    (tmp / "dest.zarr").symlink_to(tmp / "notes.txt")
    return ["segment", _rgb(tmp), str(tmp / "dest.zarr"), "--overwrite", "-q"]


def _foreign_directory(tmp: Path) -> list[str]:
    (tmp / "dest.zarr").mkdir()
    (tmp / "dest.zarr" / "thesis.txt").write_text("chapter 1\n")
    return ["segment", _rgb(tmp), str(tmp / "dest.zarr"), "--overwrite", "-q"]


def _model_over_user_json(tmp: Path) -> list[str]:
    (tmp / "settings.json").write_text('{"theme": "dark"}')
    return _segment(_rgb(tmp), tmp, "--save-model", str(tmp / "settings.json"), "--overwrite")


def _into_input(tmp: Path, name: str) -> list[str]:
    return ["segment", _ome_zarr(tmp, [{"axes": ["y", "x"], "datasets": [{"path": "0"}]}]), "--into-input", name]


def _convert_over_foreign_directory(tmp: Path) -> list[str]:
    (tmp / "dest.zarr").mkdir()
    (tmp / "dest.zarr" / "data.csv").write_text("1,2\n")
    return ["convert", _rgb(tmp), str(tmp / "dest.zarr"), "--overwrite", "-q"]


CASES += [
    Case("--into-input name with ../", lambda t: _into_input(t, "../x"), "is not a plain name"),
    Case("--into-input hidden name", lambda t: _into_input(t, ".x"), "is not a plain name"),
    Case("output is a symlink to a user file", _linked_output, "already exists and is a symlink to"),
    Case("--overwrite of a user's directory", _foreign_directory, "is a directory pixseg did not write"),
    Case("--save-model over a user's JSON", _model_over_user_json, "not a pixseg model file"),
    Case(
        "--save-model is the statistics file",
        lambda t: _segment(_rgb(t), t, "--save-model", str(t / "out.zarr.stats.json")),
        "are the same path",
    ),
    Case(
        "--workdir inside the output",
        lambda t: _segment(_rgb(t), t, "--workdir", str(t / "out.zarr" / "work")),
        "lies inside, the output",
    ),
    Case("convert --overwrite of a user's directory", _convert_over_foreign_directory, "not a pixseg converted image"),
]


# --- hostile inputs (tests/test_hostile_inputs.py): decompression bombs, nodata, non-files, malformed ---


def handmade_tiff(
    tmp: Path,
    name: str,
    *,
    width: int,
    length: int,
    compression: int = 1,
    tile: tuple[int, int] | None = None,
    rows_per_strip: int | None = None,
    data: bytes = b"\0" * 64,
    n_segments: int = 1,
    extra: tuple[tuple[int, int, int, int], ...] = (),
) -> str:
    """A classic little-endian uint8 min-is-black TIFF with hand-written tags: ``n_segments`` strips
    or tiles (of ``tile`` = (length, width)), each pointing at the same ``data``."""
    offsets_at = 8 + 2 + 12 * 16 + 4
    counts_at = offsets_at + 4 * n_segments
    data_at = counts_at + 4 * n_segments
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, length),
        (258, 3, 1, 8),
        (259, 3, 1, compression),
        (262, 3, 1, 1),
        *extra,
    ]
    if tile is None:
        entries += [(273, 4, n_segments, offsets_at), (278, 4, 1, rows_per_strip or length)]
        entries += [(279, 4, n_segments, counts_at)]
    else:
        entries += [(322, 4, 1, tile[1]), (323, 4, 1, tile[0])]
        entries += [(324, 4, n_segments, offsets_at), (325, 4, n_segments, counts_at)]
    if n_segments == 1:  # one value fits in the entry itself
        entries = [
            (t, k, c, data_at if v == offsets_at else len(data) if v == counts_at else v) for t, k, c, v in entries
        ]
    entries.sort()
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries)
    ifd += b"\0" * (12 * (16 - len(entries))) + struct.pack("<I", 0)
    body = ifd + struct.pack(f"<{n_segments}I", *[data_at] * n_segments)
    body += struct.pack(f"<{n_segments}I", *[len(data)] * n_segments)
    return _bytes(tmp, name, b"II*\x00" + struct.pack("<I", 8) + body + data)


def _zlib_zeros(size: int) -> bytes:
    return zlib.compress(b"\0" * size, 9)


def _png_header(tmp: Path, width: int, height: int) -> str:
    """A PNG with only a header (IHDR) declaring ``width`` x ``height`` RGB pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return _bytes(tmp, "bomb.png", data)


def _fifo(tmp: Path) -> list[str]:
    os.mkfifo(tmp / "pipe.tif")
    return _segment(str(tmp / "pipe.tif"), tmp)


def _float_blobs(tmp: Path, name: str, *, sentinel: float, rows: int = 20, **kwargs) -> str:
    pixels = make_blob_image(64, 80).astype(np.float32)
    pixels[:rows] = sentinel
    return _tiff(tmp, pixels, name, photometric="rgb", **kwargs)


def _thin_texture(tmp: Path) -> list[str]:
    pixels = make_blob_image(3, 500).astype(np.float32)
    pixels[0, :5] = np.nan
    return _segment(_tiff(tmp, pixels, photometric="rgb"), tmp, "--features", "texture", "--sigmas", "8")


BOMB = "--max-tile-memory 512 MB (read.max_tile_memory)"

CASES += [
    Case(
        "TIFF declaring one 100000^2 zlib strip",
        lambda t: _segment(
            handmade_tiff(t, "s.tif", width=100_000, length=100_000, compression=8, data=_zlib_zeros(10**6)), t
        ),
        BOMB,
    ),
    Case(
        "TIFF declaring one 65536^2 tile",
        lambda t: _segment(
            handmade_tiff(
                t, "t.tif", width=65_536, length=65_536, compression=8, tile=(65_536, 65_536), data=_zlib_zeros(10**6)
            ),
            t,
        ),
        BOMB,
    ),
    Case(
        "uncompressed 100000^2 strip with a short byte count",
        lambda t: _segment(handmade_tiff(t, "u.tif", width=100_000, length=100_000, data=b"\0" * 100_000), t),
        BOMB,
    ),
    Case(
        "zarr array with one 10 GB chunk",
        lambda t: _segment(
            str(
                zarr.create_array(
                    t / "c.zarr", shape=(100_000, 100_000), chunks=(100_000, 100_000), dtype="u1"
                ).store.root
            ),
            t,
        ),
        BOMB,
    ),
    Case("PNG declaring 20000^2 pixels", lambda t: _segment(_png_header(t, 20_000, 20_000), t), "decompression bomb"),
    Case("FIFO as input", _fifo, "is a FIFO, not a regular file"),
    Case("/dev/zero as input", lambda t: _segment("/dev/zero", t), "is a character device, not a regular file"),
    Case("ImageWidth 0", lambda t: _segment(handmade_tiff(t, "w0.tif", width=0, length=8), t), "input"),
    Case("ImageLength 0", lambda t: _segment(handmade_tiff(t, "l0.tif", width=8, length=0), t), "input"),
    Case(
        "tile width 0",
        lambda t: _segment(handmade_tiff(t, "t0.tif", width=8, length=8, tile=(16, 0)), t),
        "declares empty",
    ),
    Case(
        "strip count does not match the rows",
        lambda t: _segment(handmade_tiff(t, "n.tif", width=8, length=64, rows_per_strip=8, n_segments=3), t),
        "where its size needs 8",
    ),
    Case(
        "float -3.4e38 sentinel, no nodata",
        lambda t: _segment(_float_blobs(t, "f.tif", sentinel=-3.4e38), t),
        "pass --nodata -3.4e+38",
    ),
    Case(
        "float -3.4e38 sentinel with --nodata",
        lambda t: _segment(_float_blobs(t, "f.tif", sentinel=-3.4e38), t, "--nodata=-3.4e38"),
        None,
    ),
    Case(
        "float -9999 with a GDAL_NODATA tag",
        lambda t: _segment(_float_blobs(t, "g.tif", sentinel=-9999, extratags=[(42113, "s", 0, "-9999", True)]), t),
        None,
    ),
    Case(
        "float64 values beyond float32",
        lambda t: _segment(_tiff(t, make_blob_image(40, 40)[..., 0] * 1e300, "big.tif"), t, "--normalise", "dtype"),
        "too far outside the channel ranges",
    ),
    Case("3 x 500 image, texture sigma 8", _thin_texture, None),
    Case(
        "model with a NaN centroid",
        lambda t: _bad_model(t, lambda d: d["centroids"][1].__setitem__(0, float("nan"))),
        "field 'centroids' holds nan at [1, 0]",
    ),
    Case(
        "model with an infinite centroid",
        lambda t: _bad_model(t, lambda d: d["centroids"][0].__setitem__(2, float("inf"))),
        "field 'centroids' holds inf at [0, 2]",
    ),
    Case(
        "model with centroids of the wrong shape",
        lambda t: _bad_model(t, lambda d: d.__setitem__("centroids", [[0.1, 0.2], [0.3, 0.4]])),
        "field 'centroids' must be a list of lists of 3 numbers",
    ),
    Case(
        "model with std 0",
        lambda t: _bad_model(t, lambda d: d["feature_std"].__setitem__(0, 0.0)),
        "field 'feature_std' holds 0.0; every std must be > 0",
    ),
    Case(
        "model with an unknown dtype",
        lambda t: _bad_model(t, lambda d: d["features"].__setitem__("dtype", "object")),
        "field 'dtype' must be the name of an integer or float numpy dtype",
    ),
    Case(
        "model with a reversed channel range",
        lambda t: _bad_model(t, lambda d: d["features"]["channel_ranges"].__setitem__(0, [255, 0])),
        "field 'channel_ranges' must be a pair [low, high] with low < high",
    ),
    Case(
        "model file over 16 MiB",
        lambda t: _model_file(t, "[" + " " * (16 * 2**20) + "]"),
        "is larger than 16 MiB",
    ),
    Case(
        "model nested 100000 levels deep",
        lambda t: _model_file(t, "[" * 100_000 + "]" * 100_000),
        "is nested too deeply",
    ),
    Case(
        "config with a duplicate key",
        lambda t: _config(t, "inputs: [a.tif]\noutput: {directory: out}\nclusters: 3\nclusters: 4\n"),
        "line 4: duplicate key 'clusters'",
    ),
    Case("config with an alias bomb", lambda t: _config(t, _alias_bomb()), "expands to more than 1000000 nodes"),
    Case(
        "config nested 100000 levels deep",
        lambda t: _config(t, "inputs: " + "[" * 100_000 + "]" * 100_000 + "\n"),
        "is nested too deeply",
    ),
    Case("K = 1025", lambda t: _segment(_rgb(t), t, "-k", "1025"), "--clusters must be between 2 and 1024"),
    Case(
        "convert --levels 3000",
        lambda t: ["convert", _rgb(t), str(t / "out.zarr"), "--levels", "3000", "-q"],
        "--levels must be between 1 and 32, got 3000",
    ),
    Case(
        "pixel size 1e-310",
        lambda t: _segment(_rgb(t), t, "--pixel-size", "1e-310"),
        "--pixel-size must be between 1e-05 and",
    ),
    Case("seed 1e999", lambda t: _segment(_rgb(t), t, "--seed", "1e999"), "--seed must be an integer, got '1e999'"),
    Case("series beyond the file", lambda t: _segment(_rgb(t), t, "--series", "3"), "it has 1 series (0 to 0;"),
    Case("negative series", lambda t: _segment(_rgb(t), t, "--series", "-1"), "--series must be >= 0, got -1"),
    Case(
        "plane with a negative index",
        lambda t: _segment(_rgb(t), t, "--plane", "z=-1"),
        "--plane must be z=K,t=K with K an integer >= 0 (z='-1')",
    ),
    Case(
        "plane on an unknown axis",
        lambda t: _segment(_rgb(t), t, "--plane", "q=1"),
        "--plane must be z=K,t=K with axes z and t only (unknown axis 'q')",
    ),
    Case("plane on an axis the file lacks", lambda t: _segment(_rgb(t), t, "--plane", "z=2"), "it has no Z axis"),
    Case(
        "Z stack without a plane",
        lambda t: _segment(_tiff(t, np.zeros((3, 32, 32), np.uint8), metadata={"axes": "ZYX"}, ome=True), t),
        "holds 3 Z planes; a stack is not supported; pixseg segments one 2-D plane: pick it with --plane z=K",
    ),
    Case("channel beyond the file", lambda t: _segment(_rgb(t), t, "--channels", "0,7"), "--channels 7 does not exist"),
]
