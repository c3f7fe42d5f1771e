"""Whole label chunks written to and read from their files directly, for arrays laid out as pixseg creates them.

zarr's ``Array.__setitem__`` spends about 2 ms of Python per chunk (selection, buffers and
hand-offs to its event-loop thread) on top of compressing it, more than zstd takes to compress a
1024^2 uint8 chunk; a 100,000^2 label pass writes about 19,000 chunks. For an array in a local
directory store whose chunks are zstd frames of their C-order little-endian bytes (zarr v3:
``bytes`` + ``zstd`` codecs without checksum; zarr v2: a ``zstd`` compressor without filters),
the chunk file is exactly ``numcodecs.Zstd(level).encode(chunk)``, padded with the fill value to
the full chunk shape at the array's edges, as zarr stores edge chunks. Such chunks are encoded
here and renamed into place, as zarr's local store does, and decoded here when the pyramid reads
a level back; any other array is written and read through zarr.
"""

from __future__ import annotations

import os
import sys
import uuid

import numpy as np
import zarr
from numcodecs import Zstd
from zarr.codecs import BytesCodec, ZstdCodec
from zarr.storage import LocalStore


def write_chunk(array: zarr.Array, block: np.ndarray, origin: tuple[int, int]) -> None:
    """Store ``block``, exactly one chunk of ``array`` (a partial one at the edges), whose first pixel is ``origin``.

    Parameters
    ----------
    array : zarr.Array
        2-D destination.
    block : numpy.ndarray
        Shape of the chunk at ``origin`` (clipped to the array), ``array``'s dtype.
    origin : (int, int)
        Multiples of ``array.chunks``.

    Raises
    ------
    ValueError
        If ``block`` is not one whole chunk of ``array``.
    """
    height, width = array.chunks
    if origin[0] % height or origin[1] % width:
        raise ValueError(f"origin {origin!r} is not on a chunk corner of chunks {array.chunks!r}")
    expected = (min(height, array.shape[0] - origin[0]), min(width, array.shape[1] - origin[1]))
    if block.shape != expected or block.dtype != array.dtype:
        raise ValueError(f"a {block.shape!r} {block.dtype} block is not the {expected!r} chunk at {origin!r}")
    target = _chunk_file(array, (origin[0] // height, origin[1] // width))
    if target is None:
        array[origin[0] : origin[0] + block.shape[0], origin[1] : origin[1] + block.shape[1]] = block
        return
    path, level = target
    if block.shape != (height, width):
        padded = np.full((height, width), array.fill_value, dtype=block.dtype)
        padded[: block.shape[0], : block.shape[1]] = block
        block = padded
    _replace_file(path, Zstd(level=level).encode(np.ascontiguousarray(block)))


def _chunk_file(array: zarr.Array, block: tuple[int, int]) -> tuple[str, int] | None:
    """The file of chunk ``block`` of ``array`` and its zstd level, when this module encodes and
    decodes the array's chunks itself; else None (the array is read and written through zarr)."""
    store, level = array.store, _zstd_level(array)
    if not isinstance(store, LocalStore) or level is None:
        return None
    key = array.metadata.encode_chunk_key(block)
    return os.path.join(str(store.root), array.path, *key.split("/")), level


def read_chunk(array: zarr.Array, block: tuple[int, int]) -> np.ndarray:
    """Chunk ``block`` of a 2-D ``array``, clipped to the array (a missing chunk is the fill value, as in zarr)."""
    height, width = array.chunks
    top, left = block[0] * height, block[1] * width
    bottom, right = min(top + height, array.shape[0]), min(left + width, array.shape[1])
    target = _chunk_file(array, block)
    if target is None:
        return np.asarray(array[top:bottom, left:right])
    try:
        with open(target[0], "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return np.full((bottom - top, right - left), array.fill_value, dtype=array.dtype)
    chunk = np.frombuffer(Zstd().decode(data), dtype=array.dtype).reshape(height, width)
    return chunk[: bottom - top, : right - left]


def read_region(array: zarr.Array, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """Rows and columns [start, stop) of a 2-D ``array``, read chunk by chunk with :func:`read_chunk`.

    ``rows[0]`` and ``cols[0]`` must be on chunk corners, ``rows[1]`` and ``cols[1]`` on chunk
    corners or the array's edges.
    """
    height, width = array.chunks
    if rows[0] % height or cols[0] % width:
        raise ValueError(f"region ({rows!r}, {cols!r}) does not start on a chunk corner of {array.chunks!r}")
    if not (rows[1] % height == 0 or rows[1] == array.shape[0]) or not (
        cols[1] % width == 0 or cols[1] == array.shape[1]
    ):
        raise ValueError(f"region ({rows!r}, {cols!r}) does not end on a chunk corner or the edge of {array.shape!r}")
    return np.block(
        [
            [read_chunk(array, (top // height, left // width)) for left in range(cols[0], cols[1], width)]
            for top in range(rows[0], rows[1], height)
        ]
    )


def _zstd_level(array: zarr.Array) -> int | None:
    """The zstd level of an array whose chunks are zstd frames of their little-endian C-order bytes, else None."""
    if array.dtype.itemsize > 1 and sys.byteorder != "little":
        return None
    metadata = array.metadata
    if metadata.zarr_format == 3:
        codecs = metadata.codecs
        if (
            len(codecs) == 2
            and isinstance(codecs[0], BytesCodec)
            and (codecs[0].endian is None or codecs[0].endian.value == "little")
            and isinstance(codecs[1], ZstdCodec)
            and not codecs[1].checksum
        ):
            return int(codecs[1].level)
        return None
    compressor = metadata.compressor
    little = getattr(metadata.dtype, "endianness", "little") in ("little", None)
    if isinstance(compressor, Zstd) and not compressor.checksum and not metadata.filters and metadata.order == "C":
        return int(compressor.level) if little else None
    return None


def _replace_file(path: str, data: bytes) -> None:
    """Write ``data`` beside ``path`` and rename it into place, so readers never see a partial chunk."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path}.{uuid.uuid4().hex}.partial"
    try:
        with open(partial, "wb") as file:
            file.write(data)
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
