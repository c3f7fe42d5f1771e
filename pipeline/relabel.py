"""Class tables applied to files: ``pixseg classes`` (a model file) and ``pixseg relabel`` (an output).

``relabel`` rewrites a finished OME-Zarr output for another class table from the cluster ids it
keeps, without predicting again (no features, no dask-ml): an output written with classes keeps
its level-0 cluster ids in the array ``clusters``; one written without keeps them in its levels
and gets that array, copied from level 0, first. Then level 0 is rewritten chunk by chunk as
class ids, the coarser levels from it, the statistics from the per-cluster counts and colour sums
the output stores, and the metadata last. An interrupted relabel leaves the output incomplete
and marked as a relabel: running ``pixseg relabel`` again (with this table or another) redoes it,
since every chunk is rewritten from the kept cluster ids. A TIFF output keeps only its label
values, so it cannot be relabelled (apply the class model again).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pixseg.classes import ClassEdits, ClassTable, classes_from_mapping, edit_classes, identity_table
from pixseg.compute import compute
from pixseg.errors import InputError, ModelError, OutputError, OutputExistsError, ParameterError
from pixseg.io.json_files import read_json_object
from pixseg.io.label_groups import (
    finalise_label_zarr,
    label_side_base,
    labels_inside,
    ome_label_metadata,
    open_label_levels,
    read_label_zarr_status,
    reopen_label_zarr,
)
from pixseg.io.label_tiff import read_label_tiff_status
from pixseg.io.label_zarr import create_cluster_ids, open_cluster_ids, relabel_level
from pixseg.io.locks import lock_path_for, output_lock
from pixseg.io.model_file import MODEL_FORMAT, model_document, model_from_document, read_model_document, save_model
from pixseg.labelling import cluster_summary, write_pyramid, write_side_files
from pixseg.model import SegmentationModel
from pixseg.report import ReportRun
from pixseg.statistics import label_statistics

logger = logging.getLogger(__name__)


def name_classes(
    model_path: str,
    *,
    edits: ClassEdits | None = None,
    table_path: str | None = None,
    output: str | None = None,
    in_place: bool = False,
    overwrite: bool = False,
) -> tuple[SegmentationModel, str | None]:
    """Give a model's clusters names, merges and colours, and save it as a new model file.

    Parameters
    ----------
    model_path : str
        A model file (any schema version). Never modified unless ``in_place``.
    edits : ClassEdits, optional
        ``--name``/``--merge``/``--colour``, applied to the model's table (or to ``table_path``'s).
    table_path : str, optional
        A class YAML file (see :func:`pixseg.classes.classes_from_mapping`) or a model file with
        classes: it replaces the model's table.
    output : str, optional
        The new ``.json`` model file (the model and its provenance, with the class table).
    in_place : bool
        Replace ``model_path`` itself instead.
    overwrite : bool
        Replace an existing ``output`` model file.

    Returns
    -------
    model : SegmentationModel
        The model with its (new) class table.
    written : str or None
        The file written; None when there was nothing to change (the table is only shown).

    Raises
    ------
    ParameterError
        For a bad edit or table, or edits without ``output``/``in_place``.
    ModelError, ConfigError, OutputError
        For an unreadable model or table, or a destination that is not a model file.
    """
    edits = edits or ClassEdits()
    document = read_model_document(model_path)
    model = model_from_document(document, model_path)
    if table_path is None and edits.empty:
        return model, None
    table = model.classes if table_path is None else read_classes(table_path, model)
    if not edits.empty:
        table = edit_classes(table, edits, n_clusters=model.n_clusters)
    destination = model_path if in_place else output
    if destination is None:
        raise ParameterError("pixseg classes writes a new model: pass -o NEW.json (or --in-place to replace the model)")
    if not in_place:
        _check_model_destination(destination, model_path, overwrite=overwrite)
    named = dataclasses.replace(model, classes=table)
    provenance = document.get("provenance") if isinstance(document.get("provenance"), dict) else {}
    save_model(named, destination, provenance=provenance)
    return named, destination


def _check_model_destination(path: str, model_path: str, *, overwrite: bool) -> None:
    """Refuse a destination that is not ``.json``, is the model itself, or holds anything but a
    pixseg model file (a model file only with ``overwrite``)."""
    if not path.lower().endswith(".json"):
        raise ParameterError(f"-o {path!r}: model files end in .json")
    if os.path.lexists(path):
        if os.path.exists(model_path) and os.path.samefile(path, model_path):
            raise ParameterError(f"-o {path!r} is the model itself; pass --in-place to replace it")
        document = None if os.path.islink(path) else read_json_object(path)
        if document is None or document.get("format") != MODEL_FORMAT:
            raise OutputError(f"refusing to replace {path!r}: it is not a pixseg model file")
        if not overwrite:
            raise OutputExistsError(f"model file {path!r} already exists; pass --overwrite to replace it")


def read_classes(path: str, model: SegmentationModel) -> ClassTable | None:
    """The class table of ``path`` for ``model``'s clusters: a model file (``.json``) of the same
    clusters (its table, None if it has none), or a class YAML file.

    Raises
    ------
    ModelError
        If a model file's clusters are not ``model``'s.
    ConfigError, ParameterError
        For an unreadable or bad YAML table.
    """
    if path.lower().endswith(".json"):
        other = model_from_document(read_model_document(path), path)
        same_features = other.reading_alpha(model.feature_spec.has_alpha).feature_spec == model.feature_spec
        if not (same_features and np.array_equal(other.centroids, model.centroids)):
            raise ModelError(f"model {path!r} has other clusters than the model the labels were made with")
        return other.classes
    from pixseg.config import read_yaml_mapping  # the same safe, bounded reader as run configs

    return classes_from_mapping(read_yaml_mapping(path, what="classes file"), n_clusters=model.n_clusters, source=path)


@dataclass(frozen=True)
class RelabelResult:
    """What ``pixseg relabel`` wrote: the output, its rows per class, its side files, and the time."""

    output: str
    model: SegmentationModel
    statistics: list[dict[str, Any]]
    side_files: list[str]
    seconds: float


def relabel(output_path: str, classes_path: str, *, progress: bool = False) -> RelabelResult:
    """Rewrite a finished OME-Zarr output for the class table of ``classes_path`` (see the module
    docstring); the result equals ``apply`` with the model carrying that table.

    Parameters
    ----------
    output_path : str
        A ``.zarr`` label output (or an OME-Zarr image holding one in its ``labels`` group), complete
        or left by an interrupted relabel.
    classes_path : str
        A model file of the same clusters with classes (without: back to the cluster ids), or a
        class YAML file.
    progress : bool
        Show progress bars on stderr.

    Raises
    ------
    InputError
        If the output is missing, a TIFF, not a pixseg output, interrupted (not by a relabel), or
        written without per-cluster statistics.
    ModelError, ParameterError, ConfigError
        For a bad class table.
    """
    started = time.perf_counter()
    path = _label_group(output_path)
    with output_lock(lock_path_for(label_side_base(path))):
        status = read_label_zarr_status(path)
        assert status is not None, "checked by _label_group"
        marker = status.get("relabel") if isinstance(status.get("relabel"), dict) else None
        interrupted = marker is not None and not marker.get("done")
        if not status.get("complete") and not interrupted:
            raise InputError(f"output {output_path!r} is incomplete: finish it with --resume first")
        if "cluster_counts" not in status or "input_dtype" not in status:
            raise InputError(
                f"output {output_path!r} was written without per-cluster statistics (an older pixseg): "
                "apply the class model to the input again"
            )
        old = model_from_document(status["model"], path)
        model = dataclasses.replace(old, classes=read_classes(classes_path, old) or identity_table(old.n_clusters))
        assert model.classes is not None
        if interrupted and marker is not None:  # the original fingerprint and OME metadata are in the marker
            fingerprint, ome = marker["fingerprint"], marker["ome"]
        else:
            fingerprint, ome = status.get("fingerprint"), reopen_label_zarr(path, extra={})
        assert ome is not None, "a finished label group has OME metadata"
        marker = {"done": False, "from": classes_path, "fingerprint": fingerprint, "ome": ome}
        # a --resume of segment/apply must not take a half-relabelled output for its own
        reopen_label_zarr(
            path, extra={"fingerprint": {"relabel": "interrupted: run pixseg relabel"}, "relabel": marker}
        )
        arrays = open_label_levels(path, writable=True)
        clusters = _cluster_ids(path, arrays, old, cluster_ids=bool(status.get("cluster_ids")), progress=progress)
        lookup = _level_lookup(model.classes, arrays[0].dtype, output_path)
        logger.info("relabelling %s into %d classes", path, model.classes.n_classes)
        compute(*relabel_level(clusters, arrays[0], lookup), progress=progress)
        write_pyramid(arrays, first=1)
        size = status.get("pixel_size_um")
        pixel_size = (float(size[0]), float(size[1])) if size else None
        counts, sums = np.asarray(status["cluster_counts"], np.int64), np.asarray(status["cluster_sums"], np.float64)
        statistics, _ = label_statistics(
            counts, sums, model, pixel_size=pixel_size, dtype=np.dtype(status["input_dtype"])
        )
        summary = {"masked_pixels": int(counts[0]), "pixel_size_um": list(pixel_size) if pixel_size else None}
        multiscales = ome["multiscales"][0]
        new_ome = ome_label_metadata(
            n_levels=len(arrays),
            name=multiscales.get("name", os.path.basename(path)),
            pixel_size=pixel_size,
            properties=statistics,
            source_image=(ome["image-label"].get("source") or {}).get("image"),
        )
        extra = {
            **summary,
            **cluster_summary(counts, sums, model, input_dtype=np.dtype(status["input_dtype"])),
            "statistics": statistics,
            "model": model_document(model),
            "fingerprint": fingerprint,
            "cluster_ids": True,
            "relabel": {"done": True, "from": classes_path},
        }
        side_files = _rewrite_side_files(path, status, statistics, summary, arrays, model, started)
        finalise_label_zarr(path, ngff=str(status.get("ngff", "0.5")), ome=new_ome, extra=extra)
    return RelabelResult(path, model, statistics, side_files, time.perf_counter() - started)


def _label_group(output_path: str) -> str:
    """The pixseg label group to relabel: ``output_path`` or the labels inside an OME-Zarr image."""
    if not os.path.exists(output_path):
        raise InputError(f"output {output_path!r} does not exist")
    if os.path.isfile(output_path):
        if read_label_tiff_status(output_path) is not None:
            raise InputError(
                f"cannot relabel {output_path!r}: a TIFF output keeps only the label values, not the cluster "
                "ids; apply the class model to the input again (or relabel a .zarr output)"
            )
        raise InputError(f"{output_path!r} is not a pixseg label output (an OUTPUT.zarr of `pixseg segment`)")
    path = labels_inside(output_path) or output_path
    status = read_label_zarr_status(path)
    if status is None or "model" not in status:  # checked before the lock: nothing is written beside it
        raise InputError(f"{output_path!r} is not a pixseg label output (an OUTPUT.zarr of `pixseg segment`)")
    return path


def _cluster_ids(path: str, arrays: list[Any], model: SegmentationModel, *, cluster_ids: bool, progress: bool) -> Any:
    """The output's cluster-id array; when its levels still hold the cluster ids (no class table
    yet, or a copy interrupted before), created and copied from level 0 first, then marked kept."""
    clusters = open_cluster_ids(path, writable=True) if cluster_ids else None
    if clusters is not None:
        return clusters
    logger.info("keeping the cluster ids of %s before relabelling", path)
    clusters = create_cluster_ids(path, like=arrays[0], dtype=model.label_dtype)
    identity = np.arange(model.n_clusters + 1, dtype=model.label_dtype)
    compute(*relabel_level(arrays[0], clusters, identity), progress=progress)
    reopen_label_zarr(path, extra={"cluster_ids": True})
    return clusters


def _level_lookup(table: ClassTable, dtype: np.dtype, output_path: str) -> np.ndarray:
    """``table``'s cluster -> class lookup in the levels' ``dtype``."""
    if table.n_classes > np.iinfo(dtype).max:
        raise ParameterError(
            f"{table.n_classes} classes do not fit the {np.dtype(dtype).name} labels of {output_path!r}; "
            "apply the class model to the input again"
        )
    return table.lookup().astype(dtype)


def _rewrite_side_files(
    path: str,
    status: dict[str, Any],
    statistics: list[dict[str, Any]],
    summary: dict[str, Any],
    arrays: list[Any],
    model: SegmentationModel,
    started: float,
) -> list[str]:
    """The statistics again, and the label map, overlay, legend and report when the output has a
    thumbnail (the previews were written)."""
    base = label_side_base(path)
    rgb = None
    if os.path.isfile(base + ".thumbnail.png"):
        from PIL import Image as PILImage

        with PILImage.open(base + ".thumbnail.png") as thumbnail:
            rgb = np.asarray(thumbnail.convert("RGB"))
    run = ReportRun(
        output=path,
        fingerprint=status.get("fingerprint") or {},
        model=model,
        versions=dict(status.get("versions") or {}),
        started=started,
    )
    height, width = arrays[0].shape
    return write_side_files(base, statistics, summary, rgb, arrays[-1], run, n_pixels=height * width)
