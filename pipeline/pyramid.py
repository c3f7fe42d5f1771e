"""Label pyramids: the shape of every level (each level is every second pixel of the one above)."""

from __future__ import annotations

#: Coarsest level: the long side is at most this many pixels.
PYRAMID_MIN_SIDE = 1024


def pyramid_shapes(shape: tuple[int, int], *, min_side: int = PYRAMID_MIN_SIDE) -> list[tuple[int, int]]:
    """(Y, X) of every level, halving until the long side is at most ``min_side``.

    Level ``n + 1`` is level ``n`` taken every second row and column, so its size is
    ``ceil(size / 2)``.
    """
    shapes = [(int(shape[0]), int(shape[1]))]
    while max(shapes[-1]) > min_side:
        height, width = shapes[-1]
        shapes.append(((height + 1) // 2, (width + 1) // 2))
    return shapes
