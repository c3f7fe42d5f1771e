"""DICOM series: a folder of single-frame slices read through pydicom, one slab of slices per chunk.

Slices are ordered by their position along the slice normal (``ImagePositionPatient`` dotted with
the cross product of the two ``ImageOrientationPatient`` cosines), never by file name. Before any
voxel is read, every slice of the series must share its orientation, pixel spacing, rows and
columns, and the slice positions must be evenly spaced (no gap, no repeat). A folder holding
several series is refused unless ``series_uid`` picks one. ``RescaleSlope`` and
``RescaleIntercept`` are applied per slice (CT in Hounsfield units): the volume is then float32.

The affine maps (column, row, slice) to RAS+ millimetres: DICOM's LPS patient coordinates with
the first two axes negated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from pixseg.errors import InputError
from pixseg.io.readers._base import is_dicom_head, read_head
from pixseg.io.readers.volume import Volume, check_spacing, lazy_volume, volume_chunks
from pixseg.optional import import_optional

#: Relative tolerance of orientations, pixel spacings and slice gaps.
TOLERANCE = 1e-3
#: SOP class of DICOM whole-slide microscopy images (2-D slides, not series of slices).
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
#: Bytes read from a file's start to find the DICOM preamble and a whole-slide SOP class UID.
_HEAD_BYTES = 8192
#: LPS to RAS.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class _Slice:
    path: str
    series: str
    orientation: tuple[float, ...]
    position: tuple[float, float, float]
    spacing: tuple[float, float]
    rows: int
    columns: int
    slope: float
    intercept: float


class DicomSlices:
    """Picklable array-like reading (Z, Y, X, C) regions of a sorted series, slice by slice.

    Parameters
    ----------
    paths : tuple of str
        The slice files in order along the slice normal.
    rescale : numpy.ndarray
        Shape (Z, 2): each slice's (slope, intercept).
    shape : tuple of int
        (Z, Y, X, 1).
    dtype : numpy.dtype
        The stored dtype, or float32 when a rescale applies.
    """

    def __init__(self, paths: tuple[str, ...], rescale: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.paths = paths
        self.rescale = rescale
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.ndim = 4

    def __getitem__(self, key: tuple[slice, slice, slice, slice]) -> np.ndarray:
        pydicom = import_optional("pydicom", extra="volumes", needed_for="DICOM series")
        from pydicom.errors import InvalidDicomError

        zs, ys, xs, cs = key
        indices = range(*zs.indices(self.shape[0]))
        rows, columns = (len(range(*part.indices(n))) for part, n in zip((ys, xs), self.shape[1:3], strict=True))
        out = np.empty((len(indices), rows, columns, 1), dtype=self.dtype)
        for n, index in enumerate(indices):
            try:
                pixels = pydicom.dcmread(self.paths[index]).pixel_array[ys, xs]
            # pydicom raises RuntimeError / NotImplementedError when no plugin decodes the transfer syntax
            except (OSError, ValueError, AttributeError, RuntimeError, NotImplementedError, InvalidDicomError) as err:
                raise InputError(f"cannot decode DICOM slice {self.paths[index]!r}: {err}") from err
            slope, intercept = self.rescale[index]
            out[n, ..., 0] = pixels if (slope, intercept) == (1.0, 0.0) else pixels * slope + intercept
        return out[..., cs]


def looks_like_dicom_folder(path: str) -> bool:
    """Whether the folder ``path`` holds a DICOM series of slices: its first regular file (by name) is
    DICOM (``DICM`` at byte 128) with an ``ImagePositionPatient`` and is not a whole-slide image
    (those are 2-D slides, read by OpenSlide).

    Raises
    ------
    MissingDependencyError
        If it holds DICOM files that are not whole-slide images and pydicom is not installed.
    """
    for name in sorted(os.listdir(path)):
        file = os.path.join(path, name)
        if name.startswith(".") or not os.path.isfile(file):
            continue
        head = read_head(file, _HEAD_BYTES)
        if not is_dicom_head(head):
            return False
        if WSI_SOP_CLASS.encode() in head:
            return False
        pydicom = import_optional("pydicom", extra="volumes", needed_for="DICOM series")
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
        except (OSError, ValueError, pydicom.errors.InvalidDicomError):
            return False
        return "ImagePositionPatient" in header and header.get("SOPClassUID") != WSI_SOP_CLASS
    return False


def open_dicom_series(path: str, *, chunk: int | None, series_uid: str | None) -> Volume:
    """The DICOM series in folder ``path`` (``series_uid`` picks one of several), lazily.

    Raises
    ------
    InputError
        If the folder holds no DICOM slices, several series and no ``series_uid`` (or not that
        one), or slices of different orientation, spacing or size, repeated or unevenly spaced
        positions, or slices lacking the geometry tags.
    """
    slices = [s for s in (_read_header(os.path.join(path, n)) for n in sorted(os.listdir(path))) if s is not None]
    if not slices:
        raise InputError(f"folder {path!r} holds no DICOM slices")
    series = sorted({s.series for s in slices})
    if series_uid is not None:
        slices = [s for s in slices if s.series == series_uid]
        if not slices:
            raise InputError(f"folder {path!r} holds no series {series_uid!r}; its series: {', '.join(series)}")
    elif len(series) > 1:
        raise InputError(
            f"folder {path!r} mixes {len(series)} series; pick one with --series-uid ({', '.join(series)})"
        )
    first = slices[0]
    for item in slices:
        _check_same(path, first, item)
    row_cosine, column_cosine = np.array(first.orientation[:3]), np.array(first.orientation[3:])
    normal = np.cross(row_cosine, column_cosine)
    positions = np.array([np.dot(normal, s.position) for s in slices])
    order = np.argsort(positions, kind="stable")
    slices, positions = [slices[i] for i in order], positions[order]
    step = _slice_step(path, positions)
    row_spacing, column_spacing = first.spacing
    lps = np.eye(4)
    lps[:3, 0] = row_cosine * column_spacing  # i: along a row, column index
    lps[:3, 1] = column_cosine * row_spacing  # j: down a column, row index
    lps[:3, 2] = normal * step
    lps[:3, 3] = slices[0].position
    shape = (len(slices), first.rows, first.columns, 1)
    rescale = np.array([(s.slope, s.intercept) for s in slices], dtype=np.float64)
    dtype = np.dtype(np.float32) if np.any(rescale != (1.0, 0.0)) else _stored_dtype(first.path)
    regions = DicomSlices(tuple(s.path for s in slices), rescale, shape, dtype)
    token = [(s.path, os.stat(s.path).st_mtime_ns) for s in slices]
    data = lazy_volume(
        regions, shape=shape, dtype=dtype, chunks=volume_chunks(shape[:3], chunk, whole_slices=True), token=token
    )
    spacing = check_spacing((step, row_spacing, column_spacing), path)
    return Volume(path=path, kind="dicom", data=data, spacing=spacing, affine=_LPS_TO_RAS @ lps, reader="pydicom")


def _read_header(file: str) -> _Slice | None:
    """The geometry of one slice file; None for a file that is not DICOM or holds no image."""
    pydicom = import_optional("pydicom", extra="volumes", needed_for="DICOM series")

    if os.path.basename(file).startswith(".") or not os.path.isfile(file):
        return None
    try:
        data = pydicom.dcmread(file, stop_before_pixels=True)
    except pydicom.errors.InvalidDicomError:
        return None
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read DICOM file {file!r}: {err}") from err
    if "Rows" not in data:
        return None
    try:
        return _Slice(
            path=file,
            series=str(data.SeriesInstanceUID),
            orientation=tuple(float(v) for v in data.ImageOrientationPatient),
            position=tuple(float(v) for v in data.ImagePositionPatient),  # type: ignore[arg-type]
            spacing=tuple(float(v) for v in data.PixelSpacing),  # type: ignore[arg-type]
            rows=int(data.Rows),
            columns=int(data.Columns),
            slope=float(data.get("RescaleSlope", 1.0)),
            intercept=float(data.get("RescaleIntercept", 0.0)),
        )
    except (AttributeError, TypeError, ValueError) as err:
        raise InputError(
            f"DICOM slice {file!r} lacks its geometry ({err}); a series needs position, orientation, spacing"
        ) from err


def _check_same(path: str, first: _Slice, other: _Slice) -> None:
    def differ(a: Any, b: Any) -> bool:
        return not np.allclose(a, b, rtol=TOLERANCE, atol=TOLERANCE)

    for name, a, b in (
        ("orientation", first.orientation, other.orientation),
        ("pixel spacing", first.spacing, other.spacing),
        ("size", (first.rows, first.columns), (other.rows, other.columns)),
    ):
        if differ(a, b):
            raise InputError(f"series in {path!r}: slice {other.path!r} has {name} {b!r}, slice {first.path!r} {a!r}")


def _slice_step(path: str, positions: np.ndarray) -> float:
    """The even spacing of sorted slice ``positions``; a repeat, a gap or uneven steps are refused."""
    if len(positions) < 2:
        raise InputError(f"series in {path!r} has one slice; a volume needs two or more")
    steps = np.diff(positions)
    step = float(np.median(steps))
    if step <= TOLERANCE or not np.allclose(steps, step, rtol=0.01, atol=TOLERANCE):
        worst = float(steps[np.argmax(np.abs(steps - step))])
        raise InputError(
            f"series in {path!r} has uneven slice positions (a step of {worst:.4g} mm where most are {step:.4g} mm): "
            "a gap, a repeated slice or a mixed series"
        )
    return step


def _stored_dtype(file: str) -> np.dtype:
    pydicom = import_optional("pydicom", extra="volumes", needed_for="DICOM series")

    data = pydicom.dcmread(file, stop_before_pixels=True)
    signed = int(data.get("PixelRepresentation", 0)) == 1
    bits = int(data.get("BitsAllocated", 16))
    return np.dtype(f"{'i' if signed else 'u'}{max(1, bits // 8)}")
