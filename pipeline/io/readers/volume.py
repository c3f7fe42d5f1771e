"""3-D volumes (CT, MR, 3-D microscopy) opened lazily as (Z, Y, X, C) dask arrays.

A :class:`Volume` is the 3-D counterpart of :class:`pixseg.io.readers.Image`: the voxels, their
spacing and the affine that places them in the scanner's (or the microscope's) space, so labels
written back (NIfTI, OME-Zarr) overlay the scan in a volume viewer.

Axis convention: the array axes are (Z, Y, X, C) = (k, j, i, c) of the NIfTI voxel index
(i, j, k): X is the fastest axis of a NIfTI file and the column of a DICOM slice, Z the slice.
``affine`` maps (i, j, k, 1) to RAS+ millimetres, NIfTI's convention (a DICOM series' LPS patient
coordinates are converted). Spacing is (z, y, x) in millimetres.

Formats: NIfTI-1/2 (``.nii`` memory-mapped, ``.nii.gz`` converted once into a chunked OME-Zarr
copy: :mod:`pixseg.io.readers.nifti`), DICOM series (a folder of slices:
:mod:`pixseg.io.readers.dicom_series`), TIFF Z-stacks (:mod:`pixseg.io.readers.tiff_stack`) and 3-D
OME-Zarr images (``z``, ``y``, ``x`` axes); the last two only when asked (``--volume``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from pixseg.errors import InputError, InputNotFoundError

#: Target edge of a processing chunk of a volume, in voxels (about 2 Mvox per chunk).
DEFAULT_VOLUME_CHUNK = 128
#: Suffixes of NIfTI files.
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Suffixes of TIFF Z-stacks read as volumes (with ``--volume``).
TIFF_STACK_SUFFIXES = (".tif", ".tiff", ".btf")


@dataclass(frozen=True)
class Volume:
    """A lazily opened 3-D volume.

    Attributes
    ----------
    path : str
        Where it was read from.
    kind : str
        ``"nifti"``, ``"dicom"`` or ``"ome-zarr"``.
    data : dask.array.Array
        Shape (Z, Y, X, C), the file's dtype (or float32 where a rescale applies), C in one chunk.
    spacing : (float, float, float)
        Voxel size (z, y, x) in millimetres.
    affine : numpy.ndarray
        Shape (4, 4): voxel index (i, j, k, 1) = (x, y, z, 1) to RAS+ millimetres.
    reader : str
        The library that decodes the file (``nibabel``, ``pydicom``, ``zarr``).
    """

    path: str
    kind: str
    data: da.Array
    spacing: tuple[float, float, float]
    affine: np.ndarray
    reader: str

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(Z, Y, X, C)."""
        return tuple(int(n) for n in self.data.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        """The voxel dtype as read."""
        return np.dtype(self.data.dtype)

    @property
    def voxel_volume(self) -> float:
        """Volume of one voxel in cubic millimetres."""
        return float(math.prod(self.spacing))


def is_nifti(path: str) -> bool:
    """Whether ``path`` names a NIfTI file (by suffix)."""
    return path.lower().endswith(NIFTI_SUFFIXES)


def is_volume_input(path: str, *, volume: bool = False) -> bool:
    """Whether ``path`` is read as a volume: a NIfTI file, a folder of DICOM slices, or (``volume``,
    ``--volume``) any 3-D OME-Zarr image."""
    if is_nifti(path):
        return True
    if os.path.isdir(path) and not path.rstrip("/").endswith(".zarr"):
        from pixseg.io.readers.dicom_series import looks_like_dicom_folder
        from pixseg.io.readers.openslide_slides import sniff_dicom_directory

        # a DICOM WSI (VL whole-slide instances, which OpenSlide recognises) is a 2-D slide
        return looks_like_dicom_folder(path) and not sniff_dicom_directory(path)
    return volume


def open_volume(
    path: str | os.PathLike[str],
    *,
    chunk: int | None = None,
    series_uid: str | None = None,
    workdir: str | None = None,
) -> Volume:
    """Open a volume lazily.

    Parameters
    ----------
    path : path-like
        A NIfTI file, a folder of one DICOM series (or several, with ``series_uid``), a TIFF
        Z-stack (:mod:`pixseg.io.readers.tiff_stack`) or a 3-D OME-Zarr image.
    chunk : int, optional
        Edge of the cubic processing chunks of an OME-Zarr volume (default
        ``DEFAULT_VOLUME_CHUNK``); NIfTI files, DICOM series and TIFF stacks are read in slabs of
        whole slices of about ``chunk**3`` voxels, as they are laid out.
    series_uid : str, optional
        The DICOM SeriesInstanceUID to read from a folder holding several series.
    workdir : str, optional
        Where a ``.nii.gz`` is converted (default: beside the input's output, which the caller
        passes here; see :func:`pixseg.io.readers.nifti.open_nifti`).

    Returns
    -------
    Volume
        Computes nothing, except the one-off conversion of a ``.nii.gz``.

    Raises
    ------
    InputNotFoundError
        If ``path`` does not exist.
    InputError
        For a corrupt file, a bad series (mixed, gaps, inconsistent spacing or orientation) or an
        image that is not 3-D.
    """
    path_str = os.fspath(path)
    if not os.path.exists(path_str):
        raise InputNotFoundError(f"input {path_str!r} does not exist")
    if chunk is not None and chunk < 16:
        raise InputError(f"--chunk must be at least 16 voxels, got {chunk!r}")
    if is_nifti(path_str):
        from pixseg.io.readers.nifti import open_nifti

        return open_nifti(path_str, chunk=chunk, workdir=workdir)
    if os.path.isdir(path_str) and not path_str.rstrip("/").endswith(".zarr"):
        from pixseg.io.readers.dicom_series import open_dicom_series

        return open_dicom_series(path_str, chunk=chunk, series_uid=series_uid)
    if path_str.lower().endswith(TIFF_STACK_SUFFIXES):
        from pixseg.io.readers.tiff_stack import open_tiff_volume

        return open_tiff_volume(path_str, chunk=chunk)
    from pixseg.io.readers.nifti import open_zarr_volume

    return open_zarr_volume(path_str, chunk=chunk)


def describe_volume(path: str) -> dict[str, Any]:
    """What ``pixseg info`` shows of a volume (NIfTI, DICOM series, TIFF or OME-Zarr stack): format,
    reader, (Z, Y, X) shape, channels, dtype, spacing (mm), affine; headers only (a ``.nii.gz`` is
    not converted, no voxel is read).

    Raises
    ------
    InputError
        As :func:`open_volume`.
    """
    if is_nifti(path):
        from pixseg.io.readers.nifti import read_nifti_header, scaled_dtype

        header = read_nifti_header(path)
        kind, reader, shape, spacing, affine = "nifti", "nibabel", header.shape, header.spacing, header.affine
        dtype = scaled_dtype(header.raw_dtype, header.slope, header.inter)
    else:
        volume = open_volume(path)
        kind, reader, shape, spacing, affine, dtype = (
            volume.kind,
            volume.reader,
            volume.shape,
            volume.spacing,
            volume.affine,
            volume.dtype,
        )
    rows = ["[" + " ".join(f"{value:.6g}" for value in row) + "]" for row in np.asarray(affine)[:3]]
    return {
        "format": kind,
        "reader": reader,
        "shape (ZxYxX)": tuple(shape[:3]),
        "channels": shape[3],
        "dtype": np.dtype(dtype).name,
        "spacing mm": "x".join(f"{s:.6g}" for s in spacing),
        "affine (RAS)": " ".join(rows),
    }


def volume_chunks(shape: tuple[int, int, int], chunk: int | None, *, whole_slices: bool = False) -> tuple[int, ...]:
    """Processing chunk (Z, Y, X): cubes of ``chunk`` (default ``DEFAULT_VOLUME_CHUNK``) voxels, or
    slabs of whole slices of about as many voxels when ``whole_slices`` (a slice decodes whole)."""
    edge = chunk or DEFAULT_VOLUME_CHUNK
    if whole_slices:
        slices = max(1, edge**3 // max(1, shape[1] * shape[2]))
        return min(slices, shape[0]), shape[1], shape[2]
    return tuple(min(edge, n) for n in shape)


def lazy_volume(
    regions: Any,
    *,
    shape: tuple[int, int, int, int],
    dtype: np.dtype,
    chunks: tuple[int, ...],
    token: Any,
) -> da.Array:
    """A (Z, Y, X, C) dask array over ``regions``, an array-like read region by region
    (``regions[zs, ys, xs, cs]``; picklable and thread-safe), in ``chunks`` (Z, Y, X), C whole."""
    return da.from_array(
        regions,
        chunks=(*chunks, shape[3]),
        asarray=False,
        lock=False,
        fancy=False,
        meta=np.empty((0, 0, 0, 0), dtype=dtype),
        name=f"volume-{tokenize(token, chunks)}",
    )


def check_spacing(spacing: tuple[float, ...], path: str) -> tuple[float, float, float]:
    """``spacing`` as three positive finite floats, or an :class:`InputError` naming ``path``."""
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise InputError(f"input {path!r} has voxel spacing {values!r}; expected three positive sizes")
    return values  # type: ignore[return-value]
