"""Channel scaling: the input range each channel maps to (0, 1) before features are computed.

The dtype's full range (8-bit inputs), or robust percentiles of a sample (other inputs), with
checks that float32 features keep the steps between a channel's values; scaling itself is done
in float64 for float inputs so huge values or ranges neither overflow nor collapse.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from pixseg.errors import InputError

#: 8-bit inputs of at most this many channels are scaled through OpenCV's table lookup (OpenCV 5
#: refuses 256 channels and more).
_LOOKUP_CHANNELS = 4


def dtype_range(dtype: np.dtype) -> tuple[float, float]:
    """(low, high) mapped to (0, 1): the full range of an integer dtype, (0, 1) for floats."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return 0.0, 1.0


def scaled_channels(colour: np.ndarray, ranges: Sequence[tuple[float, float]]) -> np.ndarray:
    """``colour`` mapped so that each channel's (low, high) range becomes (0, 1), float32.

    Float inputs are scaled in float64, so neither a huge value nor a huge or tiny range overflows
    or loses the steps between values before the result is rounded to float32. 8-bit inputs are
    scaled by one lookup in :func:`channel_levels`' table (OpenCV), with the same results.
    """
    n_channels = colour.shape[-1]
    if colour.dtype == np.uint8 and n_channels <= _LOOKUP_CHANNELS and colour.size:  # OpenCV returns None for no pixels
        import cv2  # imported on first use: --help must not pay for it

        levels = channel_levels(colour.dtype, tuple((float(low), float(high)) for low, high in ranges))
        pixels = colour.reshape(-1, 1, n_channels)  # OpenCV takes images of at most 2 axes and channels
        return cv2.LUT(pixels, levels.T.reshape(1, -1, n_channels)).reshape(colour.shape)
    if not np.issubdtype(colour.dtype, np.floating):
        return _scaled_integers(colour, ranges)
    lows64 = np.array([low for low, _ in ranges], dtype=np.float64)
    spans = np.array([high - low for low, high in ranges], dtype=np.float64)
    exact = (colour.astype(np.float64) - lows64) / spans
    with np.errstate(over="ignore"):
        scaled = exact.astype(np.float32)
    overflow = np.isinf(scaled) & np.isfinite(exact)
    if overflow.any():
        values = colour[overflow]
        extreme = values[int(np.argmax(np.abs(values)))]
        raise InputError(
            f"the input holds the value {float(extreme):.8g}, which lies too far outside the channel ranges "
            f"{tuple(ranges)!r} for float32 features; if it marks missing data, pass --nodata {float(extreme):.8g}"
        )
    return scaled


@functools.cache
def channel_levels(dtype: np.dtype, ranges: tuple[tuple[float, float], ...]) -> np.ndarray:
    """The scaled value of every level of an 8- or 16-bit unsigned integer dtype, per channel.

    Returns
    -------
    numpy.ndarray
        Shape (C, N), float32, read-only, N = 256 or 65,536: row ``c`` is :func:`scaled_channels`
        of the values 0..N-1 in channel ``c`` (computed by the same formula).
    """
    levels = np.arange(np.iinfo(dtype).max + 1, dtype=dtype)[:, np.newaxis]
    table = np.ascontiguousarray(_scaled_integers(levels, ranges).T)
    table.flags.writeable = False
    return table


def _scaled_integers(colour: np.ndarray, ranges: Sequence[tuple[float, float]]) -> np.ndarray:
    lows = np.array([low for low, _ in ranges], dtype=np.float32)
    inverse_spans = np.array([1.0 / (high - low) for low, high in ranges], dtype=np.float32)
    return (colour.astype(np.float32) - lows) * inverse_spans


def robust_channel_ranges(
    sample: np.ndarray, *, percentiles: tuple[float, float] = (0.5, 99.5), rgb: bool = False
) -> tuple[tuple[float, float], ...]:
    """Per-channel (low, high) input values at the given percentiles of a sample.

    Parameters
    ----------
    sample : numpy.ndarray
        Shape (n, C): raw channel values of valid pixels, n >= 1.
    percentiles : (float, float)
        Lower and upper percentile, 0 <= low < high <= 100.
    rgb : bool
        Keep black at 0 and use one white point for the three channels (the largest upper
        percentile): a global gain that keeps the colour balance, so that colour conversions (lab,
        hsv, hed) keep their meaning (a per-channel stretch would create colour, e.g. eosin, where
        there is none).

    Returns
    -------
    tuple of (float, float)
        One range per channel; a channel whose percentiles coincide gets ``(low, low + 1)``, or
        ``(low, low + |low| * 2**-23)`` (one float32 step) where ``low + 1`` rounds to ``low``.

    Raises
    ------
    InputError
        If a channel's range is so wide that all its values but the most extreme one, which
        differ, would get the same float32 feature (typically a nodata sentinel such as -3.4e38
        in more than ``percentiles[0]`` percent of the pixels); the message names that value.
    """
    values = np.asarray(sample, dtype=np.float64)
    low, high = np.percentile(values, percentiles, axis=0)
    ranges = tuple((float(lo), _upper_bound(float(lo), float(hi))) for lo, hi in zip(low, high, strict=True))
    _check_resolution(values, ranges)
    if rgb:
        white = float(high.max())
        ranges = tuple((0.0, _upper_bound(0.0, white)) for _ in ranges)
        _check_resolution(values, ranges)
    return ranges


def _upper_bound(low: float, high: float) -> float:
    """``high``, or the top of a non-empty range starting at ``low`` when the percentiles coincide."""
    if high > low:
        return high
    return low + 1.0 if low + 1.0 > low else low + abs(low) * 2.0**-23


def _check_resolution(values: np.ndarray, ranges: Sequence[tuple[float, float]]) -> None:
    """Refuse channel ranges under which every value of a channel but its most extreme one gets
    the same float32 feature, although they differ (see :func:`robust_channel_ranges`)."""
    for channel, (low, high) in enumerate(ranges):
        column = values[:, channel]
        extreme = column[int(np.argmax(np.abs(column - np.median(column))))]
        rest = column[column != extreme]
        if rest.size == 0 or rest.min() == rest.max():
            continue
        scaled = ((np.array([rest.min(), rest.max()]) - low) / (high - low)).astype(np.float32)
        if scaled[0] == scaled[1]:
            raise InputError(
                f"channel {channel} of the input spans {low:.8g} to {high:.8g}, so its other values "
                f"({rest.min():.8g} to {rest.max():.8g}) all get the same float32 feature; if {extreme:.8g} "
                f"marks missing data, pass --nodata {extreme:.8g}"
            )
