"""Which part of a file is read: the series (``--series``), the Z/T plane (``--plane``), the channels.

A file may hold several images (series: the images of a multi-image OME-TIFF, the slide, label
and macro of an SVS, the series groups of a bioformats2raw store). pixseg reads one: the first,
or ``--series N``. An image may be a stack of Z or T planes; pixseg segments one 2-D plane, so a
stack is refused unless ``--plane z=K,t=K`` picks one. ``--channels`` keeps some channels only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pixseg.errors import InputError

logger = logging.getLogger(__name__)

#: The stack axes ``--plane`` picks from, lower case.
PLANE_AXES = ("z", "t")
_CHANNEL_AXES = ("C", "S")


@dataclass(frozen=True)
class Selection:
    """Which series, plane and channels of a file are read.

    Attributes
    ----------
    series : int or None
        Index of the series; None: the first.
    plane : dict of str to int
        Index of the plane on each stack axis (``{"z": 3}``); axes not named must have length 1.
    channels : tuple of int or None
        Channels kept, in this order; None: all of them.
    """

    series: int | None = None
    plane: dict[str, int] = field(default_factory=dict)
    channels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.series is not None and self.series < 0:
            raise InputError(f"--series must be >= 0, got {self.series!r}")
        object.__setattr__(self, "plane", check_plane(self.plane))
        if self.channels is not None and (not self.channels or min(self.channels) < 0):
            raise InputError(f"--channels must list channel indices >= 0, got {self.channels!r}")


@dataclass(frozen=True)
class SeriesInfo:
    """One image of a file, as ``pixseg info`` lists it: index, name, shape and axis letters."""

    index: int
    name: str
    shape: tuple[int, ...]
    axes: str

    def describe(self) -> str:
        """``0 'name': 2x512x512 (ZYX)``."""
        return f"{self.index} {self.name!r}: {'x'.join(str(n) for n in self.shape)} ({self.axes})"


def check_plane(plane: Mapping[str, int] | None) -> dict[str, int]:
    """``plane`` with lower-case axis names, checked: axes z or t, indices integers >= 0.

    Raises
    ------
    InputError
        Naming the axis or index that is wrong.
    """
    checked: dict[str, int] = {}
    for axis, index in (plane or {}).items():
        name = str(axis).lower()
        if name not in PLANE_AXES:
            raise InputError(f"--plane axis {axis!r} is unknown; expected {' or '.join(PLANE_AXES)} (e.g. z=0,t=0)")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise InputError(f"--plane {name} must be an integer >= 0, got {index!r}")
        checked[name] = index
    return checked


def choose_series(path: str, names: Sequence[str], wanted: int | None) -> int:
    """The index of the series to read, of those named ``names``: ``wanted``, or the first (said in
    one log line when there are more).

    Raises
    ------
    InputError
        If ``wanted`` does not exist; the message says how many series there are.
    """
    if wanted is None:
        if len(names) > 1:
            logger.info(
                "input %s holds %d series; reading series 0 %r (pick another with --series N)",
                path,
                len(names),
                names[0],
            )
        return 0
    if wanted >= len(names):
        raise InputError(
            f"--series {wanted} does not exist in {path!r}: it has {len(names)} series "
            f"(0 to {len(names) - 1}; `pixseg info` lists them)"
        )
    return wanted


def canonical_axes(axes: str, shape: tuple[int, ...], path: str, plane: Mapping[str, int] | None = None) -> str:
    """Rename a file's axes to Y, X, C, Z/T for a stack axis read at one plane, ``_`` for others of length 1.

    Parameters
    ----------
    axes : str
        One letter a native axis.
    shape : tuple of int
        The native shape.
    path : str
        The input, named in messages.
    plane : mapping of str to int, optional
        The plane picked on each stack axis (checked with :func:`check_plane`).

    Raises
    ------
    InputError
        If a Z or T axis longer than 1 has no plane picked (the message says how many planes there
        are and how to pick one), a picked plane does not exist, another axis than Y, X and one
        channel axis is longer than 1, or Y or X is missing.
    """
    plane = plane or {}
    out = ""
    for axis, size in zip(axes.upper(), shape, strict=True):
        if axis in ("Y", "X"):
            out += axis
        elif axis in _CHANNEL_AXES and "C" not in out:
            out += "C"
        elif axis.lower() in PLANE_AXES and (size > 1 or axis.lower() in plane):
            out += _plane_axis(axis, size, plane.get(axis.lower()), path)
        elif size == 1:
            out += "_"
        else:
            raise InputError(
                f"input {path!r} has axes {axes!r} with shape {tuple(shape)!r}: {axis!r} of length {size} "
                "is not supported; pixseg segments one 2-D plane with channels (Y, X, C)"
            )
    for name, index in plane.items():
        if name.upper() not in axes.upper() and index > 0:
            raise InputError(f"--plane {name}={index} does not exist in {path!r}: it has no {name.upper()} axis")
    if "Y" not in out or "X" not in out:
        raise InputError(f"input {path!r} has axes {axes!r}; expected Y and X axes")
    return out


def _plane_axis(axis: str, size: int, index: int | None, path: str) -> str:
    """``axis`` when ``index`` picks one of its ``size`` planes; else why not, in one line."""
    name = axis.lower()
    if index is None:
        raise InputError(
            f"input {path!r} holds {size} {axis} planes; a stack is not supported; pixseg segments one 2-D "
            f"plane: pick it with --plane {name}=K (K from 0 to {size - 1})"
        )
    if index >= size:
        raise InputError(f"--plane {name}={index} does not exist in {path!r}: it has {size} {axis} plane(s)")
    return axis


def yx(axes: str, shape: tuple[int, ...]) -> tuple[int, int]:
    """(Y, X) sizes of an array with the given axis letters."""
    sizes = dict(zip(axes.upper(), shape, strict=True))
    return int(sizes["Y"]), int(sizes["X"])
