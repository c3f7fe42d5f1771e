"""Open images lazily as chunked dask arrays with canonical axes (Y, X, C).

Every reader returns an :class:`Image`: nothing is decoded until a chunk is computed.
TIFF tiles and zarr chunks are read through a small picklable region reader, so the
same graph runs on threads and on distributed worker processes, and a decode failure
surfaces as :class:`~pixseg.errors.InputError` naming the file.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from pixseg.errors import InputError
from pixseg.io.tiff_segments import TiffSegmentReader, segment_readable

logger = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".btf", ".tf8", ".tf2", ".ome.tif", ".ome.tiff")
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg")
#: PNG/JPEG files are decoded whole; above this many pixels the user is told to tile them.
MAX_PLAIN_PIXELS = 64 * 2**20
#: Target edge of a processing chunk, in pixels (about 1 Mpx per chunk).
DEFAULT_CHUNK = 1024
_CHANNEL_AXES = ("C", "S")


@dataclass(frozen=True)
class Image:
    """A lazily opened image.

    Attributes
    ----------
    path : str
        Where the image was read from.
    kind : str
        ``"tiff"``, ``"zarr"``, ``"ome-zarr"``, ``"png"`` or ``"jpeg"``.
    data : dask.array.Array
        Shape (Y, X, C), the file's dtype, chunked for processing; C in one chunk.
    source : array-like
        The same pixels as an array-like that reads any region ``source[ys, xs, :]`` on demand
        (picklable and thread-safe), for work that reads a few regions rather than whole chunks.
    native_chunks : tuple of int
        The (Y, X) size of the file's own tiles, strips or chunks.
    level : int
        The pyramid level ``data`` holds (0 = full resolution).
    level_shapes : tuple of tuple of int
        (Y, X) of every pyramid level in the file, level 0 first.
    has_alpha : bool
        Whether the last channel is an alpha channel (alpha == 0 means masked).
    pixel_size : tuple of float or None
        (Y, X) size of a pixel of the selected level in micrometres, when the file says.
    """

    path: str
    kind: str
    data: da.Array
    source: Any
    native_chunks: tuple[int, int]
    level: int
    level_shapes: tuple[tuple[int, int], ...]
    has_alpha: bool
    pixel_size: tuple[float, float] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(Y, X, C) of the selected level."""
        return tuple(int(n) for n in self.data.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        """The pixel dtype as stored."""
        return np.dtype(self.data.dtype)


def open_image(path: str | os.PathLike[str], *, level: int = 0, chunk: int | None = None) -> Image:
    """Open an image lazily.

    Parameters
    ----------
    path : path-like
        A TIFF / BigTIFF / OME-TIFF / SVS file, a zarr array or OME-Zarr group, or a PNG/JPEG file.
    level : int, optional
        Pyramid level to read (0 = full resolution).
    chunk : int, optional
        Edge of the square processing chunks. By default chunks of about
        ``DEFAULT_CHUNK`` pixels a side, made of whole file tiles.

    Returns
    -------
    Image
        Axes (Y, X, C); computes nothing.

    Raises
    ------
    InputError
        If the path is missing, not an image pixseg reads, corrupt, or of unsupported
        dtype or dimensionality, or if ``level`` does not exist.
    """
    path_str = os.fspath(path)
    if level < 0:
        raise InputError(f"--level must be >= 0, got {level!r}")
    if chunk is not None and chunk < 16:
        raise InputError(f"--chunk must be at least 16 pixels, got {chunk!r}")
    if not os.path.exists(path_str):
        raise InputError(f"input {path_str!r} does not exist")
    kind = _detect_kind(path_str)
    if kind == "tiff":
        source = _tiff_source(path_str, level)
    elif kind == "zarr":
        source = _zarr_source(path_str, level)
    else:
        source = _plain_source(path_str, level)
    dtype = np.dtype(source.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)) or dtype == np.bool_:
        raise InputError(f"input {path_str!r} has dtype {dtype.name!r}; expected an integer or float image")
    height, width, channels = source.shape
    if height < 1 or width < 1 or channels < 1:
        raise InputError(f"input {path_str!r} has an empty shape {source.shape!r}")
    chunks = _processing_chunks(source.native_chunks, (height, width), chunk)
    data = da.from_array(
        source,
        chunks=(chunks[0], chunks[1], channels),
        asarray=False,
        lock=False,
        fancy=False,
        meta=np.empty((0, 0, 0), dtype=dtype),
        name=f"read-{_token(path_str, os.stat(path_str).st_mtime_ns, level, chunks)}",
    )
    return Image(
        path=path_str,
        kind=source.kind,
        data=data,
        source=source,
        native_chunks=source.native_chunks,
        level=level,
        level_shapes=source.level_shapes,
        has_alpha=source.has_alpha,
        pixel_size=source.pixel_size,
    )


def _detect_kind(path: str) -> str:
    lower = path.lower().rstrip("/")
    if os.path.isdir(path):
        markers = ("zarr.json", ".zarray", ".zgroup")
        if lower.endswith(".zarr") or any(os.path.exists(os.path.join(path, m)) for m in markers):
            return "zarr"
        raise InputError(f"input {path!r} is a directory but not a zarr store")
    if lower.endswith(TIFF_SUFFIXES):
        return "tiff"
    if lower.endswith(PLAIN_SUFFIXES):
        return "plain"
    raise InputError(
        f"input {path!r} has an unknown suffix; expected a TIFF ({', '.join(TIFF_SUFFIXES[:4])}...), "
        f"a .zarr store or {'/'.join(PLAIN_SUFFIXES)}"
    )


def _processing_chunks(native: tuple[int, int], shape: tuple[int, int], chunk: int | None) -> tuple[int, int]:
    """Processing chunk (Y, X): ``chunk`` if given, else whole file tiles grouped to about 1 Mpx.

    A striped layout (a native chunk spanning the full width) is read in full-width bands,
    so each strip is decoded once.
    """
    if chunk is not None:
        return min(chunk, shape[0]), min(chunk, shape[1])
    native_y, native_x = native
    if native_x >= shape[1] and shape[1] > DEFAULT_CHUNK:
        rows = max(native_y, (DEFAULT_CHUNK * DEFAULT_CHUNK // shape[1]) // native_y * native_y)
        return min(rows, shape[0]), shape[1]
    return (
        min(max(1, round(DEFAULT_CHUNK / native_y)) * native_y, shape[0]),
        min(max(1, round(DEFAULT_CHUNK / native_x)) * native_x, shape[1]),
    )


def _token(*parts: object) -> str:
    from dask.base import tokenize

    return tokenize(*parts)


class _RegionReader:
    """Picklable array-like yielding (Y, X, C) regions of a native array opened on first use.

    Parameters
    ----------
    open_native : callable
        Module-level function (picklable) returning an object with ``__getitem__`` over the
        native axes, e.g. a zarr array.
    native_axes : str
        One letter a native axis: Y, X, a channel axis (C or S), or any other letter for an
        axis of length 1 that is dropped.
    """

    def __init__(
        self,
        *,
        path: str,
        kind: str,
        open_native: Callable[[], Any],
        native_axes: str,
        native_shape: tuple[int, ...],
        dtype: np.dtype,
        native_chunks: tuple[int, int],
        level_shapes: tuple[tuple[int, int], ...],
        has_alpha: bool,
        pixel_size: tuple[float, float] | None = None,
    ) -> None:
        self.path = path
        self.kind = kind
        self._open_native = open_native
        self._axes = native_axes
        self.dtype = np.dtype(dtype)
        self.native_chunks = native_chunks
        self.level_shapes = level_shapes
        self.has_alpha = has_alpha
        self.pixel_size = pixel_size
        sizes = dict(zip(native_axes, native_shape, strict=True))
        self.shape = (sizes["Y"], sizes["X"], sizes.get("C", 1))
        self.ndim = 3
        self._native: Any = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_native"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __del__(self) -> None:
        # TIFF stores hold an open file handle: release it with the reader
        close = getattr(getattr(self._native, "store", None), "close", None)
        if close is not None:
            close()

    def _array(self) -> Any:
        with self._lock:
            if self._native is None:
                self._native = self._open_native()
            return self._native

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        ys, xs, cs = key
        native_key: list[slice | int] = []
        kept = ""
        for axis in self._axes:
            if axis == "Y":
                native_key.append(ys)
            elif axis == "X":
                native_key.append(xs)
            elif axis == "C":
                native_key.append(cs)
            else:
                native_key.append(0)
                continue
            kept += axis
        try:
            region = np.asarray(self._array()[tuple(native_key)])
        except Exception as err:  # any decoder failure is a corrupt input, not a bug
            raise InputError(f"cannot decode input {self.path!r} at rows {ys}, columns {xs}: {err}") from err
        if "C" not in kept:
            region = region[..., np.newaxis]
            kept += "C"
        return region.transpose([kept.index(a) for a in "YXC"])


def _canonical_axes(axes: str, shape: tuple[int, ...], path: str) -> str:
    """Rename a file's axes to Y, X, C (+ others of length 1), or raise for real stacks."""
    out = ""
    for axis, size in zip(axes.upper(), shape, strict=True):
        if axis in ("Y", "X"):
            out += axis
        elif axis in _CHANNEL_AXES and "C" not in out:
            out += "C"
        elif size == 1:
            out += "_"
        else:
            raise InputError(
                f"input {path!r} has axes {axes!r} with shape {tuple(shape)!r}: {axis!r} of length {size} "
                "is not supported; pixseg segments one 2-D plane with channels (Y, X, C)"
            )
    if "Y" not in out or "X" not in out:
        raise InputError(f"input {path!r} has axes {axes!r}; expected Y and X axes")
    return out


# --- TIFF -------------------------------------------------------------------------------


def _open_tiff_level(path: str, level: int) -> Any:
    import tifffile
    import zarr

    store = tifffile.imread(path, aszarr=True, series=0, level=level)
    return zarr.open_array(store, mode="r")


def _tiff_source(path: str, level: int) -> _RegionReader:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise InputError(f"input {path!r} holds no image series")
            series = tif.series[0]
            levels = series.levels
            if level >= len(levels):
                raise InputError(f"--level {level} does not exist in {path!r}: it has {len(levels)} level(s)")
            chosen = levels[level]
            axes = _canonical_axes(chosen.axes, chosen.shape, path)
            page = chosen.keyframe
            if page.is_tiled:
                native = (int(page.tilelength), int(page.tilewidth))
            else:
                native = (max(1, min(int(page.rowsperstrip or page.imagelength), page.imagelength)), page.imagewidth)
            level_shapes = tuple(_yx(lvl.axes, lvl.shape) for lvl in levels)
            dtype = np.dtype(chosen.dtype)
            has_alpha = _tiff_has_alpha(page, axes, chosen.shape)
            _check_tiff_data(path, chosen.pages)
            base_size = _tiff_pixel_size(tif, levels[0].keyframe)
            shape = tuple(int(n) for n in chosen.shape)
            open_native: Callable[[], Any] = functools.partial(_open_tiff_level, path, level)
            if segment_readable(page, len(chosen.pages)):
                open_native = functools.partial(TiffSegmentReader, path, level=level)
                _, _, height, width, contig = page.shaped
                axes, shape = "YXC", (int(height), int(width), int(page.shaped[0] * contig))
    except InputError:
        raise
    except Exception as err:  # tifffile raises many types for corrupt files
        raise InputError(f"cannot read TIFF {path!r}: {err}") from err
    return _RegionReader(
        path=path,
        kind="tiff",
        open_native=open_native,
        native_axes=axes,
        native_shape=shape,
        dtype=dtype,
        native_chunks=native,
        level_shapes=level_shapes,
        has_alpha=has_alpha,
        pixel_size=_scaled_pixel_size(base_size, level_shapes[0], level_shapes[level]),
    )


def _check_tiff_data(path: str, pages: Any) -> None:
    """Refuse a TIFF whose tiles or strips lie beyond the end of the file, or that holds none."""
    file_size = os.path.getsize(path)
    total = 0
    for page in pages:
        if page is None:
            continue
        offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        counts = np.asarray(page.databytecounts, dtype=np.int64)
        total += int(counts.sum())
        if offsets.size and int((offsets + counts).max()) > file_size:
            raise InputError(
                f"TIFF {path!r} declares pixel data beyond the end of the file ({file_size} bytes): "
                "truncated or corrupt"
            )
    if total == 0:
        raise InputError(f"TIFF {path!r} holds no pixel data")


def _scaled_pixel_size(
    base: tuple[float, float] | None, base_shape: tuple[int, int], shape: tuple[int, int]
) -> tuple[float, float] | None:
    """Pixel size of a pyramid level from the full-resolution one and the shapes."""
    if base is None:
        return None
    return base[0] * base_shape[0] / shape[0], base[1] * base_shape[1] / shape[1]


#: Micrometres per unit, for OME-XML and OME-Zarr length units.
_MICROMETRES = {
    "m": 1e6, "meter": 1e6, "cm": 1e4, "centimeter": 1e4, "mm": 1e3, "millimeter": 1e3,
    "\u00b5m": 1.0, "\u03bcm": 1.0, "um": 1.0, "micrometer": 1.0, "micron": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "inch": 25400.0, "in": 25400.0,
}  # fmt: skip


def _tiff_pixel_size(tif: Any, page: Any) -> tuple[float, float] | None:
    """(Y, X) micrometres per pixel from OME-XML, an Aperio MPP, or the resolution tags."""
    if tif.is_ome and tif.ome_metadata:
        size = _ome_xml_pixel_size(tif.ome_metadata)
        if size is not None:
            return size
    if tif.is_svs:
        match = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", page.description)
        if match and float(match.group(1)) > 0:
            return float(match.group(1)), float(match.group(1))
    if int(page.resolutionunit) in (2, 3):  # inch, centimetre
        per_um_x, per_um_y = page.get_resolution("micrometer")
        if per_um_x > 0 and per_um_y > 0:
            return 1.0 / per_um_y, 1.0 / per_um_x
    return None


def _ome_xml_pixel_size(xml: str) -> tuple[float, float] | None:
    from xml.etree import ElementTree

    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib or "PhysicalSizeY" not in pixels.attrib:
        return None
    try:
        size_x = float(pixels.attrib["PhysicalSizeX"]) * _MICROMETRES[pixels.attrib.get("PhysicalSizeXUnit", "µm")]
        size_y = float(pixels.attrib["PhysicalSizeY"]) * _MICROMETRES[pixels.attrib.get("PhysicalSizeYUnit", "µm")]
    except (KeyError, ValueError):
        return None
    return (size_y, size_x) if size_x > 0 and size_y > 0 else None


def _tiff_has_alpha(page: Any, axes: str, shape: tuple[int, ...]) -> bool:
    channels = dict(zip(axes, shape, strict=True)).get("C", 1)
    extrasamples = tuple(getattr(page, "extrasamples", ()) or ())
    # ExtraSamples 1 (associated) and 2 (unassociated) are alpha; RGBA is 4 channels
    return channels in (2, 4) and any(int(v) in (1, 2) for v in extrasamples)


def _yx(axes: str, shape: tuple[int, ...]) -> tuple[int, int]:
    sizes = dict(zip(axes.upper(), shape, strict=True))
    return int(sizes["Y"]), int(sizes["X"])


# --- zarr / OME-Zarr --------------------------------------------------------------------


def _open_zarr_array(path: str, array_path: str) -> Any:
    import zarr

    return zarr.open_array(os.path.join(path, array_path) if array_path else path, mode="r")


def _zarr_source(path: str, level: int) -> _RegionReader:
    import zarr

    try:
        node = zarr.open(path, mode="r")
    except Exception as err:
        raise InputError(f"cannot open zarr store {path!r}: {err}") from err
    kind = "zarr"
    pixel_sizes: list[tuple[float, float] | None] = []
    if isinstance(node, zarr.Array):
        dataset_paths = [""]
        axes = _zarr_array_axes(node, path)
    else:
        attrs = node.attrs.asdict()
        ome = attrs.get("ome")
        multiscales = (ome if isinstance(ome, dict) else attrs).get("multiscales")
        if multiscales:
            kind = "ome-zarr"
            dataset_paths, axes, pixel_sizes = _ome_datasets(multiscales, path)
        else:
            names = sorted(name for name, _ in node.arrays())
            if len(names) != 1:
                found = f"arrays {names!r}" if names else "no arrays"
                raise InputError(
                    f"zarr group {path!r} has no OME-Zarr 'multiscales' metadata and {found}; "
                    "point at one array (e.g. PATH/NAME) instead"
                )
            dataset_paths = names
            axes = ""
    if level >= len(dataset_paths):
        raise InputError(f"--level {level} does not exist in {path!r}: it has {len(dataset_paths)} level(s)")
    try:
        arrays = [_open_zarr_array(path, p) for p in dataset_paths]
    except Exception as err:
        raise InputError(f"cannot open the arrays of zarr store {path!r}: {err}") from err
    chosen = arrays[level]
    if not axes:
        axes = _zarr_array_axes(chosen, path)
    if len(axes) != chosen.ndim:
        raise InputError(f"zarr {path!r}: metadata names {len(axes)} axes but the array has {chosen.ndim} dimensions")
    canonical = _canonical_axes(axes, chosen.shape, path)
    chunk_of = dict(zip(canonical, chosen.chunks, strict=True))
    return _RegionReader(
        path=path,
        kind=kind,
        open_native=functools.partial(_open_zarr_array, path, dataset_paths[level]),
        native_axes=canonical,
        native_shape=tuple(int(n) for n in chosen.shape),
        dtype=np.dtype(chosen.dtype),
        native_chunks=(int(chunk_of["Y"]), int(chunk_of["X"])),
        level_shapes=tuple(_yx(canonical, a.shape) for a in arrays),
        has_alpha=False,
        pixel_size=pixel_sizes[level] if pixel_sizes else None,
    )


def _ome_datasets(multiscales: Any, path: str) -> tuple[list[str], str, list[tuple[float, float] | None]]:
    """Dataset paths, axis letters and per-level (Y, X) pixel size in micrometres of a multiscale."""
    try:
        first = multiscales[0]
        dataset_paths = [str(d["path"]) for d in first["datasets"]]
        axes_meta = first.get("axes") or []
        axes = "".join(str(a["name"] if isinstance(a, dict) else a)[0].upper() for a in axes_meta)
        pixel_sizes = [_ome_pixel_size(axes_meta, first, d) for d in first["datasets"]]
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise InputError(f"OME-Zarr {path!r} has malformed 'multiscales' metadata: {err!r}") from err
    if not dataset_paths:
        raise InputError(f"OME-Zarr {path!r} lists no datasets in its 'multiscales' metadata")
    return dataset_paths, axes, pixel_sizes


def _ome_pixel_size(
    axes_meta: list[Any], multiscale: dict[str, Any], dataset: dict[str, Any]
) -> tuple[float, float] | None:
    """(Y, X) micrometres per pixel of one dataset: its scale times the multiscale's, in the axes' units."""
    names = [str(a.get("name", "")).lower() if isinstance(a, dict) else str(a).lower() for a in axes_meta]
    if "y" not in names or "x" not in names:
        return None
    scale = [1.0] * len(names)
    for transforms in (dataset.get("coordinateTransformations"), multiscale.get("coordinateTransformations")):
        for transform in transforms or []:
            if transform.get("type") == "scale":
                scale = [a * float(b) for a, b in zip(scale, transform["scale"], strict=True)]
    sizes = []
    for axis in ("y", "x"):
        meta = axes_meta[names.index(axis)]
        unit = meta.get("unit") if isinstance(meta, dict) else None
        if unit not in _MICROMETRES:
            return None
        sizes.append(scale[names.index(axis)] * _MICROMETRES[unit])
    return sizes[0], sizes[1]


def _zarr_array_axes(array: Any, path: str) -> str:
    names = getattr(array.metadata, "dimension_names", None)
    if names and all(names):
        return "".join(str(n)[0].upper() for n in names)
    if array.ndim == 2:
        return "YX"
    if array.ndim == 3:
        return "YXC" if array.shape[2] <= 4 or array.shape[0] > 4 else "CYX"
    raise InputError(
        f"zarr array {path!r} has {array.ndim} dimensions and no dimension_names; expected (Y, X) or (Y, X, C)"
    )


# --- PNG / JPEG --------------------------------------------------------------------------


class _DecodedPlain:
    """A small PNG/JPEG decoded on first use (once per process)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __getitem__(self, key: Any) -> np.ndarray:
        return _decode_plain(self.path)[key]


@functools.lru_cache(maxsize=4)
def _decode_plain(path: str) -> np.ndarray:
    import imagecodecs

    pixels = np.asarray(imagecodecs.imread(path))
    return pixels if pixels.ndim == 3 else pixels[..., np.newaxis]


def _plain_source(path: str, level: int) -> _RegionReader:
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        with PILImage.open(path) as pil:
            width, height = pil.size
            mode = pil.mode
            fmt = (pil.format or Path(path).suffix.lstrip(".")).lower()
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(f"cannot read image {path!r}: {err}") from err
    if level != 0:
        raise InputError(f"--level {level} does not exist in {path!r}: PNG/JPEG files have 1 level")
    if width * height > MAX_PLAIN_PIXELS:
        raise InputError(
            f"image {path!r} is {width}x{height} pixels, too large to decode whole "
            f"(limit {MAX_PLAIN_PIXELS // 2**20} Mpx; PNG/JPEG cannot be read a tile at a time); convert it to a "
            "tiled pyramidal TIFF first, e.g. `vips tiffsave IN OUT.tif --tile --pyramid --bigtiff --compression zstd` "
            "or `gdal_translate -co TILED=YES -co BIGTIFF=YES IN OUT.tif`, then run pixseg on that"
        )
    try:
        sample = _decode_plain(path)
    except Exception as err:
        raise InputError(f"cannot decode image {path!r}: {err}") from err
    if sample.shape[:2] != (height, width):
        raise InputError(f"image {path!r} decodes to {sample.shape!r}, not the declared {height}x{width}")
    has_alpha = sample.shape[2] in (2, 4) and mode != "CMYK"
    return _RegionReader(
        path=path,
        kind="jpeg" if fmt in ("jpeg", "jpg", "mpo") else "png",
        open_native=functools.partial(_DecodedPlain, path),
        native_axes="YXC",
        native_shape=sample.shape,
        dtype=sample.dtype,
        native_chunks=(min(DEFAULT_CHUNK, height), min(DEFAULT_CHUNK, width)),
        level_shapes=((height, width),),
        has_alpha=has_alpha,
    )


def describe_chunks(image: Image) -> str:
    """One line describing the native and processing chunking of ``image``."""
    py, px = image.data.chunksize[:2]
    n_chunks = math.prod(image.data.numblocks[:2])
    return f"native tiles {image.native_chunks[0]}x{image.native_chunks[1]}, processing chunks {py}x{px} ({n_chunks})"
