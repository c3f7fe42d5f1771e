"""3-D label volumes: NIfTI files and OME-Zarr label multiscales, written chunk by chunk.

Every chunk of the lazy labels is computed once: its task writes it into the destination and
returns its label counts and the sums of each label's input voxels (:func:`store_counting`), so
memory stays one chunk per thread whatever the volume's size. Outputs are marked complete last:
a NIfTI file is written under a temporary name and renamed; an OME-Zarr group gets its OME
metadata after every level is stored.

NIfTI: the voxels are written into a memory-mapped ``.nii`` (header first, data in Fortran
order so a slab of slices is one contiguous range), with the input's affine (sform and qform)
and intent ``label``. A ``.nii.gz`` is that file gzip-compressed by streaming (nibabel cannot
stream a compressed write): memory stays bounded, the disk holds the uncompressed file meanwhile.

OME-Zarr: level ``n + 1`` takes every ``f``-th voxel of level ``n`` along each axis (a stride:
label-safe, no averaging), read back from the stored level. Only the finely sampled axes are
strided while the voxels are anisotropic, then all three (:func:`pyramid_factors`); scales are in
millimetres, axes ``z``, ``y``, ``x``.
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
from typing import Any

import dask.array as da
import numpy as np
import zarr

from pixseg.errors import OutputError
from pixseg.io.atomic import atomic_file
from pixseg.io.chunk_files import DAMAGED_CHUNK_ERRORS, chunk_exists
from pixseg.io.label_groups import finalise_label_zarr
from pixseg.statistics import label_summary

#: A pyramid stops once every axis of its coarsest level is at most this long.
MIN_LEVEL_EDGE = 64
#: An axis is strided alone while its voxel size is below the coarsest axis' by this factor.
ANISOTROPY = math.sqrt(2.0)
#: NIfTI-1 header bytes plus the 4-byte extension flag.
_NIFTI_OFFSET = 352
#: The ``descrip`` of the NIfTI label volumes pixseg writes (what ``--overwrite`` may replace).
NIFTI_DESCRIPTION = b"pixseg labels"
#: Bytes copied per step while compressing.
_COPY_BYTES = 16 * 2**20


def store_counting(labels: da.Array, target: Any, n_values: int, pixels: da.Array) -> da.Array:
    """Lazily write every chunk of ``labels`` into ``target`` at its place, and count its values and
    sum the input voxels of each.

    Parameters
    ----------
    labels : dask.array.Array
        Shape (Z, Y, X), unsigned integers.
    target : array-like
        Supports ``target[zs, ys, xs] = block`` from any thread (a zarr array whose chunks the
        dask chunks are whole multiples of, or :class:`NiftiVoxels`); picklable.
    n_values : int
        Values counted: 0..``n_values - 1``.
    pixels : dask.array.Array
        Shape (Z, Y, X, C): the input the labels come from, chunked as ``labels``, C in one chunk.

    Returns
    -------
    dask.array.Array
        Shape (n_values, 1 + C), float64 (:func:`label_table`); computing it writes every chunk.
    """
    n_blocks = [len(c) for c in labels.chunks]
    table = da.map_blocks(
        _write_block,  # type: ignore[arg-type]  # dask's stubs type map_blocks' first argument as an Array
        labels[..., np.newaxis],
        pixels,
        target,
        n_values,
        new_axis=4,
        chunks=(*[(1,) * n for n in n_blocks], (n_values,), (1 + pixels.shape[3],)),
        dtype=np.float64,
        meta=np.empty((0, 0, 0, 0, 0), dtype=np.float64),
    )
    return table.sum(axis=(0, 1, 2, 3))


def store_missing_counting(labels: da.Array, target: zarr.Array, n_values: int, pixels: da.Array) -> da.Array:
    """As :func:`store_counting` for a zarr ``target`` an interrupted run has partly written
    (``--resume``): the chunks stored are read back and counted now (their input voxels read again
    for the sums), and their labels are never computed; only the others are computed and written.
    A chunk that cannot be decoded is written again.

    ``target``'s chunks must equal the dask chunks of ``labels`` (the last ones clipped).
    """
    starts = [np.cumsum((0, *sizes[:-1])) for sizes in labels.chunks]
    n_columns = 1 + pixels.shape[3]
    parts = []
    for index in np.ndindex(*labels.numblocks):
        origin = tuple(int(s[i]) for s, i in zip(starts, index, strict=True))
        region = tuple(slice(o, o + c[i]) for o, c, i in zip(origin, labels.chunks, index, strict=True))
        block = pixels.blocks[(*index, 0)]
        if _is_stored(target, index, region):
            arrays: tuple[Any, ...] = (_count_stored, block, target, region, n_values)
        else:
            arrays = (_write_block, labels.blocks[index][..., np.newaxis], block, target, n_values, origin)
        parts.append(
            da.map_blocks(
                *arrays,
                new_axis=4,
                chunks=((1,), (1,), (1,), (n_values,), (n_columns,)),
                dtype=np.float64,
                meta=np.empty((0, 0, 0, 0, 0), dtype=np.float64),
            )
        )
    if not parts:
        return da.zeros((n_values, n_columns), dtype=np.float64)
    return da.concatenate(parts, axis=0).sum(axis=(0, 1, 2, 3))


def label_table(labels: np.ndarray, pixels: np.ndarray, n_values: int) -> np.ndarray:
    """Shape (1, 1, 1, 1, n_values, 1 + C) float64 of a (Z, Y, X) label block and its (Z, Y, X, C)
    input: its :func:`pixseg.statistics.label_summary` (column 0 counts each value, the others sum
    its voxels' channels; label 0 is not summed). Sums of integer voxels are exact in float64, so
    adding blocks in any order gives the same total."""
    return label_summary(labels, pixels, n_values, pixels.shape[-1])[np.newaxis, np.newaxis, np.newaxis, np.newaxis]


def _is_stored(target: zarr.Array, index: tuple[int, ...], region: tuple[slice, ...]) -> bool:
    """Whether a chunk is stored and decodes (else it is written again)."""
    if not chunk_exists(target, index):  # type: ignore[arg-type]  # any number of dimensions
        return False
    try:
        target[region]
    except DAMAGED_CHUNK_ERRORS:
        return False
    return True


def _count_stored(pixels: np.ndarray, target: zarr.Array, region: tuple[slice, ...], n_values: int) -> np.ndarray:
    """:func:`label_table` of a stored chunk, read back from ``target``, and its input ``pixels``."""
    return label_table(np.asarray(target[region]), pixels, n_values)


def _write_block(
    block: np.ndarray,
    pixels: np.ndarray,
    target: Any,
    n_values: int,
    origin: tuple[int, ...] = (0, 0, 0),
    block_info: Any = None,
) -> np.ndarray:
    location = block_info[0]["array-location"][:3]
    region = tuple(slice(o + start, o + stop) for o, (start, stop) in zip(origin, location, strict=True))
    write_region(target, region, block[..., 0])
    return label_table(block[..., 0], pixels, n_values)


def write_region(target: Any, region: tuple[slice, ...], block: np.ndarray) -> None:
    """``target[region] = block``: every chunk of a label volume is stored through here."""
    target[region] = block


class NiftiVoxels:
    """Picklable writer (and reader) of (Z, Y, X) regions of the voxels of an uncompressed NIfTI-1 file."""

    def __init__(self, path: str, *, shape: tuple[int, int, int], dtype: np.dtype) -> None:
        self.path = path
        self.shape = shape
        self.dtype = np.dtype(dtype)

    def __setitem__(self, key: tuple[slice, slice, slice], block: np.ndarray) -> None:
        depth, height, width = self.shape
        voxels = np.memmap(
            self.path, dtype=self.dtype, mode="r+", offset=_NIFTI_OFFSET, shape=(width, height, depth), order="F"
        )
        zs, ys, xs = key
        voxels[xs, ys, zs] = block.transpose(2, 1, 0)
        voxels.flush()

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        """The (Z, Y, X) region ``key`` (slices only), read from the file's mapped voxels."""
        depth, height, width = self.shape
        voxels = np.memmap(
            self.path, dtype=self.dtype, mode="r", offset=_NIFTI_OFFSET, shape=(width, height, depth), order="F"
        )
        zs, ys, xs = key
        return np.array(voxels[xs, ys, zs].transpose(2, 1, 0))


def create_nifti_labels(path: str, *, shape: tuple[int, int, int], dtype: np.dtype, affine: np.ndarray) -> NiftiVoxels:
    """Create an uncompressed NIfTI-1 label file of (Z, Y, X) ``shape``, all zero, placed by ``affine``.

    Raises
    ------
    OutputError
        If the file cannot be written.
    """
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape[::-1])
    header.set_data_dtype(dtype)
    header.set_sform(affine, code="scanner")
    header.set_qform(affine, code="scanner")
    header.set_xyzt_units("mm")
    header.set_intent("label")
    header["descrip"] = NIFTI_DESCRIPTION
    header.set_data_offset(_NIFTI_OFFSET)
    header["scl_slope"], header["scl_inter"] = 1.0, 0.0
    try:
        with open(path, "wb") as handle:
            header.write_to(handle)
            handle.write(b"\0" * (_NIFTI_OFFSET - handle.tell()))
            handle.truncate(_NIFTI_OFFSET + math.prod(shape) * np.dtype(dtype).itemsize)
    except OSError as err:
        raise OutputError(f"cannot write {path!r}: {err}") from err
    return NiftiVoxels(path, shape=shape, dtype=dtype)


def is_label_nifti(path: str) -> bool:
    """Whether ``path`` is a NIfTI label volume pixseg wrote (its header's ``descrip``)."""
    import nibabel as nib

    try:
        header: Any = nib.load(path).header
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError):
        return False
    return bytes(header["descrip"]).rstrip(b"\0") == NIFTI_DESCRIPTION


def finish_nifti(written: str, path: str) -> None:
    """Move the complete NIfTI file ``written`` to ``path``, gzip-compressing it by streaming for ``.gz``."""
    try:
        if not path.lower().endswith(".gz"):
            os.replace(written, path)
            return
        with open(written, "rb") as source, atomic_file(path, "wb") as target:
            with gzip.GzipFile(fileobj=target, mode="wb", compresslevel=6, mtime=0) as compressed:
                shutil.copyfileobj(source, compressed, _COPY_BYTES)
        os.remove(written)
    except OSError as err:
        raise OutputError(f"cannot write {path!r}: {err}") from err


def pyramid_factors(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> list[tuple[int, int, int]]:
    """Stride of each level below level 0, relative to the level above, (z, y, x).

    While one axis' voxels are coarser than another's by more than ``ANISOTROPY``, only the axes
    finer than the coarsest by that factor are strided by 2; once near-isotropic, all three are.
    An axis of length 1 is never strided. Levels stop when every axis is at most ``MIN_LEVEL_EDGE``.
    """
    factors: list[tuple[int, int, int]] = []
    size, current = list(shape), list(spacing)
    while max(size) > MIN_LEVEL_EDGE:
        coarsest = max(current)
        fine = [s * ANISOTROPY <= coarsest for s in current]
        step = tuple(2 if (fine[a] or not any(fine)) and size[a] > 1 else 1 for a in range(3))
        factors.append(step)  # type: ignore[arg-type]
        size = [math.ceil(n / f) for n, f in zip(size, step, strict=True)]
        current = [s * f for s, f in zip(current, step, strict=True)]
    return factors


def create_volume_label_zarr(
    path: str,
    *,
    shapes: list[tuple[int, ...]],
    chunks: tuple[int, int, int],
    dtype: np.dtype,
    status: dict[str, Any] | None = None,
) -> list[zarr.Array]:
    """Create an empty, incomplete OME-Zarr (NGFF 0.5) label group, one array per level (``0``, ``1``...).

    ``status`` (the run's fingerprint and model, for ``--resume``) goes into ``attrs["pixseg"]``.

    Raises
    ------
    OutputError
        If it cannot be created (or exists).
    """
    try:
        group = zarr.open_group(path, mode="w-", zarr_format=3)
        group.attrs["pixseg"] = {**(status or {}), "complete": False}
        return [
            group.create_array(
                str(level),
                shape=shape,
                chunks=tuple(min(c, n) for c, n in zip(chunks, shape, strict=True)),
                dtype=dtype,
                fill_value=0,
                dimension_names=("z", "y", "x"),
            )
            for level, shape in enumerate(shapes)
        ]
    except (OSError, zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError) as err:
        raise OutputError(f"cannot create output {path!r}: {err}") from err


def reduce_level(above: zarr.Array, below: zarr.Array, factor: tuple[int, int, int]) -> None:
    """Write ``below`` as every ``factor``-th voxel of the stored level ``above`` (computes)."""
    strided = da.from_zarr(above)[:: factor[0], :: factor[1], :: factor[2]]
    da.store(strided.rechunk(below.chunks), below, lock=False)  # type: ignore[arg-type]  # a zarr array is a target


def finish_volume_label_zarr(
    path: str,
    *,
    spacing: tuple[float, float, float],
    factors: list[tuple[int, int, int]],
    rows: list[dict[str, Any]],
    extra: dict[str, Any],
) -> None:
    """Write the OME metadata (axes z, y, x in millimetres, each level's scale) and mark ``path`` complete."""
    axes = [{"name": axis, "type": "space", "unit": "millimeter"} for axis in "zyx"]
    scale, datasets = list(spacing), []
    for level in range(len(factors) + 1):
        if level:
            scale = [s * f for s, f in zip(scale, factors[level - 1], strict=True)]
        datasets.append({"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": list(scale)}]})
    image_label = {
        "colors": [{"label-value": row["label"], "rgba": list(row["colour_rgba"])} for row in rows],
        "properties": [
            {"label-value": row["label"], "voxels": row["voxels"], "volume_mm3": row["volume_mm3"]} for row in rows
        ],
    }
    ome = {"multiscales": [{"name": "labels", "axes": axes, "datasets": datasets}], "image-label": image_label}
    finalise_label_zarr(path, ngff="0.5", ome=ome, extra=extra)
