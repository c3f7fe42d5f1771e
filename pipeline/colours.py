"""Display colours of labels, decided once per output from the labels' mean input colours.

Clusters take the Okabe-Ito palette (colour-blind safe; M. Okabe and K. Ito, "Color Universal
Design", 2008, https://jfly.uni-koeln.de/color/), its black left out, in label order, then
golden-ratio hues. On a brightfield RGB image the cluster of the glass (see
:func:`background_label`) is light grey instead, so the colours left mark tissue. Masked pixels
(label 0) are transparent in previews and black in the TIFF palette.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np

#: Okabe-Ito without black: orange, sky blue, bluish green, yellow, blue, vermillion, reddish purple.
OKABE_ITO = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
)
#: The background (glass) cluster's colour: light grey, unlike any palette colour.
BACKGROUND_RGBA = (221, 221, 221, 255)
#: Masked pixels (label 0): transparent in previews (the TIFF palette gives them black).
MASKED_RGBA = (0, 0, 0, 0)
#: The background rule: every channel's mean at least this share of the full scale (204 of 255)...
BACKGROUND_MIN_LEVEL = 0.8
#: ... and a saturation (max - min) / max of the mean colour at most this.
BACKGROUND_MAX_SATURATION = 0.15

RGBA = tuple[int, int, int, int]


def label_colours(n_labels: int, *, background: int | None = None) -> list[RGBA]:
    """RGBA colours (0-255) of labels 1..``n_labels``.

    Parameters
    ----------
    n_labels : int
        K.
    background : int, optional
        The label of the background cluster (see :func:`background_label`): light grey
        (``BACKGROUND_RGBA``); the other labels take the palette in label order.

    Returns
    -------
    list of tuple of int
        K colours, label 1 first: the Okabe-Ito palette, then golden-ratio hues.
    """
    palette = iter(_palette(n_labels))
    return [BACKGROUND_RGBA if label == background else next(palette) for label in range(1, n_labels + 1)]


def _palette(n: int) -> list[RGBA]:
    """``n`` distinct saturated colours: Okabe-Ito, then golden-ratio hues."""
    colours: list[RGBA] = [(*rgb, 255) for rgb in OKABE_ITO[:n]]
    for i in range(len(colours), n):
        hue = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.65 + 0.35 * (i % 2), 0.95 - 0.3 * ((i // 2) % 2))
        colours.append((round(r * 255), round(g * 255), round(b * 255), 255))
    return colours


def background_label(mean_colours: np.ndarray, *, dtype: np.dtype) -> int | None:
    """The label of the glass of a brightfield RGB image, or None.

    A label is background when its mean colour is near white: every channel at least
    ``BACKGROUND_MIN_LEVEL`` of the dtype's full scale and a saturation ``(max - min) / max`` of
    at most ``BACKGROUND_MAX_SATURATION``. Of several such labels, the brightest (highest mean
    over channels) is the background; the others keep palette colours.

    Parameters
    ----------
    mean_colours : numpy.ndarray
        Shape (K, C): the mean colour of labels 1..K in the input's units, NaN for an empty label.
    dtype : numpy.dtype
        The input's dtype: only integer inputs have a known full scale.

    Returns
    -------
    int or None
        A label 1..K; None for inputs that are not 3-channel integer images, or when no label is
        near white.
    """
    if mean_colours.ndim != 2 or mean_colours.shape[1] != 3 or np.dtype(dtype).kind not in "ui":
        return None
    scaled = mean_colours / float(np.iinfo(dtype).max)
    with np.errstate(invalid="ignore", divide="ignore"):
        low, high = scaled.min(axis=1), scaled.max(axis=1)
        saturation = np.where(high > 0, (high - low) / high, 0.0)
        near_white = (low >= BACKGROUND_MIN_LEVEL) & (saturation <= BACKGROUND_MAX_SATURATION)
    if not near_white.any():
        return None
    brightness = np.where(near_white, scaled.mean(axis=1), -np.inf)
    return int(np.argmax(brightness)) + 1


def hex_colour(rgb: Sequence[float]) -> str:
    """``#rrggbb`` of an RGB colour in 0-255 (rounded, clipped)."""
    r, g, b = (int(min(255, max(0, round(float(v))))) for v in rgb[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def colour_lookup(colours: Sequence[Sequence[int]], size: int, *, masked: Sequence[int] = MASKED_RGBA) -> np.ndarray:
    """A (size, 4) uint8 table: entry 0 is ``masked``, entries 1..K the label ``colours``, the rest ``masked``.

    Indexing it with a label array gives the labels' colours.
    """
    table = np.zeros((size, 4), dtype=np.uint8)
    table[:] = masked
    table[1 : len(colours) + 1] = np.asarray(colours, dtype=np.uint8).reshape(-1, 4)
    return table
