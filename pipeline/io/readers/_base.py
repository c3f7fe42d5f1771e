"""What every format module builds on: the picklable region reader and the checks every format makes."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from pixseg.errors import InputError
from pixseg.io.remote import is_url, read_bytes

logger = logging.getLogger(__name__)

#: Target edge of a processing chunk, in pixels (about 1 Mpx per chunk).
DEFAULT_CHUNK = 1024


class RegionReader:
    """Picklable array-like yielding (Y, X, C) regions of a native array opened on first use.

    Parameters
    ----------
    path : str
        The input, named in error messages.
    kind : str
        The :attr:`Image.kind` it reads (``"tiff"``, ``"zarr"``, ``"ome-zarr"``, ``"png"``, ``"jpeg"``).
    open_native : callable
        Module-level function (picklable) returning an object with ``__getitem__`` over the
        native axes, e.g. a zarr array.
    native_axes : str
        One letter a native axis: Y, X, C (channels), Z or T (a stack axis read at the plane
        ``plane`` picks), or any other letter for an axis of length 1 that is dropped.
    decode_errors : tuple of exception types
        What the format's decoder raises for a corrupt file; reading a region turns these,
        and only these, into :class:`~pixseg.errors.InputError` naming the file.
    pixel_size : (float, float), optional
        (Y, X) micrometres per pixel, when the file says.
    colormap : numpy.ndarray, optional
        Shape (N, 3): the colour of each index of a one-channel palette image. Regions are then
        read as RGB through it, in its dtype.
    nodata : float, optional
        The value the file declares as "no data" (GDAL_NODATA); informative: pixels are marked
        invalid only on the reader :meth:`marking_nodata` returns.
    plane : mapping of str to int, optional
        The index read on each stack axis (``{"z": 3}``); other dropped axes are read at 0.
    reader : str
        The library that decodes the file (``tifffile``, ``zarr``, ``imagecodecs``), for ``pixseg info``.
    flavour : str
        What the format's metadata says the file is (``ome``, ``svs``, ``ndpi``...), or empty.
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
        decode_errors: tuple[type[BaseException], ...],
        pixel_size: tuple[float, float] | None = None,
        colormap: np.ndarray | None = None,
        nodata: float | None = None,
        plane: Mapping[str, int] | None = None,
        reader: str = "",
        flavour: str = "",
    ) -> None:
        self.path = path
        self.kind = kind
        self._open_native = open_native
        self._axes = native_axes
        self._decode_errors = decode_errors
        self.dtype = np.dtype(dtype)
        self.native_chunks = native_chunks
        self.level_shapes = level_shapes
        self.has_alpha = has_alpha
        self.pixel_size = pixel_size
        self.colormap = colormap
        self.nodata = nodata
        self.plane = dict(plane or {})
        self.reader = reader
        self.flavour = flavour
        self._channels: list[int] | None = None
        sizes = dict(zip(native_axes, native_shape, strict=True))
        self.shape = (sizes["Y"], sizes["X"], sizes.get("C", 1))
        if colormap is not None:
            self.dtype = np.dtype(colormap.dtype)
            self.shape = (sizes["Y"], sizes["X"], 3)
        self.ndim = 3
        self._marked: Any = None  # the nodata value pixels are compared with, in ``dtype``
        self._added_alpha = False
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

    def marking_nodata(self, value: float) -> RegionReader:
        """A copy of this reader on which pixels whose colour channels all equal ``value`` are invalid.

        Float images get NaN in those pixels' colour channels. Integer images get alpha 0 there:
        in their alpha channel, or in an alpha channel added after the colour channels (the dtype's
        maximum elsewhere). A value the dtype cannot hold (a fraction, out of range, NaN: NaN pixels
        are invalid anyway) marks nothing and returns this reader itself.
        """
        if self.dtype.kind == "f":
            with np.errstate(over="ignore"):
                marked = self.dtype.type(value)
            if not np.isfinite(marked):
                return self
        else:
            info = np.iinfo(self.dtype)
            if not (math.isfinite(value) and value == int(value) and info.min <= value <= info.max):
                logger.info(
                    "nodata %r cannot occur in %s pixels of %r: nothing is marked", value, self.dtype, self.path
                )
                return self
            marked = self.dtype.type(int(value))
        reader = copy.copy(self)
        reader._marked = marked
        if self.dtype.kind != "f" and not self.has_alpha:
            reader._added_alpha = True
            reader.has_alpha = True
            reader.shape = (self.shape[0], self.shape[1], self.shape[2] + 1)
        return reader

    def selecting_channels(self, channels: tuple[int, ...]) -> RegionReader:
        """A copy of this reader that reads ``channels`` (of the file's, after any palette), in that order.

        The copy has an alpha channel only when the file has one and it is the last channel kept.

        Raises
        ------
        InputError
            If a channel does not exist.
        """
        n_channels = self.shape[2]
        missing = [c for c in channels if c >= n_channels]
        if missing:
            raise InputError(
                f"--channels {missing[0]} does not exist in {self.path!r}: it has {n_channels} channel(s) "
                f"(0 to {n_channels - 1})"
            )
        reader = copy.copy(self)
        reader._channels = list(channels)
        reader.has_alpha = self.has_alpha and channels[-1] == n_channels - 1
        reader.shape = (self.shape[0], self.shape[1], len(channels))
        return reader

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        ys, xs, cs = key
        if self.colormap is None and self._marked is None and self._channels is None:
            return self._read(ys, xs, cs)
        region = self._read(ys, xs, slice(None))
        if self.colormap is not None:
            region = np.take(self.colormap, region[..., 0], axis=0, mode="clip")
        if self._channels is not None:
            region = region[:, :, self._channels]
        if self._marked is not None:
            region = self._mark_nodata(region)
        return region[:, :, cs]

    def _mark_nodata(self, region: np.ndarray) -> np.ndarray:
        """``region`` (all channels) with the nodata pixels marked invalid (see :meth:`marking_nodata`)."""
        n_colour = region.shape[2] - int(self.has_alpha and not self._added_alpha)
        hit = (region[..., :n_colour] == self._marked).all(axis=-1)
        if self._added_alpha:
            alpha = np.where(hit, 0, np.iinfo(self.dtype).max).astype(self.dtype)
            return np.concatenate([region, alpha[..., np.newaxis]], axis=-1)
        region = np.array(region)  # the native array may hand out a cached or read-only buffer
        if self.dtype.kind == "f":
            region[hit, :n_colour] = np.nan
        else:
            region[hit, -1] = 0
        return region

    def _read(self, ys: slice, xs: slice, cs: slice) -> np.ndarray:
        """Region ``[ys, xs, cs]`` of the native array, axes (Y, X, C)."""
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
                native_key.append(self.plane.get(axis.lower(), 0))
                continue
            kept += axis
        try:
            region = np.asarray(self._array()[tuple(native_key)])
        except self._decode_errors as err:
            raise InputError(f"cannot decode input {self.path!r} at rows {ys}, columns {xs}: {err}") from err
        if "C" not in kept:
            region = region[..., np.newaxis]
            kept += "C"
        return region.transpose([kept.index(a) for a in "YXC"])


def check_decode_size(path: str, what: str, shape: tuple[int, ...], dtype: Any, max_bytes: int) -> None:
    """Refuse, before anything is decoded, a file whose unit of decoding is larger than ``max_bytes``.

    Parameters
    ----------
    path : str
        The input, named in the message.
    what : str
        The unit, worded to follow "decodes", e.g. ``"tiles"`` or ``"strips"``.
    shape : tuple of int
        Shape of one decoded unit (rows, columns and samples, any order).
    dtype : numpy.dtype
        Its dtype.
    max_bytes : int
        The memory budget of one unit (``--max-tile-memory``, in bytes).

    Raises
    ------
    InputError
        Naming the unit's size, its decoded bytes and the option that raises the budget.
    """
    size = math.prod(int(n) for n in shape) * np.dtype(dtype).itemsize
    if size > max_bytes:
        dims = "x".join(str(int(n)) for n in shape)
        raise InputError(
            f"input {path!r} decodes {what} of {dims} {np.dtype(dtype).name} values ({size / 2**20:,.0f} MB each), "
            f"more than --max-tile-memory {max_bytes // 2**20} MB (read.max_tile_memory) allows; raise it if this "
            "machine has the memory, or re-save the image tiled"
        )


@contextlib.contextmanager
def input_errors(what: str, errors: tuple[type[BaseException], ...], *, library: str) -> Iterator[None]:
    """Turn what ``library`` raises for a damaged input into :class:`~pixseg.errors.InputError`.

    Parameters
    ----------
    what : str
        Start of the message, naming the action and the path, e.g. ``"cannot read TIFF 'a.tif'"``.
    errors : tuple of exception types
        What the library raises for a damaged input (each format module names its tuple).
    library : str
        The library's top-level module. A TypeError raised inside a call into it means metadata
        of the wrong kind (a tag or key holding a list where one value belongs, an unknown field);
        raised in pixseg's own code it is a bug and propagates, as does every type not in ``errors``.
    """
    try:
        yield
    except InputError:
        raise
    except errors as err:
        raise InputError(f"{what}: {err}") from err
    except TypeError as err:
        if not _raised_in(err, library):
            raise
        raise InputError(f"{what}: malformed metadata ({err})") from err


def _raised_in(err: BaseException, library: str) -> bool:
    """Whether ``err`` was raised inside a call into ``library`` (in its code or code it calls),
    with no pixseg code running between that call and the raise (stdlib wrappers such as
    ``functools.cached_property`` may sit between pixseg and the library)."""
    modules = []
    frame = err.__traceback__
    while frame is not None:
        modules.append(str(frame.tb_frame.f_globals.get("__name__", "")))
        frame = frame.tb_next
    ours = [i for i, name in enumerate(modules) if name.partition(".")[0] == "pixseg"]
    after_ours = modules[ours[-1] + 1 :] if ours else modules
    return any(name.partition(".")[0] == library for name in after_ours)


def read_head(path: str, size: int) -> bytes:
    """The first ``size`` bytes of the file (or URL) at ``path``, or ``b""`` if it cannot be read
    (for content sniffing)."""
    if is_url(path):
        return read_bytes(path, limit=size) or b""
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError:  # unreadable here: the format's own reader reports why, by suffix
        return b""


def is_dicom_head(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes, at least 132) opens a DICOM Part 10 file: the
    128-byte preamble, then ``DICM``."""
    return head[128:132] == b"DICM"
