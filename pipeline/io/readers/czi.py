"""Zeiss CZI through pylibCZIrw (Zeiss's own libCZI; ``pip install 'pixseg-ooc[czi]'``).

A CZI holds scenes (the series ``--series`` picks) and planes on its C, Z and T dimensions. Every
channel is read, in order, as channels of the image: grey channels (Gray8, Gray16, Gray32Float)
as one each, a colour channel (Bgr24, Bgr48) as three, turned from the file's BGR to RGB; all the
channels of a file must have one dtype. Z and T stacks need ``--plane`` as any stack does. Only
full resolution is read (``--level 0``): libCZI resamples its pyramid on request rather than
storing levels pixseg could read exactly. Regions between the tiles of a mosaic read as 0. The
pixel size is the ``Scaling`` distance of X and Y in the document's metadata (metres), else unknown.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from pixseg.errors import InputError
from pixseg.io.readers._base import DEFAULT_CHUNK, RegionReader, read_head
from pixseg.io.readers.selection import Selection, SeriesInfo, canonical_axes, choose_series
from pixseg.optional import import_optional

CZI_SUFFIXES = (".czi",)
#: What libCZI raises for a damaged file (a short read, a bad segment); OSError for an unreadable one.
CZI_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, OSError)
#: Each libCZI pixel type: its numpy dtype and whether it is BGR colour.
_PIXEL_TYPES = {
    "Gray8": (np.uint8, False),
    "Gray16": (np.uint16, False),
    "Gray32Float": (np.float32, False),
    "Bgr24": (np.uint8, True),
    "Bgr48": (np.uint16, True),
}


def sniff_czi(path: str) -> bool:
    """Whether the file at ``path`` starts like a CZI (``ZISRAWFILE``)."""
    return read_head(path, 10) == b"ZISRAWFILE"


def czi_series(path: str) -> tuple[SeriesInfo, ...]:
    """Every scene of the CZI at ``path`` as a series (YXC), or empty when it has one scene or none.

    Raises
    ------
    InputError
        If the file is damaged, or pylibCZIrw is not installed.
    """
    with _reader(path) as reader:
        scenes = _scenes(reader)
        channels = _channels(path, reader)[1]
    if len(scenes) < 2:
        return ()
    return tuple(SeriesInfo(i, f"scene {i}", (rect.h, rect.w, channels), "YXC") for i, rect in enumerate(scenes))


def open_czi(path: str, level: int, max_bytes: int, select: Selection) -> RegionReader:
    """Region reader over scene ``select.series`` (default 0) of a CZI, at the plane ``select.plane`` picks.

    ``max_bytes`` is not checked: libCZI decodes whole subblocks, which pylibCZIrw does not size.

    Raises
    ------
    InputError
        If the file is damaged, pylibCZIrw is missing, the scene, plane or ``level`` does not exist,
        a Z or T stack has no plane picked, or its channels differ in dtype.
    """
    with _reader(path) as reader:
        scenes = _scenes(reader)
        scene = choose_series(path, [f"scene {i}" for i in range(len(scenes))] or ["image"], select.series)
        if level != 0:
            raise InputError(f"--level {level} does not exist in {path!r}: pixseg reads a CZI at level 0 only")
        box = reader.total_bounding_box
        rect = scenes[scene] if scenes else reader.total_bounding_rectangle
        dtype, n_channels = _channels(path, reader)
        pixel_size = _pixel_size(reader.metadata)
    sizes = {axis: box.get(axis, (0, 1))[1] - box.get(axis, (0, 1))[0] for axis in "TZ"}
    shape = (sizes["T"], sizes["Z"], rect.h, rect.w, n_channels)
    canonical_axes("TZYXC", shape, path, select.plane)
    plane = {axis.upper(): box.get(axis.upper(), (0, 1))[0] + select.plane.get(axis, 0) for axis in ("z", "t")}
    return RegionReader(
        path=path,
        kind="czi",
        open_native=functools.partial(
            CziPlane, path, (rect.x, rect.y, rect.w, rect.h), plane, scene if scenes else None
        ),
        native_axes="YXC",
        native_shape=(rect.h, rect.w, n_channels),
        dtype=dtype,
        native_chunks=(min(DEFAULT_CHUNK, rect.h), min(DEFAULT_CHUNK, rect.w)),
        level_shapes=((rect.h, rect.w),),
        has_alpha=False,
        decode_errors=CZI_ERRORS,
        pixel_size=pixel_size,
        reader="pylibCZIrw",
        flavour="",
    )


class CziPlane:
    """One Z/T plane of a CZI scene as an array of shape (Y, X, C), every channel of the file.

    Parameters
    ----------
    path : str
        The CZI file.
    rect : (int, int, int, int)
        The scene's (x, y, width, height) in the file's pixel coordinates.
    plane : dict of str to int
        The Z and T coordinates read.
    scene : int or None
        The scene read, or None for a file without scenes.
    """

    def __init__(self, path: str, rect: tuple[int, int, int, int], plane: dict[str, int], scene: int | None) -> None:
        import pylibCZIrw.czi as pyczi

        self._reader = pyczi.CziReader(path)
        self._x, self._y, width, height = rect
        self._plane = plane
        self._scene = scene
        self._colour = [_PIXEL_TYPES[kind][1] for _, kind in sorted(self._reader.pixel_types.items())]
        self.shape = (height, width, sum(3 if colour else 1 for colour in self._colour))
        self._lock = threading.Lock()  # libCZI's reader is not documented thread-safe

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        ys, xs, cs = key
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        roi = (self._x + x0, self._y + y0, max(0, x1 - x0), max(0, y1 - y0))
        parts = []
        with self._lock:
            for channel, colour in enumerate(self._colour):
                part = self._reader.read(roi=roi, plane={**self._plane, "C": channel}, scene=self._scene)
                parts.append(part[..., ::-1] if colour else part)
        return np.concatenate(parts, axis=-1)[:, :, cs]

    def __del__(self) -> None:
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.close()


@contextlib.contextmanager
def _reader(path: str) -> Iterator[Any]:
    """A pylibCZIrw reader of ``path``, closed afterwards; its failures to open as InputError naming the file."""
    pyczi = import_optional("pylibCZIrw.czi", extra="czi", needed_for=f"CZI files such as {path!r}")
    try:
        reader = pyczi.CziReader(path)
    except CZI_ERRORS as err:
        raise InputError(f"cannot read CZI {path!r}: {err}") from err
    try:
        yield reader
    finally:
        reader.close()


def _scenes(reader: Any) -> list[Any]:
    """The scenes' bounding rectangles in scene order (empty for a file without scenes)."""
    rectangles = reader.scenes_bounding_rectangle
    return [rectangles[index] for index in sorted(rectangles)]


def _channels(path: str, reader: Any) -> tuple[np.dtype, int]:
    """The dtype shared by every channel, and the number of image channels they make.

    Raises
    ------
    InputError
        If a channel has a pixel type pixseg does not read, or the channels differ in dtype.
    """
    kinds = [kind for _, kind in sorted(reader.pixel_types.items())]
    unknown = [kind for kind in kinds if kind not in _PIXEL_TYPES]
    if unknown or not kinds:
        raise InputError(
            f"CZI {path!r} has pixel type {unknown[0] if unknown else 'none'!r}; pixseg reads {', '.join(_PIXEL_TYPES)}"
        )
    dtypes = {np.dtype(_PIXEL_TYPES[kind][0]) for kind in kinds}
    if len(dtypes) > 1:
        raise InputError(f"CZI {path!r} mixes channel pixel types {kinds!r}; pick channels of one type")
    return dtypes.pop(), sum(3 if _PIXEL_TYPES[kind][1] else 1 for kind in kinds)


def _pixel_size(metadata: dict[str, Any]) -> tuple[float, float] | None:
    """(Y, X) micrometres per pixel from the document's ``Scaling`` distances (metres), or None."""
    try:
        items = metadata["ImageDocument"]["Metadata"]["Scaling"]["Items"]["Distance"]
    except (KeyError, TypeError):
        return None
    distances = items if isinstance(items, list) else [items]
    metres = {}
    for item in distances:
        try:
            metres[item.get("@Id")] = float(item.get("Value"))
        except (TypeError, ValueError):
            continue
    sizes = (metres.get("Y", 0.0) * 1e6, metres.get("X", 0.0) * 1e6)
    return sizes if all(size > 0 and np.isfinite(size) for size in sizes) else None
