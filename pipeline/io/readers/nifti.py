"""NIfTI volumes (nibabel reads the header), and 3-D OME-Zarr images such as their converted copies.

A ``.nii`` is memory-mapped (``np.memmap`` over the data block, Fortran order, as nibabel's
``ArrayProxy`` maps it) and read in slabs of whole slices, each one contiguous range of the file: a
chunk narrower than a slice would touch every page of its slices (a row of x is shorter than a
page), reading its whole slab from disk once per chunk. A ``.nii.gz`` cannot be read in chunks, so it
is converted once, streaming slab by slab through the gzip stream (one slab of whole ``k`` slices
in memory at a time), into a chunked OME-Zarr copy in the work directory, named after the input
and a hash of its identity (path, size, modification time) and marked complete last, so an
interrupted conversion is redone and a complete one reused.

Voxel values are scaled by the header's ``scl_slope`` and ``scl_inter`` when they are set and not
(1, 0): the volume is then float32. A fourth axis (time, echoes, modalities) becomes the channels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from pixseg.errors import InputError
from pixseg.io.readers.volume import (
    DEFAULT_VOLUME_CHUNK,
    Volume,
    check_spacing,
    lazy_volume,
    volume_chunks,
)
from pixseg.optional import import_optional

logger = logging.getLogger(__name__)

#: Suffix of a converted ``.nii.gz`` copy in the work directory.
COPY_SUFFIX = ".volume.zarr"
#: Most bytes of one slab read from a gzip stream while converting.
SLAB_BYTES = 64 * 2**20
#: Millimetres per NIfTI spatial unit.
_UNIT_MM = {"mm": 1.0, "micron": 1e-3, "meter": 1e3, "unknown": 1.0}


class NiftiRegions:
    """Picklable array-like reading (Z, Y, X, C) regions of an uncompressed NIfTI file through a memory map.

    Parameters
    ----------
    path : str
        The ``.nii`` file.
    offset : int
        Byte offset of the voxel data.
    raw_dtype : numpy.dtype
        The stored dtype (with its byte order).
    file_shape : tuple of int
        (I, J, K[, T]), as stored (Fortran order).
    slope, inter : float
        The header's scaling (1, 0 when none).
    """

    def __init__(
        self,
        path: str,
        *,
        offset: int,
        raw_dtype: np.dtype,
        file_shape: tuple[int, ...],
        slope: float,
        inter: float,
    ) -> None:
        self.path = path
        self.offset = offset
        self.raw_dtype = np.dtype(raw_dtype)
        self.file_shape = file_shape
        self.slope, self.inter = slope, inter
        self.dtype = scaled_dtype(self.raw_dtype, slope, inter)
        i, j, k = file_shape[:3]
        self.shape = (k, j, i, file_shape[3] if len(file_shape) > 3 else 1)
        self.ndim = 4

    def __getitem__(self, key: tuple[slice, slice, slice, slice]) -> np.ndarray:
        zs, ys, xs, cs = key
        stored = np.memmap(
            self.path, dtype=self.raw_dtype, mode="r", offset=self.offset, shape=self.file_shape, order="F"
        )
        block = stored[xs, ys, zs, cs] if len(self.file_shape) > 3 else stored[xs, ys, zs, np.newaxis][..., cs]
        return scale_voxels(np.ascontiguousarray(block.transpose(2, 1, 0, 3)), self.slope, self.inter)


def scaled_dtype(raw: np.dtype, slope: float, inter: float) -> np.dtype:
    """The dtype of voxels read: the stored one in native byte order, float32 when scaled."""
    if (slope, inter) != (1.0, 0.0):
        return np.dtype(np.float32)
    return np.dtype(raw).newbyteorder("=")


def scale_voxels(raw: np.ndarray, slope: float, inter: float) -> np.ndarray:
    """``raw * slope + inter`` in float32 when that is not the identity, else ``raw`` in native byte order."""
    if (slope, inter) == (1.0, 0.0):
        return raw.astype(raw.dtype.newbyteorder("="), copy=False)
    return (raw.astype(np.float64) * slope + inter).astype(np.float32)


@dataclass(frozen=True)
class NiftiHeader:
    """What a NIfTI header says of its voxels (read by nibabel, no voxel read).

    ``file_shape`` is (I, J, K[, T]) as stored; ``offset`` the voxels' byte offset; ``slope`` and
    ``inter`` the scaling (1, 0 when none); ``spacing`` (z, y, x) in millimetres.
    """

    path: str
    file_shape: tuple[int, ...]
    raw_dtype: np.dtype
    offset: int
    slope: float
    inter: float
    affine: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(Z, Y, X, C) of the volume."""
        i, j, k = self.file_shape[:3]
        return k, j, i, self.file_shape[3] if len(self.file_shape) > 3 else 1


def read_nifti_header(path: str) -> NiftiHeader:
    """The header of a NIfTI file (``.nii`` or ``.nii.gz``).

    Raises
    ------
    InputError
        If nibabel cannot read it, the image is not 3-D or 4-D, or its spacing is not positive.
    """
    nib = import_optional("nibabel", extra="volumes", needed_for="NIfTI volumes")

    try:
        image: Any = nib.load(path)
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as err:
        raise InputError(f"cannot read NIfTI {path!r}: {err}") from err
    header = image.header
    file_shape = tuple(int(n) for n in header.get_data_shape())
    if not 3 <= len(file_shape) <= 4 or min(file_shape) < 1:
        raise InputError(f"NIfTI {path!r} has shape {file_shape!r}; expected a 3-D volume (a 4th axis = channels)")
    slope, inter = _scaling(header)
    unit = _UNIT_MM.get(header.get_xyzt_units()[0], 1.0)
    zooms = header.get_zooms()[:3]
    return NiftiHeader(
        path=path,
        file_shape=file_shape,
        raw_dtype=np.dtype(header.get_data_dtype()),
        offset=int(image.dataobj.offset),  # nibabel's reading of vox_offset (0 means after the header)
        slope=slope,
        inter=inter,
        affine=np.asarray(image.affine, dtype=np.float64),
        spacing=check_spacing((zooms[2] * unit, zooms[1] * unit, zooms[0] * unit), path),
    )


def open_nifti(path: str, *, chunk: int | None, workdir: str | None) -> Volume:
    """A NIfTI volume: ``.nii`` memory-mapped, ``.nii.gz`` through its OME-Zarr copy in ``workdir``
    (default: the input's directory), converted first when no complete copy is there.

    Raises
    ------
    InputError
        As :func:`read_nifti_header`, or if a ``.nii.gz`` ends early.
    """
    header = read_nifti_header(path)
    if path.lower().endswith(".gz"):
        copy = nifti_copy_path(path, workdir)
        if not _copy_complete(copy):
            _convert_gz(header, copy)
        data = open_zarr_volume(copy, chunk=chunk).data
    else:
        regions = NiftiRegions(
            path,
            offset=header.offset,
            raw_dtype=header.raw_dtype,
            file_shape=header.file_shape,
            slope=header.slope,
            inter=header.inter,
        )
        data = lazy_volume(
            regions,
            shape=regions.shape,
            dtype=regions.dtype,
            chunks=volume_chunks(regions.shape[:3], chunk, whole_slices=True),
            token=(os.path.abspath(path), os.stat(path).st_mtime_ns),
        )
    return Volume(path=path, kind="nifti", data=data, spacing=header.spacing, affine=header.affine, reader="nibabel")


def _scaling(header: Any) -> tuple[float, float]:
    slope, inter = header.get_slope_inter()
    slope = 1.0 if slope is None or not math.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not math.isfinite(inter) else float(inter)
    return slope, inter


def nifti_copy_path(path: str, workdir: str | None) -> str:
    """Where the OME-Zarr copy of ``path`` lives: named after it and a hash of its identity."""
    stat = os.stat(path)
    identity = {"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    directory = workdir or os.path.dirname(os.path.abspath(path))
    return os.path.join(directory, f"{os.path.basename(path)}.{key}{COPY_SUFFIX}")


def _copy_complete(copy: str) -> bool:
    import zarr

    if not os.path.isdir(copy):
        return False
    try:
        attrs: dict[str, Any] = zarr.open_group(copy, mode="r").attrs.asdict()
        return bool(attrs.get("pixseg", {}).get("complete"))
    except (OSError, ValueError, KeyError, zarr.errors.NodeTypeValidationError):
        return False


def _convert_gz(header: NiftiHeader, copy: str) -> None:
    """Stream the voxels of a ``.nii.gz`` through its gzip stream into an OME-Zarr copy, a slab of
    whole ``k`` slices (at most ``SLAB_BYTES``, one zarr chunk deep) at a time; metadata last."""
    import zarr
    from nibabel.openers import ImageOpener

    path, raw_dtype, slope, inter = header.path, header.raw_dtype, header.slope, header.inter
    k, j, i, n_channels = header.shape
    depth = max(1, min(DEFAULT_VOLUME_CHUNK, SLAB_BYTES // (i * j * raw_dtype.itemsize)))
    logger.info("converting %s into %s, %d slices at a time", path, copy, depth)
    group = zarr.open_group(copy, mode="w", zarr_format=3)
    group.attrs["pixseg"] = {"complete": False, "source": os.path.abspath(path)}
    array = group.create_array(
        "0",
        shape=(k, j, i, n_channels),
        chunks=(depth, min(j, DEFAULT_VOLUME_CHUNK), min(i, DEFAULT_VOLUME_CHUNK), 1),
        dtype=scaled_dtype(raw_dtype, slope, inter),
        dimension_names=("z", "y", "x", "c"),
    )
    slice_bytes = i * j * raw_dtype.itemsize
    try:
        with ImageOpener(path, "rb") as stream:
            stream.seek(header.offset)
            for channel in range(n_channels):  # Fortran order: the 4th axis varies slowest
                for start in range(0, k, depth):
                    stop = min(start + depth, k)
                    buffer = stream.read(slice_bytes * (stop - start))
                    if len(buffer) != slice_bytes * (stop - start):
                        raise InputError(f"NIfTI {path!r} ends before its {k} slices of voxels")
                    raw = np.frombuffer(buffer, dtype=raw_dtype).reshape((i, j, stop - start), order="F")
                    array[start:stop, :, :, channel] = scale_voxels(raw.transpose(2, 1, 0), slope, inter)
    except (OSError, EOFError) as err:
        raise InputError(f"cannot read NIfTI {path!r}: {err}") from err
    axes: list[Any] = [{"name": axis, "type": "space", "unit": "millimeter"} for axis in "zyx"]
    axes.append({"name": "c", "type": "channel"})
    scale = [*header.spacing, 1.0]
    datasets: list[Any] = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]
    multiscales: list[Any] = [{"axes": axes, "datasets": datasets}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    group.attrs["pixseg"] = {"complete": True, "source": os.path.abspath(path)}


def open_zarr_volume(path: str, *, chunk: int | None) -> Volume:
    """A 3-D OME-Zarr image (axes ``z``, ``y``, ``x``, optionally ``c`` and a ``t`` of length 1),
    level 0, spacing from its scale (millimetres, or converted from its axes' length units).

    Raises
    ------
    InputError
        If it is not an OME-Zarr image with ``z``, ``y`` and ``x`` axes.
    """
    import dask.array as da
    import zarr

    try:
        group = zarr.open_group(path, mode="r")
        attrs: dict[str, Any] = group.attrs.asdict()
        multiscale = (attrs.get("ome", attrs).get("multiscales") or [None])[0]
        axes = [str(axis["name"]).lower() for axis in multiscale["axes"]]
        dataset = multiscale["datasets"][0]
        array = group[dataset["path"]]
    except (OSError, KeyError, TypeError, IndexError, zarr.errors.NodeTypeValidationError) as err:
        raise InputError(f"{path!r} is not an OME-Zarr image: {err!r}") from err
    if not {"z", "y", "x"} <= set(axes) or not set(axes) <= {"t", "c", "z", "y", "x"}:
        raise InputError(f"OME-Zarr {path!r} has axes {axes!r}; a volume needs z, y and x")
    scale = next((t["scale"] for t in dataset["coordinateTransformations"] if t["type"] == "scale"), [1.0] * len(axes))
    units = [_zarr_unit_mm(axis.get("unit")) for axis in multiscale["axes"]]
    spacing = check_spacing(tuple(scale[axes.index(a)] * units[axes.index(a)] for a in "zyx"), path)
    data = da.from_zarr(array)
    if "t" in axes:
        if data.shape[axes.index("t")] != 1:
            raise InputError(f"OME-Zarr {path!r} has {data.shape[axes.index('t')]} time points; a volume has one")
        data = data[tuple(0 if a == "t" else slice(None) for a in axes)]
        axes = [a for a in axes if a != "t"]
    if "c" not in axes:
        data, axes = data[..., np.newaxis], [*axes, "c"]
    data = data.transpose([axes.index(a) for a in "zyxc"])
    data = data.rechunk((*volume_chunks(data.shape[:3], chunk), -1))
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    return Volume(path=path, kind="ome-zarr", data=data, spacing=spacing, affine=affine, reader="zarr")


def _zarr_unit_mm(unit: str | None) -> float:
    """Millimetres per unit of an NGFF axis (1 when it has none)."""
    return {"micrometer": 1e-3, "nanometer": 1e-6, "meter": 1e3, "centimeter": 10.0}.get(unit or "", 1.0)
