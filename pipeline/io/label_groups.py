"""OME-Zarr label groups as a whole: their OME metadata, written last; the ``labels`` group of an
image; a group's status; opening its levels; removing only pixseg's own output; where its side
files go. The label pass that fills the levels chunk by chunk is :mod:`pixseg.io.label_zarr`.
"""

from __future__ import annotations

import math
import os
import shutil
from typing import Any, cast

import zarr

from pixseg.errors import OutputError
from pixseg.io.label_tiff import read_label_tiff_status
from pixseg.io.remote import exists, is_url, remove, zarr_location
from pixseg.io.side_files import SIDE_SUFFIXES, side_file_base

#: The metadata documents of a zarr group (v3, v2).
_GROUP_DOCUMENTS = ("zarr.json", ".zgroup")


def ome_label_metadata(
    *,
    n_levels: int,
    name: str,
    pixel_size: tuple[float, float] | None,
    properties: list[dict[str, Any]],
    source_image: str | None,
) -> dict[str, Any]:
    """``multiscales`` and ``image-label`` of a label pyramid (without the version keys).

    NGFF's scale and translation map an array index to the physical position of that pixel's
    centre. Level ``n`` holds every ``2**n``-th pixel of level 0 from index 0 (a stride, never a
    mean: see :func:`reduce_chunk`), so its pixel ``i`` is level-0 pixel ``i * 2**n``: its scale is
    ``2**n`` times level 0's and its translation is zero, so none is written. (A mean-downsampled
    image level is centred ``(2**n - 1) / 2`` level-0 pixels further: see
    :func:`pixseg.io.image_zarr.finalise_image_zarr`.)

    ``properties`` are the statistics rows (:func:`pixseg.statistics.label_table`): the
    ``image-label`` colours are their ``colour_rgba``, and their other plain values (name, pixels,
    mean colour...) are the label properties.
    """
    base = pixel_size or (1.0, 1.0)
    axes: list[dict[str, Any]] = [{"name": axis, "type": "space"} for axis in ("y", "x")]
    if pixel_size is not None:
        for axis in axes:
            axis["unit"] = "micrometer"
    datasets = [
        {
            "path": str(level),
            "coordinateTransformations": [{"type": "scale", "scale": [base[0] * 2**level, base[1] * 2**level]}],
        }
        for level in range(n_levels)
    ]
    image_label: dict[str, Any] = {
        "colors": [{"label-value": row["label"], "rgba": list(row["colour_rgba"])} for row in properties],
        "properties": [{"label-value": row["label"], **_plain(row)} for row in properties],
    }
    if source_image is not None:
        image_label["source"] = {"image": source_image}
    return {"multiscales": [{"name": name, "axes": axes, "datasets": datasets}], "image-label": image_label}


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    left_out = ("label", "centroid", "colour_rgba")
    return {key: value for key, value in row.items() if key not in left_out and value is not None}


def finalise_label_zarr(path: str, *, ngff: str, ome: dict[str, Any], extra: dict[str, Any]) -> None:
    """Write the OME metadata and mark the output complete (call after every chunk is stored).

    Parameters
    ----------
    path : str
        A group made by :func:`pixseg.io.label_zarr.create_label_zarr`.
    ngff : str
        ``"0.5"`` or ``"0.4"``.
    ome : dict
        From :func:`ome_label_metadata`.
    extra : dict
        Added to ``attrs["pixseg"]`` (statistics, levels...).
    """
    group = zarr.open_group(zarr_location(path, writable=True), mode="r+")
    if ngff == "0.5":
        group.attrs["ome"] = {"version": ngff, **ome}
    else:
        group.attrs["multiscales"] = [{"version": ngff, **ome["multiscales"][0]}]
        group.attrs["image-label"] = {"version": ngff, **ome["image-label"]}
    group.attrs["pixseg"] = {**cast(dict[str, Any], group.attrs["pixseg"]), **extra, "complete": True}


def reopen_label_zarr(path: str, *, extra: dict[str, Any]) -> dict[str, Any] | None:
    """Mark a label group incomplete again before it is rewritten in place (``pixseg relabel``).

    Its OME metadata is removed (a viewer then never shows a half-rewritten group) and returned,
    versions left out, as :func:`ome_label_metadata` makes it (None if it has none: a rewrite
    interrupted before); ``extra`` is merged into ``attrs["pixseg"]`` with ``complete = False``.
    :func:`finalise_label_zarr` completes it again.
    """
    group = zarr.open_group(path, mode="r+")
    attrs = cast(dict[str, Any], group.attrs.asdict())
    if isinstance(attrs.get("ome"), dict):
        ome: dict[str, Any] | None = {k: v for k, v in attrs["ome"].items() if k != "version"}
    elif "multiscales" in attrs and "image-label" in attrs:
        multiscales = [{k: v for k, v in attrs["multiscales"][0].items() if k != "version"}]
        ome = {
            "multiscales": multiscales,
            "image-label": {k: v for k, v in attrs["image-label"].items() if k != "version"},
        }
    else:
        ome = None
    group.attrs.put({"pixseg": {**cast(dict[str, Any], attrs["pixseg"]), **extra, "complete": False}})
    return ome


def prepare_labels_group(image_path: str) -> str:
    """Make sure an OME-Zarr image has a ``labels`` group; return the image's NGFF version.

    Only the ``labels`` group is created or opened: the image's arrays are never touched.
    """
    image = zarr.open_group(image_path, mode="r")
    ngff = "0.5" if image.metadata.zarr_format == 3 else "0.4"
    try:
        zarr.open_group(os.path.join(image_path, "labels"), mode="a", zarr_format=image.metadata.zarr_format)
    except OSError as err:
        raise OutputError(f"cannot create the labels group of {image_path!r}: {err}") from err
    return ngff


def register_label(image_path: str, name: str, *, ngff: str) -> None:
    """Add ``name`` to the ``labels`` list of an OME-Zarr image's ``labels`` group (metadata last)."""
    group = zarr.open_group(os.path.join(image_path, "labels"), mode="r+")
    if ngff == "0.5":
        ome = dict(cast(dict[str, Any], group.attrs.get("ome") or {}))
        names = [n for n in ome.get("labels", []) if n != name] + [name]
        group.attrs["ome"] = {**ome, "version": ngff, "labels": names}
    else:
        names = [n for n in cast(list[str], group.attrs.get("labels", [])) if n != name] + [name]
        group.attrs["labels"] = names


def read_label_zarr_status(path: str) -> dict[str, Any] | None:
    """pixseg's metadata of a label output plus chunk progress, or ``None`` if ``path`` is not one.

    Returns
    -------
    dict or None
        ``attrs["pixseg"]`` with ``levels`` (shapes), ``chunks``, ``dtype``, ``chunks_written``
        and ``chunks_total`` (over all levels) added, and for a label output ``side_files``: those
        of its side files that exist (see :func:`label_side_base`).
    """
    try:
        group = zarr.open_group(zarr_location(path), mode="r")
    except Exception:  # not a zarr group at all
        return None
    meta = group.attrs.get("pixseg")
    if not isinstance(meta, dict):
        return None
    arrays = open_label_levels(path)  # the levels by name: a stray file in the group is never listed
    status = dict(meta)
    if arrays:
        status.update(
            levels=[tuple(a.shape) for a in arrays],
            chunks=tuple(arrays[0].chunks),
            dtype=str(arrays[0].dtype),
            chunks_written=sum(int(a.nchunks_initialized) for a in arrays),
            chunks_total=sum(math.prod(a.cdata_shape) for a in arrays),
        )
    if "model" in status:
        status["side_files"] = _existing_side_files(path)
    return status


def open_label_levels(path: str, *, writable: bool = False) -> list[zarr.Array]:
    """The label arrays of an output group, full resolution first (read-only unless ``writable``)."""
    group = zarr.open_group(zarr_location(path, writable=writable), mode="r+" if writable else "r")
    arrays: list[zarr.Array] = []
    while str(len(arrays)) in group:
        array = group[str(len(arrays))]
        assert isinstance(array, zarr.Array)
        arrays.append(array)
    return arrays


def remove_output(path: str) -> None:
    """Delete the pixseg output at ``path``, if any: a zarr group with pixseg's metadata (a label
    output, finished or interrupted, or a converted image) or a TIFF with pixseg's tag.

    Nothing else is ever deleted: a symlink is neither followed nor removed (pixseg never makes
    one, so one there was planted), and a directory is removed without following the symlinks
    inside it (:func:`shutil.rmtree`).

    Raises
    ------
    OutputError
        If ``path`` is a symlink or not a pixseg output (nothing is deleted), or cannot be deleted.
    """
    if is_url(path):
        _remove_remote_output(path)
        return
    if not os.path.lexists(path):
        return
    if os.path.islink(path):
        raise OutputError(f"refusing to remove {path!r}: it is a symlink to {os.readlink(path)!r}, not a pixseg output")
    directory = os.path.isdir(path)
    status = read_label_zarr_status(path) if directory else read_label_tiff_status(path)
    if status is None:
        raise OutputError(f"refusing to remove {path!r}: it is not a pixseg output")
    try:
        if directory:
            shutil.rmtree(path)
        else:
            os.remove(path)
    except OSError as err:
        raise OutputError(f"cannot remove existing output {path!r}: {err}") from err


def _remove_remote_output(url: str) -> None:
    """:func:`remove_output` of a zarr group in object storage: every object under its prefix,
    only when the group carries pixseg's metadata."""
    if not exists(url):
        return
    if read_label_zarr_status(url) is None:
        raise OutputError(f"refusing to remove {url!r}: it is not a pixseg output")
    remove(url, recursive=True)


def label_side_base(output_path: str) -> str:
    """The prefix of the side files of the label output ``output_path``: the output's own path, or
    for ``IMAGE/labels/NAME`` inside a zarr image, ``IMAGE.NAME`` beside the image's store, so
    side files never land inside a zarr hierarchy."""
    stripped = output_path.rstrip("/")
    if is_url(stripped):  # never inside an image: pixseg writes no labels into a remote image
        return side_file_base(stripped)
    labels_dir, name = os.path.split(stripped)
    image, labels = os.path.split(labels_dir)
    if labels == "labels" and any(os.path.isfile(os.path.join(image or ".", n)) for n in _GROUP_DOCUMENTS):
        return f"{os.path.abspath(image or '.')}.{name}"
    return side_file_base(stripped)


def _existing_side_files(output_path: str) -> list[str]:
    base = label_side_base(output_path)
    if is_url(base):
        return [base + suffix for suffix in SIDE_SUFFIXES if exists(base + suffix)]
    return [base + suffix for suffix in SIDE_SUFFIXES if os.path.isfile(base + suffix)]


def labels_inside(path: str) -> str | None:
    """The first pixseg label output registered in the ``labels`` group of the OME-Zarr image
    ``path``, or None (``path`` is a label output itself, or holds none)."""
    status = read_label_zarr_status(path)
    if is_url(path) or (status is not None and "model" in status) or not os.path.isdir(os.path.join(path, "labels")):
        return None
    try:
        attrs = zarr.open_group(os.path.join(path, "labels"), mode="r").attrs
    except zarr.errors.GroupNotFoundError:  # a folder named labels, not a zarr group
        return None
    ome = attrs.get("ome")
    names = ome.get("labels", []) if isinstance(ome, dict) else attrs.get("labels", [])
    for name in names if isinstance(names, list) else []:
        candidate = os.path.join(path, "labels", str(name))
        found = read_label_zarr_status(candidate) if os.path.isdir(candidate) else None
        if found is not None and "model" in found:
            return candidate
    return None
