"""Deterministic display colours for labels."""

from __future__ import annotations

import colorsys

#: A qualitative palette (Okabe-Ito, colour-blind safe) for the first labels.
_BASE = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (120, 120, 120),
)


def label_colours(n_labels: int) -> list[tuple[int, int, int, int]]:
    """RGBA colours (0-255) for labels 1..``n_labels``: the palette, then golden-ratio hues."""
    colours = [(*rgb, 255) for rgb in _BASE[:n_labels]]
    for i in range(len(colours), n_labels):
        hue = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.65 + 0.35 * (i % 2), 0.95 - 0.3 * ((i // 2) % 2))
        colours.append((round(r * 255), round(g * 255), round(b * 255), 255))
    return colours
