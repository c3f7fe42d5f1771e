"""OME-Zarr (NGFF 0.5, zarr v3) multiscale images written by ``pixseg convert``, metadata last.

Arrays are stored (c, y, x) — NGFF requires channel axes before space axes — with
``dimension_names``; the reader turns them back into (Y, X, C). A converted image is marked
``pixseg.complete = True`` (and gets its OME metadata) only after every chunk of every level is written.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

from pixseg.errors import OutputError
from pixseg.options import CODECS


def _compressors(codec: str) -> Any:
    if codec == "zstd":
        return ZstdCodec(level=3)
    if codec == "lz4":
        return BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
    if codec == "zlib":
        return GzipCodec(level=6)
    if codec == "none":
        return None
    raise ValueError(f"codec {codec!r} is none of {CODECS}: options.ConvertOptions checks it first")


def create_image_zarr(
    path: str,
    *,
    shapes: list[tuple[int, int]],
    channels: int,
    chunks: tuple[int, int],
    dtype: np.dtype,
    codec: str,
    shard: int | None,
    attrs: dict[str, Any],
) -> list[zarr.Array]:
    """Create an empty, incomplete multiscale image group, one (C, Y, X) array per level.

    Parameters
    ----------
    path : str
        The ``.zarr`` directory to create (must not exist).
    shapes : list of tuple of int
        (Y, X) of each level, full resolution first; level ``n`` is stored at path ``str(n)``.
    channels : int
        C.
    chunks : tuple of int
        (Y, X) zarr chunks of every level (clipped to the level).
    dtype : numpy.dtype
        Pixel dtype.
    codec : str
        One of :data:`pixseg.options.CODECS`.
    shard : int or None
        With zarr v3 sharding, chunks per shard edge (a shard holds ``shard x shard`` chunks).
    attrs : dict
        pixseg's metadata, under ``attrs["pixseg"]``.
    """
    compressors = _compressors(codec)
    try:
        group = zarr.open_group(path, mode="w-", zarr_format=3)
        group.attrs["pixseg"] = {**attrs, "complete": False}
        arrays = []
        for level, (height, width) in enumerate(shapes):
            chunk = (channels, min(chunks[0], height), min(chunks[1], width))
            shards = None if shard is None else (channels, chunk[1] * shard, chunk[2] * shard)
            arrays.append(
                group.create_array(
                    str(level),
                    shape=(channels, height, width),
                    chunks=chunk,
                    shards=shards,
                    dtype=dtype,
                    fill_value=0,
                    compressors=compressors,
                    dimension_names=("c", "y", "x"),
                )
            )
        return arrays
    except (OSError, zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError) as err:
        raise OutputError(f"cannot create output {path!r}: {err}") from err


def write_block_shape(array: zarr.Array) -> tuple[int, int]:
    """(Y, X) of the pieces a writer task must cover: the shard if sharded, else the chunk."""
    shards = getattr(array, "shards", None)
    block = shards or array.chunks
    return int(block[1]), int(block[2])


def finalise_image_zarr(
    path: str,
    *,
    n_levels: int,
    name: str,
    channel_names: list[str],
    pixel_size: tuple[float, float] | None,
    extra: dict[str, Any],
) -> None:
    """Write the OME multiscales (and omero channel names) and mark the image complete."""
    group = zarr.open_group(path, mode="r+")
    space: dict[str, Any] = {"type": "space"}
    if pixel_size is not None:
        space["unit"] = "micrometer"
    base = pixel_size or (1.0, 1.0)
    datasets = []
    for level in range(n_levels):
        factor = 2**level
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": [1.0, base[0] * factor, base[1] * factor]}]
        if level:  # a 2x2 mean's centre lies half a level-0 pixel per halving off the corner
            shift = (factor - 1) / 2
            transforms.append({"type": "translation", "translation": [0.0, base[0] * shift, base[1] * shift]})
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    ome: dict[str, Any] = {
        "version": "0.5",
        "multiscales": [
            {
                "name": name,
                "axes": [{"name": "c", "type": "channel"}, {"name": "y", **space}, {"name": "x", **space}],
                "datasets": datasets,
                "type": "mean",
            }
        ],
        "omero": {"channels": [{"label": label, "color": "FFFFFF", "active": True} for label in channel_names]},
    }
    group.attrs["ome"] = ome
    group.attrs["pixseg"] = {**cast(dict[str, Any], group.attrs["pixseg"]), **extra, "complete": True}
