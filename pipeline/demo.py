"""A built-in demo input: a large tiled TIFF made from scikit-image's real IHC tissue photo."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tifffile

from pixseg.errors import OutputError, ParameterError
from pixseg.io.atomic import atomic_file

DEMO_TILE = 512


def write_demo_tiff(path: str, *, size: int) -> None:
    """Write a ``size`` x ``size`` RGB tiled TIFF tile by tile, never whole in memory.

    The image is scikit-image's immunohistochemistry photo (512 x 512, DAB and haematoxylin
    stained tissue) mirrored tile by tile, so neighbouring tiles meet seamlessly. Tiles are
    JPEG-compressed, as in most whole-slide scans.

    Parameters
    ----------
    path : str
        Destination ``.tif``; written under a unique temporary name, then renamed
        (see :func:`pixseg.io.atomic.atomic_file`).
    size : int
        Edge in pixels, at least 512.
    """
    if size < DEMO_TILE:
        raise ParameterError(f"--size must be at least {DEMO_TILE}, got {size!r}")
    from skimage.data import immunohistochemistry

    photo = np.ascontiguousarray(immunohistochemistry()[:DEMO_TILE, :DEMO_TILE])
    try:
        with atomic_file(path, "wb", fsync=False) as handle, tifffile.TiffWriter(handle, bigtiff=True) as writer:
            writer.write(
                _mirrored_tiles(photo, size),
                shape=(size, size, 3),
                dtype=np.uint8,
                tile=(DEMO_TILE, DEMO_TILE),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": 90},
                metadata=None,
            )
    except OSError as err:
        raise OutputError(f"cannot write demo input {path!r}: {err}") from err


def _mirrored_tiles(photo: np.ndarray, size: int) -> Iterator[np.ndarray]:
    variants = {
        (flip_y, flip_x): photo[:: -1 if flip_y else 1, :: -1 if flip_x else 1]
        for flip_y in (False, True)
        for flip_x in (False, True)
    }
    n_tiles = -(-size // DEMO_TILE)
    for row in range(n_tiles):
        for col in range(n_tiles):
            yield variants[(row % 2 == 1, col % 2 == 1)]
