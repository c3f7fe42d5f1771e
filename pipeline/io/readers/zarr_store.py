"""zarr arrays (v2 and v3), OME-Zarr multiscale groups and bioformats2raw stores, read through zarr.

A bioformats2raw store (a root group with a ``bioformats2raw.layout`` attribute, one OME-Zarr image
per series in groups ``0/``, ``1/``..., names in ``OME/METADATA.ome.xml``) is read at its first
series, or the one ``--series`` picks. Z and T axes of a multiscale are read at the plane
``--plane`` picks (see :mod:`pixseg.io.readers.selection`).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any
from xml.etree import ElementTree

import numpy as np
import zarr
import zarr.errors

from pixseg.errors import InputError
from pixseg.io.readers._base import RegionReader, check_decode_size, input_errors
from pixseg.io.readers.pixel_size import MICROMETRES
from pixseg.io.readers.selection import Selection, SeriesInfo, canonical_axes, choose_series, yx
from pixseg.io.remote import exists, join, read_file, zarr_location

ZARR_SUFFIXES = (".zarr",)
#: Metadata files whose presence makes a directory a zarr store (v3, then v2).
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")

#: What zarr raises for a damaged or incomplete store, as seen by fuzzing v2, v3 and OME-Zarr
#: stores (metadata bytes flipped or cut, files deleted): its own errors (``zarr.errors.BaseZarrError``
#: is a ValueError; ``NodeNotFoundError`` also a FileNotFoundError); ValueError, including
#: json.JSONDecodeError and UnicodeDecodeError, from unparseable metadata; KeyError for a missing
#: metadata field; OSError from the store. A TypeError counts only when zarr itself raises it
#: (a metadata document with unexpected fields; see ``input_errors``).
ZARR_OPEN_ERRORS: tuple[type[BaseException], ...] = (
    zarr.errors.BaseZarrError,
    json.JSONDecodeError,
    ValueError,
    KeyError,
    OSError,
)
#: What reading a chunk of a damaged store raises: the above, IndexError from a chunk of the wrong
#: size, and RuntimeError from the codecs (numcodecs' Zstd and Blosc report corrupt data so).
ZARR_DECODE_ERRORS: tuple[type[BaseException], ...] = (*ZARR_OPEN_ERRORS, IndexError, RuntimeError)


def sniff_zarr(path: str) -> bool:
    """Whether the directory ``path`` holds zarr metadata (``zarr.json``, ``.zgroup`` or ``.zarray``)."""
    return any(exists(join(path, marker)) for marker in ZARR_MARKERS)


def zarr_series(path: str) -> tuple[SeriesInfo, ...]:
    """Every series of a bioformats2raw store (index, name, shape and axes of level 0); empty for
    any other zarr store, which holds one image.

    Raises
    ------
    InputError
        If the store or its metadata is unreadable.
    """
    with input_errors(f"cannot open zarr store {path!r}", ZARR_OPEN_ERRORS, library="zarr"):
        node = zarr.open(zarr_location(path), mode="r")
        if isinstance(node, zarr.Array) or not _is_bioformats2raw(node.attrs.asdict()):
            return ()
        found = []
        for index, (group, name) in enumerate(zip(*_bioformats2raw_series(path, node), strict=True)):
            attrs = node[group].attrs.asdict()
            ome = attrs.get("ome")
            dataset_paths, axes, _ = _ome_datasets((ome if isinstance(ome, dict) else attrs).get("multiscales"), path)
            shape = tuple(int(n) for n in _open_array(path, f"{group}/{dataset_paths[0]}").shape)
            found.append(SeriesInfo(index, name, shape, axes))
    return tuple(found)


def open_zarr(path: str, level: int, max_bytes: int, select: Selection) -> RegionReader:
    """Region reader over a zarr array, the one array of a group, level ``level`` of an OME-Zarr, or of
    series ``select.series`` (default 0) of a bioformats2raw store; at the plane ``select.plane`` picks.

    Raises
    ------
    InputError
        If the store or its metadata is unreadable, names no usable array, the series, plane or
        ``level`` does not exist, a Z or T stack has no plane picked, or one chunk (the inner chunk
        of a sharded array) decodes to more than ``max_bytes``.
    """
    with input_errors(f"cannot open zarr store {path!r}", ZARR_OPEN_ERRORS, library="zarr"):
        node = zarr.open(zarr_location(path), mode="r")
        root, flavour = "", ""
        if isinstance(node, zarr.Group) and _is_bioformats2raw(node.attrs.asdict()):
            groups, names = _bioformats2raw_series(path, node)
            root, flavour = groups[choose_series(path, names, select.series)], "bioformats2raw"
            node = node[root]
        else:
            choose_series(path, [os.path.basename(path.rstrip("/" + os.sep))], select.series)
    kind = "zarr"
    has_alpha = False
    pixel_sizes: list[tuple[float, float] | None] = []
    if isinstance(node, zarr.Array):
        dataset_paths = [""]
        axes = _array_axes(node, path)
    else:
        attrs = node.attrs.asdict()
        ome = attrs.get("ome")
        multiscales = (ome if isinstance(ome, dict) else attrs).get("multiscales")
        if multiscales:
            kind = "ome-zarr"
            dataset_paths, axes, pixel_sizes = _ome_datasets(multiscales, path)
            # pixseg's own copies (``pixseg convert``) say whether the last channel is alpha
            written = attrs.get("pixseg")
            has_alpha = isinstance(written, dict) and written.get("alpha") is True
        else:
            names = sorted(name for name, _ in node.arrays())
            if len(names) != 1:
                found = f"arrays {names!r}" if names else "no arrays"
                raise InputError(
                    f"zarr group {path!r} has no OME-Zarr 'multiscales' metadata and {found}; "
                    "point at one array (e.g. PATH/NAME) instead"
                )
            dataset_paths = names
            axes = ""
    if level >= len(dataset_paths):
        raise InputError(f"--level {level} does not exist in {path!r}: it has {len(dataset_paths)} level(s)")
    dataset_paths = [f"{root}/{p}" if root else p for p in dataset_paths]
    with input_errors(f"cannot open the arrays of zarr store {path!r}", ZARR_OPEN_ERRORS, library="zarr"):
        arrays = [_open_array(path, p) for p in dataset_paths]
    chosen = arrays[level]
    if not axes:
        axes = _array_axes(chosen, path)
    if len(axes) != chosen.ndim:
        raise InputError(f"zarr {path!r}: metadata names {len(axes)} axes but the array has {chosen.ndim} dimensions")
    canonical = canonical_axes(axes, chosen.shape, path, select.plane)
    check_decode_size(path, "chunks", chosen.chunks, chosen.dtype, max_bytes)
    chunk_of = dict(zip(canonical, chosen.chunks, strict=True))
    return RegionReader(
        path=path,
        kind=kind,
        open_native=functools.partial(_open_array, path, dataset_paths[level]),
        native_axes=canonical,
        native_shape=tuple(int(n) for n in chosen.shape),
        dtype=np.dtype(chosen.dtype),
        native_chunks=(int(chunk_of["Y"]), int(chunk_of["X"])),
        level_shapes=tuple(yx(canonical, a.shape) for a in arrays),
        has_alpha=has_alpha,
        decode_errors=ZARR_DECODE_ERRORS,
        pixel_size=pixel_sizes[level] if pixel_sizes else None,
        plane=select.plane,
        reader="zarr",
        flavour=flavour,
    )


def _is_bioformats2raw(attrs: dict[str, Any]) -> bool:
    """Whether a root group's attributes mark a bioformats2raw store (NGFF 0.4, or 0.5 under ``ome``)."""
    ome = attrs.get("ome")
    return "bioformats2raw.layout" in attrs or (isinstance(ome, dict) and "bioformats2raw.layout" in ome)


def _bioformats2raw_series(path: str, root: Any) -> tuple[list[str], list[str]]:
    """The series groups of a bioformats2raw store (``OME``'s ``series`` list, else the numbered groups)
    and their names (from ``OME/METADATA.ome.xml``, else the group names).

    Raises
    ------
    InputError
        If the store has no series group.
    """
    groups = sorted((name for name, _ in root.groups() if name.isdigit()), key=int)
    if "OME" in root:
        attrs = root["OME"].attrs.asdict()
        listed = (attrs["ome"] if isinstance(attrs.get("ome"), dict) else attrs).get("series")
        if isinstance(listed, list) and listed:
            groups = [str(name) for name in listed]
    if not groups:
        raise InputError(f"bioformats2raw store {path!r} holds no series groups (0/, 1/, ...)")
    names = list(groups)
    try:
        xml = ElementTree.fromstring(read_file(join(path, "OME", "METADATA.ome.xml")))
    except (OSError, ElementTree.ParseError):  # optional: the group names stand in
        return groups, names
    images = [el.attrib.get("Name", "") for el in xml.iter() if el.tag.rpartition("}")[2] == "Image"]
    if len(images) == len(groups):
        names = [image or group for image, group in zip(images, groups, strict=True)]
    return groups, names


def _open_array(path: str, array_path: str) -> Any:
    return zarr.open_array(zarr_location(join(path, array_path) if array_path else path), mode="r")


def _ome_datasets(multiscales: Any, path: str) -> tuple[list[str], str, list[tuple[float, float] | None]]:
    """Dataset paths, axis letters and per-level (Y, X) pixel size in micrometres of a multiscale."""
    try:
        first = multiscales[0]
        dataset_paths = [str(d["path"]) for d in first["datasets"]]
        axes_meta = first.get("axes") or []
        axes = "".join(str(a["name"] if isinstance(a, dict) else a)[0].upper() for a in axes_meta)
        pixel_sizes = [_ome_pixel_size(axes_meta, first, d) for d in first["datasets"]]
    except (KeyError, IndexError, TypeError, ValueError) as err:  # JSON of the wrong shape
        raise InputError(f"OME-Zarr {path!r} has malformed 'multiscales' metadata: {err!r}") from err
    if not dataset_paths:
        raise InputError(f"OME-Zarr {path!r} lists no datasets in its 'multiscales' metadata")
    return dataset_paths, axes, pixel_sizes


def _ome_pixel_size(
    axes_meta: list[Any], multiscale: dict[str, Any], dataset: dict[str, Any]
) -> tuple[float, float] | None:
    """(Y, X) micrometres per pixel of one dataset: its scale times the multiscale's, in the axes' units."""
    names = [str(a.get("name", "")).lower() if isinstance(a, dict) else str(a).lower() for a in axes_meta]
    if "y" not in names or "x" not in names:
        return None
    scale = [1.0] * len(names)
    for transforms in (dataset.get("coordinateTransformations"), multiscale.get("coordinateTransformations")):
        for transform in transforms or []:
            if transform.get("type") == "scale":
                scale = [a * float(b) for a, b in zip(scale, transform["scale"], strict=True)]
    sizes = []
    for axis in ("y", "x"):
        meta = axes_meta[names.index(axis)]
        unit = meta.get("unit") if isinstance(meta, dict) else None
        if unit not in MICROMETRES:
            return None
        sizes.append(scale[names.index(axis)] * MICROMETRES[unit])
    return sizes[0], sizes[1]


def _array_axes(array: Any, path: str) -> str:
    names = getattr(array.metadata, "dimension_names", None)
    if names and all(names):
        return "".join(str(n)[0].upper() for n in names)
    if array.ndim == 2:
        return "YX"
    if array.ndim == 3:
        return "YXC" if array.shape[2] <= 4 or array.shape[0] > 4 else "CYX"
    raise InputError(
        f"zarr array {path!r} has {array.ndim} dimensions and no dimension_names; expected (Y, X) or (Y, X, C)"
    )
