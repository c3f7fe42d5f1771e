"""When an input's layout makes direct reading slow or memory-hungry, so that converting it pays."""

from __future__ import annotations

from pixseg.io.readers import DEFAULT_CHUNK, Image

#: Striped or untiled inputs above this many pixels are converted before segmenting when their strips are large.
CONVERT_ABOVE_PIXELS = 100 * 2**20
#: Strips up to this many pixels are read directly: processing chunks are then full-width bands of
#: whole strips, so each strip is decoded once per pass and shared by the whole band (measured as fast
#: as the same pixels tiled, see benchmarks/RESULTS.md); a larger strip would be a processing chunk
#: of its own, too large for bounded memory.
STRIP_CONVERT_ABOVE_PIXELS = 4 * DEFAULT_CHUNK**2
#: Tiles or chunks whose edge is outside this range are far from the processing chunk: tiny tiles
#: make per-tile overhead dominate, huge ones are decoded again for every processing chunk they hold.
TILE_RANGE = (64, 4 * DEFAULT_CHUNK)
#: Images below this many pixels are never converted for their tiling alone.
TILED_CONVERT_ABOVE_PIXELS = 16 * 2**20


def conversion_reason(image: Image) -> str | None:
    """Why ``image`` should be converted to a chunked OME-Zarr before processing, or None.

    Reasons: strips (or one untiled block) of more than ``STRIP_CONVERT_ABOVE_PIXELS`` spanning
    whole rows of a large image, each of which would be one huge processing chunk (smaller strips
    are read directly, in full-width bands that decode each strip once per pass); tiles or chunks
    much smaller or larger than the ~1024 px processing chunk (many tiny tasks, or huge reads for
    each small one).
    """
    height, width = image.shape[:2]
    tile_y, tile_x = image.native_chunks
    pixels = height * width
    if image.kind in ("png", "jpeg"):
        return None  # decoded whole once; converting would decode it again
    if tile_x >= width:
        if pixels > CONVERT_ABOVE_PIXELS and tile_y * width > STRIP_CONVERT_ABOVE_PIXELS:
            return f"strips of {tile_y} full rows in a {pixels / 2**20:.0f} Mpx image"
        return None
    smallest, largest = min(tile_y, tile_x), max(tile_y, tile_x)
    far = smallest < TILE_RANGE[0] or largest > TILE_RANGE[1]
    if tile_x < width and far and pixels > TILED_CONVERT_ABOVE_PIXELS:
        return f"tiles of {tile_y}x{tile_x} px, far from the {DEFAULT_CHUNK} px processing chunk"
    return None
