"""Preview images: display RGB of an input thumbnail, coloured label maps and overlays (pure numpy).

Label 0 (masked) is transparent in the label map and the overlay.
"""

from __future__ import annotations

import numpy as np

from pixseg.colours import colour_lookup


def thumbnail_step(shape: tuple[int, int], *, max_side: int = 1024) -> int:
    """Stride that brings the long side of ``shape`` to at most ``max_side``."""
    return max(1, -(-max(shape) // max_side))


def display_rgb(pixels: np.ndarray, *, n_colour: int) -> np.ndarray:
    """An (h, w, 3) uint8 view of an (h, w, C) thumbnail for humans.

    The first ``n_colour`` channels are used (alpha dropped): three as RGB, otherwise the first as
    grey. uint8 is shown as is; other dtypes are stretched between their 0.5 and 99.5 percentiles.
    NaN shows black.
    """
    colour = pixels[..., :n_colour]
    colour = colour[..., :3] if n_colour >= 3 else colour[..., :1]
    if colour.dtype != np.uint8:
        values = colour.astype(np.float64)
        finite = values[np.isfinite(values)]
        low, high = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
        scaled = (values - low) / (high - low if high > low else 1.0)
        colour = np.round(np.clip(np.nan_to_num(scaled), 0, 1) * 255).astype(np.uint8)
    return np.repeat(colour, 3, axis=-1) if colour.shape[-1] == 1 else colour


def colour_labels(labels: np.ndarray, colours: list[tuple[int, int, int, int]]) -> np.ndarray:
    """(h, w, 4) uint8 RGBA label map in the labels' display ``colours`` (of labels 1..K);
    label 0 (masked) is transparent."""
    return colour_lookup(colours, max(len(colours) + 1, int(labels.max(initial=0)) + 1))[labels]


def overlay(rgb: np.ndarray, coloured: np.ndarray, labels: np.ndarray, *, opacity: float = 0.45) -> np.ndarray:
    """(h, w, 4) uint8: a coloured label map (RGB or RGBA) blended over an (h, w, 3) image of the
    same (h, w); label 0 (masked) is transparent."""
    blended = rgb.astype(np.float32) * (1 - opacity) + coloured[..., :3].astype(np.float32) * opacity
    alpha = np.where(labels > 0, 255, 0).astype(np.uint8)
    return np.dstack([np.round(blended).astype(np.uint8), alpha])
