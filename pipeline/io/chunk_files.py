"""Label chunk files: their paths, encoding, existence and verification, for arrays laid out as pixseg creates them.

This is the one module that touches a zarr array's chunk files directly; everything else goes
through zarr.

Why: zarr's ``Array.__setitem__`` spends more Python time per chunk (selection, buffers and
hand-offs to its event-loop thread) than zstd takes to compress a 1024^2 uint8 chunk, and a
100,000^2 label pass writes about 19,000 chunks (docs/performance.md) (upstream:
https://github.com/zarr-developers/zarr-python/issues/2710). For an array in a local directory
store whose chunks are zstd frames of their C-order little-endian bytes (zarr v3: ``bytes`` +
``zstd`` codecs without checksum; zarr v2: a ``zstd`` compressor without filters), the chunk file
is exactly ``numcodecs.Zstd(level).encode(chunk)``, padded with the fill value to the full chunk
shape at the array's edges, as zarr stores edge chunks. Such chunks are encoded here and renamed
into place (as zarr's local store does), and decoded here when the pyramid reads a level back.

Fence: the fast path is taken only with a zarr version in :data:`ZARR_VERIFIED`, the range the
byte-identity was checked against (``tests/test_chunk_files.py::test_canary_*`` checks it again
with the zarr installed). Any other zarr version, any other array, and every array in an object store (an
:class:`~zarr.storage.FsspecStore`: one PUT per chunk, no rename) is written and read through zarr.
"""

from __future__ import annotations

import functools
import os
import re
import sys

import numpy as np
import zarr
from numcodecs import Zstd
from zarr.codecs import BytesCodec, ZstdCodec
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore

from pixseg.io.atomic import write_atomic

#: zarr versions [first, end) whose chunk files this module writes byte for byte as zarr would.
#: Raise the end only after the canary tests pass with the new version.
ZARR_VERIFIED: tuple[tuple[int, ...], tuple[int, ...]] = ((3, 0, 8), (3, 2))

#: What reading a damaged chunk raises (both through zarr and here): numcodecs' zstd decoder raises
#: ``RuntimeError`` for a truncated, empty or garbled frame; numpy raises ``ValueError`` when the
#: decoded bytes do not fill the chunk (reshape, or a buffer that is not a whole number of items).
#: A missing chunk raises nothing (zarr reads the fill value); any other exception is a bug.
DAMAGED_CHUNK_ERRORS: tuple[type[Exception], ...] = (RuntimeError, ValueError)


def chunk_path(array: zarr.Array, block: tuple[int, int]) -> str | None:
    """The file of chunk ``block`` of ``array``, or None when the array is not in a local directory store.

    Parameters
    ----------
    array : zarr.Array
        2-D, zarr v3 (``c/i/j``) or v2 (``i/j`` or ``i.j``, as its chunk key encoding says).
    block : (int, int)
        Chunk indices.
    """
    store = array.store
    if not isinstance(store, LocalStore):
        return None
    key = array.metadata.encode_chunk_key(block)
    return os.path.join(str(store.root), array.path, *key.split("/"))


def chunk_exists(array: zarr.Array, block: tuple[int, int]) -> bool:
    """Whether chunk ``block`` of ``array`` is stored (zarr and this module rename each chunk into
    place; an object store's PUT stores a whole chunk object or none).

    Raises
    ------
    ValueError
        If ``array`` is neither in a local directory store nor in an fsspec (object) store.
    """
    path = chunk_path(array, block)
    if path is not None:
        return os.path.exists(path)
    if not isinstance(array.store, FsspecStore):
        raise ValueError(
            f"array {array.path!r} in {array.store!r} is not in a local directory store nor in an fsspec store"
        )
    key = array.metadata.encode_chunk_key(block)
    return bool(sync(array.store.exists(f"{array.path}/{key}" if array.path else key)))


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
    OSError
        If the chunk cannot be written.
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


def read_chunk(array: zarr.Array, block: tuple[int, int]) -> np.ndarray:
    """Chunk ``block`` of a 2-D ``array``, clipped to the array (a missing chunk is the fill value, as in zarr).

    Raises
    ------
    RuntimeError, ValueError
        If the chunk is damaged (see :data:`DAMAGED_CHUNK_ERRORS`).
    """
    rows, cols = _extent(array, block)
    target = _chunk_file(array, block)
    if target is None:
        return np.asarray(array[rows, cols])
    data = _read_file(target[0])
    if data is None:
        return np.full((rows.stop - rows.start, cols.stop - cols.start), array.fill_value, dtype=array.dtype)
    return _decode(array, data)[: rows.stop - rows.start, : cols.stop - cols.start]


def read_stored_chunk(array: zarr.Array, block: tuple[int, int]) -> np.ndarray | None:
    """Chunk ``block`` of a 2-D ``array`` in a local directory or fsspec store, clipped to the array,
    or None if it is missing or cannot be decoded (a chunk to write again).

    Raises
    ------
    ValueError
        If ``array`` is in neither kind of store.
    """
    rows, cols = _extent(array, block)
    target = _chunk_file(array, block)
    if target is None:
        if not chunk_exists(array, block):
            return None
        try:
            return np.asarray(array[rows, cols])
        except DAMAGED_CHUNK_ERRORS:
            return None
    data = _read_file(target[0])
    if data is None:
        return None
    try:
        chunk = _decode(array, data)
    except DAMAGED_CHUNK_ERRORS:
        return None
    return chunk[: rows.stop - rows.start, : cols.stop - cols.start]


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


def zarr_verified(version: str) -> bool:
    """Whether zarr ``version`` is in :data:`ZARR_VERIFIED` (pre-releases count as their release)."""
    return ZARR_VERIFIED[0] <= _release(version) < ZARR_VERIFIED[1]


@functools.cache
def _release(version: str) -> tuple[int, ...]:
    match = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(part) for part in match.group().split(".")) if match else ()


def _extent(array: zarr.Array, block: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns of chunk ``block``, clipped to the array."""
    height, width = array.chunks
    top, left = block[0] * height, block[1] * width
    return slice(top, min(top + height, array.shape[0])), slice(left, min(left + width, array.shape[1]))


def _chunk_file(array: zarr.Array, block: tuple[int, int]) -> tuple[str, int] | None:
    """The file of chunk ``block`` of ``array`` and its zstd level, when this module encodes and
    decodes the array's chunks itself; else None (the array is read and written through zarr)."""
    if not zarr_verified(zarr.__version__):
        return None
    level = _zstd_level(array)
    if level is None:
        return None
    path = chunk_path(array, block)
    return None if path is None else (path, level)


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


def _decode(array: zarr.Array, data: bytes) -> np.ndarray:
    """A whole (padded) chunk of ``array`` from its file's bytes; raises :data:`DAMAGED_CHUNK_ERRORS`."""
    return np.frombuffer(Zstd().decode(data), dtype=array.dtype).reshape(array.chunks)


def _read_file(path: str) -> bytes | None:
    """The bytes of chunk file ``path``, or None if it does not exist."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except FileNotFoundError:
        return None


def _replace_file(path: str, data: bytes) -> None:
    """Write chunk file ``path`` (creating its directory) under a temporary name and rename it into
    place, so readers never see a partial chunk. Not fsynced, as zarr does not fsync chunks."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, data, fsync=False)
