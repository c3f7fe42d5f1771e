"""Orchestration: the only module that computes. Open -> features -> sample -> fit -> predict -> write."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np

import pipeline
from pipeline.errors import InputError, ModelError, OutputError, ParameterError
from pipeline.features import FeatureSpec, build_features, make_feature_spec
from pipeline.io.label_tiff import read_label_tiff_status, write_label_tiff
from pipeline.io.label_zarr import (
    create_label_zarr,
    finalise_label_zarr,
    open_label_level0,
    read_label_zarr_status,
    remove_output,
    store_labels,
)
from pipeline.io.model_file import load_model, model_document, save_model
from pipeline.io.readers import Image, describe_chunks, open_image
from pipeline.model import MAX_CLUSTERS, SegmentationModel, fit_model
from pipeline.predict import build_labels
from pipeline.sampling import build_candidates, candidate_threshold, take_sample

logger = logging.getLogger(__name__)

OUTPUT_KINDS = {".zarr": "zarr", ".tif": "tiff", ".tiff": "tiff"}
WORK_SUFFIX = ".pixseg-work.zarr"


@dataclass(frozen=True)
class ReadOptions:
    """How to read the input: pyramid ``level`` and processing ``chunk`` edge (None = automatic)."""

    level: int = 0
    chunk: int | None = None


@dataclass(frozen=True)
class FitOptions:
    """How to fit: K, seed, feature groups and sample size."""

    clusters: int = 4
    seed: int = 0
    features: tuple[str, ...] = ("channels",)
    sample_size: int = 200_000


@dataclass(frozen=True)
class RunResult:
    """What a ``segment`` or ``apply`` run produced."""

    output: str
    model: SegmentationModel
    shape: tuple[int, int]
    n_chunks: int
    seconds: float


@dataclass(frozen=True)
class _OutputPlan:
    path: str
    kind: str
    replace: bool


def segment(
    input_path: str,
    output_path: str,
    *,
    read: ReadOptions = ReadOptions(),
    fit: FitOptions = FitOptions(),
    model_path: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> RunResult:
    """Segment one image: sample, fit k-means, label every pixel, write the label image.

    Parameters
    ----------
    input_path : str
        Any image :func:`pipeline.io.readers.open_image` reads. Never modified.
    output_path : str
        ``.zarr`` (OME-Zarr labels) or ``.tif``/``.tiff`` (tiled BigTIFF).
    read, fit : ReadOptions, FitOptions
        Reading and fitting options.
    model_path : str, optional
        Also save the fitted model there (JSON).
    overwrite : bool
        Replace an existing output (and model file).
    progress : bool
        Show progress bars on stderr.

    Returns
    -------
    RunResult

    Raises
    ------
    PipelineError
        For every user mistake (bad input, output, parameter).
    """
    started = time.perf_counter()
    if fit.sample_size < 1:
        raise ParameterError(f"--sample-size must be >= 1, got {fit.sample_size!r}")
    if not 2 <= fit.clusters <= MAX_CLUSTERS:
        raise ParameterError(f"--clusters must be between 2 and {MAX_CLUSTERS}, got {fit.clusters!r}")
    if not 0 <= fit.seed < 2**63:
        raise ParameterError(f"--seed must be a non-negative integer below 2**63, got {fit.seed!r}")
    image = open_image(input_path, level=read.level, chunk=read.chunk)
    plan = _plan_output(output_path, input_path, overwrite=overwrite)
    if model_path is not None:
        _check_model_path(model_path, input_path, plan.path, overwrite=overwrite)
    spec = make_feature_spec(fit.features, n_channels=image.shape[2], has_alpha=image.has_alpha, dtype=image.dtype)
    features = build_features(image.data, spec)
    logger.info("input %s: %s %s, %s", image.path, _shape_text(image), image.dtype.name, describe_chunks(image))
    sample = _draw_sample(features, sample_size=fit.sample_size, seed=fit.seed, progress=progress)
    logger.info("fitting k-means (K=%d) on %d sampled pixels", fit.clusters, len(sample))
    model = fit_model(sample, spec, n_clusters=fit.clusters, seed=fit.seed)
    logger.info("fitted in %d iterations; centroids (%s):\n%s", model.n_iter, ", ".join(spec.columns), model.centroids)
    if model_path is not None:
        save_model(model, model_path, provenance=_provenance(image))
        logger.info("model saved to %s", model_path)
    _write_labels(image, features, model, plan, progress=progress)
    return _result(plan, model, image, started)


def apply(
    model_path: str,
    input_path: str,
    output_path: str,
    *,
    read: ReadOptions = ReadOptions(),
    overwrite: bool = False,
    progress: bool = False,
) -> RunResult:
    """Label an image with a saved model; the labels equal those ``segment`` gave with that model.

    Parameters are as for :func:`segment`; ``model_path`` is a JSON model file.

    Raises
    ------
    ModelError
        If the model is unreadable or does not fit the image's channels and dtype.
    """
    started = time.perf_counter()
    model = load_model(model_path)
    image = open_image(input_path, level=read.level, chunk=read.chunk)
    plan = _plan_output(output_path, input_path, overwrite=overwrite)
    _check_model_fits(model.feature_spec, image, model_path)
    features = build_features(image.data, model.feature_spec)
    logger.info("input %s: %s %s, %s", image.path, _shape_text(image), image.dtype.name, describe_chunks(image))
    _write_labels(image, features, model, plan, progress=progress)
    return _result(plan, model, image, started)


def describe(path: str, *, level: int = 0) -> dict[str, Any]:
    """What ``path`` holds: a pixseg output's status, or an input image's layout.

    Returns
    -------
    dict
        ``{"kind": "output", ...status}`` for a pixseg output (with ``complete``), else
        ``{"kind": "input", ...}`` with shape, dtype, chunks and pyramid levels.

    Raises
    ------
    InputError
        If ``path`` is neither.
    """
    if os.path.isdir(path):
        status = read_label_zarr_status(path)
    elif os.path.isfile(path) and path.lower().endswith((".tif", ".tiff")):
        status = read_label_tiff_status(path)
    else:
        status = None
    if status is None and os.path.exists(path + ".partial"):
        return {"kind": "output", "path": path, "complete": False, "note": "TIFF write was interrupted"}
    if status is not None:
        return {"kind": "output", "path": path, **status}
    image = open_image(path, level=level)
    return {
        "kind": "input",
        "path": path,
        "format": image.kind,
        "shape": image.shape,
        "dtype": image.dtype.name,
        "alpha": image.has_alpha,
        "chunks": describe_chunks(image),
        "levels": image.level_shapes,
    }


# --- steps ---------------------------------------------------------------------------------


def _draw_sample(features: Any, *, sample_size: int, seed: int, progress: bool) -> np.ndarray:
    """One pass over the image when nothing is masked; a second, with a threshold from the
    first pass's count of valid pixels, when masking left too few candidates."""
    n_pixels = int(features.shape[0]) * int(features.shape[1])
    threshold = candidate_threshold(sample_size, n_pixels)
    while True:
        logger.info("sampling %d pixels (candidate rate %.3g)", sample_size, threshold)
        candidates = _compute(build_candidates(features, threshold=threshold, seed=seed), progress=progress)
        if candidates.n_valid == 0:
            raise InputError("the input has no valid pixels (all masked, transparent or NaN)")
        enough = len(candidates.keys) >= min(sample_size, candidates.n_valid)
        if enough or threshold >= 1.0:
            return take_sample(candidates, sample_size)
        threshold = max(2 * threshold, candidate_threshold(sample_size, candidates.n_valid))


def _write_labels(image: Image, features: Any, model: SegmentationModel, plan: _OutputPlan, *, progress: bool) -> None:
    labels = build_labels(features, model)
    if plan.kind == "zarr":
        zarr_path = plan.path
        if plan.replace:
            remove_output(plan.path)
    else:  # a TIFF is streamed from a finished zarr, then renamed into place
        zarr_path = plan.path + WORK_SUFFIX
        remove_output(zarr_path)  # leftover of an interrupted run
    metadata = _output_metadata(image, model)
    array = create_label_zarr(
        zarr_path, shape=labels.shape, chunks=labels.chunksize, dtype=labels.dtype, attrs=metadata
    )
    logger.info("predicting %d chunks into %s", labels.npartitions, zarr_path)
    _compute(store_labels(labels, array), progress=progress)
    finalise_label_zarr(zarr_path, n_labels=model.n_clusters, name=os.path.basename(image.path.rstrip("/")))
    if plan.kind == "tiff":
        logger.info("writing tiled TIFF %s", plan.path)
        write_label_tiff(plan.path, open_label_level0(zarr_path), metadata=metadata)
        remove_output(zarr_path)


def _compute(collection: Any, *, progress: bool) -> Any:
    """Compute one collection on the active scheduler, with a progress bar on stderr if asked."""
    client = _active_client()
    if client is None:
        from dask.diagnostics import ProgressBar

        bar = ProgressBar(out=sys.stderr, minimum=0.5) if progress else contextlib.nullcontext()
        with bar:
            (result,) = dask.compute(collection)
        return result
    future = client.compute(collection)
    if progress:
        from distributed import progress as distributed_progress

        with contextlib.redirect_stdout(sys.stderr):
            distributed_progress(future)
    return future.result()


def _active_client() -> Any:
    if dask.config.get("scheduler", None) != "dask.distributed":
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


# --- checks --------------------------------------------------------------------------------


def _plan_output(output_path: str, input_path: str, *, overwrite: bool) -> _OutputPlan:
    stripped = output_path.rstrip("/")
    suffix = os.path.splitext(stripped)[1].lower()
    kind = OUTPUT_KINDS.get(suffix)
    if kind is None:
        raise OutputError(f"output {output_path!r} has an unknown suffix {suffix!r}; use .zarr, .tif or .tiff")
    _check_not_input(stripped, input_path, "output")
    exists = os.path.lexists(stripped)
    if exists and not overwrite:
        raise OutputError(f"output {output_path!r} already exists; pass --overwrite to replace it")
    _check_writable_parent(stripped)
    return _OutputPlan(path=stripped, kind=kind, replace=exists)


def _check_model_path(model_path: str, input_path: str, output_path: str, *, overwrite: bool) -> None:
    if not model_path.lower().endswith(".json"):
        raise OutputError(f"--save-model {model_path!r}: model files end in .json")
    _check_not_input(model_path, input_path, "--save-model")
    if os.path.realpath(model_path) == os.path.realpath(output_path):
        raise OutputError(f"--save-model {model_path!r} is the same path as the output")
    if os.path.lexists(model_path) and not overwrite:
        raise OutputError(f"model file {model_path!r} already exists; pass --overwrite to replace it")
    _check_writable_parent(model_path)


def _check_not_input(path: str, input_path: str, what: str) -> None:
    target = os.path.realpath(path)
    source = os.path.realpath(input_path)
    if target == source or target.startswith(source + os.sep) or source.startswith(target + os.sep):
        raise OutputError(f"{what} {path!r} is, or is inside, the input {input_path!r}; inputs are never modified")


def _check_writable_parent(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    ancestor = parent
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise OutputError(f"cannot write {path!r}: {ancestor!r} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path!r}: directory {ancestor!r} is not writable")
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create directory {parent!r} for {path!r}: {err}") from err


def _check_model_fits(spec: FeatureSpec, image: Image, model_path: str) -> None:
    channels = image.shape[2] - int(image.has_alpha)
    if channels != spec.n_channels or image.has_alpha != spec.has_alpha:
        raise ModelError(
            f"model {model_path!r} was fitted on {spec.n_channels} colour channel(s)"
            f"{' + alpha' if spec.has_alpha else ''}; input {image.path!r} has {channels}"
            f"{' + alpha' if image.has_alpha else ''}"
        )
    if image.dtype.name != spec.dtype:
        raise ModelError(
            f"model {model_path!r} was fitted on {spec.dtype} pixels; input {image.path!r} is {image.dtype.name}"
        )


# --- small helpers -------------------------------------------------------------------------


def _provenance(image: Image) -> dict[str, Any]:
    import dask_ml
    import zarr

    return {
        "input": os.path.abspath(image.path),
        "level": image.level,
        "shape": list(image.shape),
        "versions": {
            "pixseg": pipeline.__version__,
            "dask": dask.__version__,
            "dask_ml": dask_ml.__version__,
            "numpy": np.__version__,
            "zarr": zarr.__version__,
        },
    }


def _output_metadata(image: Image, model: SegmentationModel) -> dict[str, Any]:
    return {**_provenance(image), "n_clusters": model.n_clusters, "model": model_document(model)}


def _shape_text(image: Image) -> str:
    height, width, channels = image.shape
    return f"{height}x{width}x{channels}"


def _result(plan: _OutputPlan, model: SegmentationModel, image: Image, started: float) -> RunResult:
    return RunResult(
        output=plan.path,
        model=model,
        shape=image.shape[:2],
        n_chunks=int(np.prod(image.data.numblocks[:2])),
        seconds=time.perf_counter() - started,
    )
