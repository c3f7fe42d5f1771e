"""What a path holds (``pixseg info``): a pixseg output's status, a model file, or an input image's layout."""

from __future__ import annotations

import os
from typing import Any

from pixseg.io.label_groups import labels_inside, read_label_zarr_status
from pixseg.io.label_tiff import interrupted_tiff_write, read_label_tiff_status
from pixseg.io.locks import lock_path_for, read_lock
from pixseg.io.model_file import load_model, model_document, model_from_document
from pixseg.io.readers import describe_chunks, list_series, open_image
from pixseg.io.remote import exists, is_dir, is_url
from pixseg.io.side_files import side_file_base
from pixseg.layout import conversion_reason
from pixseg.model import SegmentationModel


def describe(path: str, *, level: int = 0) -> dict[str, Any]:
    """What ``path`` holds: a pixseg output's status, a model file, or an input image's layout.

    Returns
    -------
    dict
        ``{"kind": "output", ...status}`` for a pixseg output (with ``complete``);
        ``{"kind": "model", ...}`` for a model file (``.json``); both with the model's summary
        (:func:`model_summary`) and its document under ``model``. Else ``{"kind": "input", ...}``
        with format, the reader that decodes it, shape, dtype, chunks, pyramid levels, pixel size
        (``unknown`` when the file does not say) and, for a file holding several, every series
        (index, name, shape, axes). With ``lock``
        (``held by pid P on 'HOST' since TIME (heartbeat N s ago)``) when a lock file is beside
        it: a run is writing it, or one left the lock behind (``stale``).

    Raises
    ------
    InputError
        If ``path`` is none of these.
    ModelError
        If a ``.json`` path is not a readable pixseg model, or an output's model is malformed.
    OutputError
        If its lock file cannot be read.
    """
    lock = _describe_lock(path)
    if lock and not exists(path):
        return {"kind": "output", "path": path, "complete": False, **lock, "note": "not written yet"}
    if path.lower().endswith(".json"):
        model = load_model(path)
        return {"kind": "model", "path": path, **model_summary(model), "model": model_document(model)}
    return {**_describe(path, level=level), **lock}


def model_summary(model: SegmentationModel) -> dict[str, str]:
    """A model's fit choices in words: its preset, features, K and how K was chosen, its classes.

    Returns
    -------
    dict
        ``preset`` (``none`` without one), ``features`` (the groups, comma-separated),
        ``clusters`` (K, and the criterion and range when ``--clusters auto`` chose it) and
        ``classes`` (how many, or ``none`` when labels are the clusters).
    """
    choice = model.k_choice
    clusters = f"{model.n_clusters} (given)"
    if choice is not None:
        tried = [int(row["k"]) for row in choice.table]
        clusters = f"{choice.chosen} (chosen by highest {choice.criterion} among K = {min(tried)}..{max(tried)})"
    table = model.classes
    classes = "none (labels are the clusters)"
    if table is not None:
        classes = f"{table.n_classes} (" + ", ".join(c.title for c in table.classes) + ")"
    return {
        "preset": model.preset or "none",
        "features": ",".join(model.feature_spec.groups),
        "clusters": clusters,
        "classes": classes,
    }


def _describe_lock(path: str) -> dict[str, str]:
    """``{"lock": ...}`` when a lock file is beside the output ``path``, else empty."""
    holder = read_lock(lock_path_for(side_file_base(path)))
    if holder is None:
        return {}
    if holder.is_stale():
        return {"lock": f"stale (the next run takes it over): left by {holder.describe()}"}
    return {"lock": f"held by {holder.describe()}"}


def _describe(path: str, *, level: int) -> dict[str, Any]:
    directory = is_dir(path)
    inside = labels_inside(path) if directory and not is_url(path) else None
    if inside is not None:  # an image written with --with-image: describe its labels
        return {**_describe(inside, level=level), "image": path}
    if directory:
        status = read_label_zarr_status(path)
    elif os.path.isfile(path) and path.lower().endswith((".tif", ".tiff")):
        status = read_label_tiff_status(path)
    else:
        status = None
    if status is None and interrupted_tiff_write(path):
        return {"kind": "output", "path": path, "complete": False, "note": "TIFF write was interrupted"}
    if status is not None and "model" in status:
        return {"kind": "output", "path": path, **status, **model_summary(model_from_document(status["model"], path))}
    if status is not None and not status.get("complete"):
        return {"kind": "converted image", "path": path, **status}
    image = open_image(path, level=level)
    series = list_series(path)
    return {
        "kind": "input",
        "path": path,
        "format": f"{image.kind} ({image.flavour})" if image.flavour else image.kind,
        "reader": image.reader,
        **({"series": "; ".join(s.describe() for s in series)} if len(series) > 1 else {}),
        "shape": image.shape,
        "dtype": image.dtype.name,
        "alpha": image.has_alpha,
        "chunks": describe_chunks(image),
        "levels": image.level_shapes,
        "pixel_size_um": (
            tuple(float(f"{size:.6g}") for size in image.pixel_size)
            if image.pixel_size
            else "unknown (areas in pixels; --pixel-size sets it)"
        ),
        "convert": f"yes: {reason}" if (reason := conversion_reason(image)) else "no: its layout reads well directly",
    }
