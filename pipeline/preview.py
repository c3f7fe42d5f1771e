"""Preview images: display RGB of an input thumbnail, coloured label maps and overlays (pure numpy)."""

from __future__ import annotations

import numpy as np

from pixseg.colours import label_colours


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


def colour_labels(labels: np.ndarray, n_labels: int) -> np.ndarray:
    """(h, w, 3) uint8 label map in the labels' display colours; label 0 is black."""
    palette = np.zeros((n_labels + 1, 3), dtype=np.uint8)
    palette[1:] = np.array(label_colours(n_labels), dtype=np.uint8)[:, :3]
    return palette[labels]


def overlay(rgb: np.ndarray, coloured: np.ndarray, labels: np.ndarray, *, opacity: float = 0.45) -> np.ndarray:
    """Blend a coloured label map over an image of the same (h, w); label 0 stays unblended."""
    blended = rgb.astype(np.float32) * (1 - opacity) + coloured.astype(np.float32) * opacity
    out = np.where((labels > 0)[..., np.newaxis], blended, rgb.astype(np.float32))
    return np.round(out).astype(np.uint8)
