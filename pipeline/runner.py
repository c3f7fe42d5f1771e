"""Orchestration: the only module that computes. Open -> features -> sample -> fit -> predict -> write."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np

import pipeline
from pipeline.colours import label_colours
from pipeline.errors import InputError, ModelError, OutputError, ParameterError
from pipeline.features import FeatureSpec, build_features, make_feature_spec
from pipeline.io.label_tiff import (
    TIFF_COMPRESSIONS,
    TIFF_FLAVOURS,
    TIFF_TILES,
    read_label_tiff_status,
    write_label_tiff,
)
from pipeline.io.label_zarr import (
    NGFF_VERSIONS,
    create_label_zarr,
    finalise_label_zarr,
    ome_label_metadata,
    open_label_levels,
    prepare_labels_group,
    read_label_zarr_status,
    register_label,
    remove_output,
    store_labels,
)
from pipeline.io.model_file import load_model, model_document, save_model
from pipeline.io.readers import Image, describe_chunks, open_image
from pipeline.io.side_files import SIDE_SUFFIXES, side_file_base, write_legend, write_png, write_statistics
from pipeline.model import MAX_CLUSTERS, SegmentationModel, fit_model
from pipeline.predict import build_labels
from pipeline.preview import colour_labels, display_rgb, overlay, thumbnail_step
from pipeline.pyramid import pyramid_shapes, reduce_labels
from pipeline.sampling import build_candidates, candidate_threshold, take_sample
from pipeline.statistics import build_label_counts, label_table

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
class OutputOptions:
    """How to write: NGFF version, pixel size override (micrometres, (Y, X)), TIFF layout, previews."""

    ngff: str = "0.5"
    pixel_size: tuple[float, float] | None = None
    tiff_flavour: str = "generic"
    tiff_tile: int = 512
    tiff_compression: str = "zstd"
    previews: bool = True

    def __post_init__(self) -> None:
        if self.ngff not in NGFF_VERSIONS:
            raise ParameterError(f"--ngff must be one of {', '.join(NGFF_VERSIONS)}, got {self.ngff!r}")
        if self.tiff_flavour not in TIFF_FLAVOURS:
            raise ParameterError(f"--tiff-flavour must be one of {', '.join(TIFF_FLAVOURS)}, got {self.tiff_flavour!r}")
        if self.tiff_tile not in TIFF_TILES:
            raise ParameterError(f"--tiff-tile must be one of {TIFF_TILES}, got {self.tiff_tile!r}")
        if self.tiff_compression not in TIFF_COMPRESSIONS:
            raise ParameterError(
                f"--tiff-compression must be one of {', '.join(TIFF_COMPRESSIONS)}, got {self.tiff_compression!r}"
            )
        if self.pixel_size is not None and not all(math.isfinite(v) and v > 0 for v in self.pixel_size):
            raise ParameterError(f"--pixel-size must be positive micrometres, got {self.pixel_size!r}")


@dataclass(frozen=True)
class RunResult:
    """What a ``segment`` or ``apply`` run produced.

    ``statistics`` has one row per label (see :func:`pipeline.statistics.label_table`);
    ``side_files`` lists the statistics and preview files written next to the output.
    """

    output: str
    model: SegmentationModel
    shape: tuple[int, int]
    n_chunks: int
    seconds: float
    levels: list[tuple[int, int]]
    pixel_size: tuple[float, float] | None
    statistics: list[dict[str, Any]]
    side_files: list[str]


@dataclass(frozen=True)
class _OutputPlan:
    path: str
    kind: str  # "zarr" or "tiff"
    replace: bool
    side_base: str
    into_image: str | None  # the OME-Zarr image whose labels/ group receives the output


def segment(
    input_path: str,
    output_path: str,
    *,
    read: ReadOptions = ReadOptions(),
    fit: FitOptions = FitOptions(),
    output: OutputOptions = OutputOptions(),
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
    read, fit, output : ReadOptions, FitOptions, OutputOptions
        Reading, fitting and writing options.
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
    plan = _plan_output(output_path, image, overwrite=overwrite)
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
    return _write_labels(image, features, model, plan, output, started=started, progress=progress)


def apply(
    model_path: str,
    input_path: str,
    output_path: str,
    *,
    read: ReadOptions = ReadOptions(),
    output: OutputOptions = OutputOptions(),
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
    plan = _plan_output(output_path, image, overwrite=overwrite)
    _check_model_fits(model.feature_spec, image, model_path)
    features = build_features(image.data, model.feature_spec)
    logger.info("input %s: %s %s, %s", image.path, _shape_text(image), image.dtype.name, describe_chunks(image))
    return _write_labels(image, features, model, plan, output, started=started, progress=progress)


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


def _write_labels(
    image: Image,
    features: Any,
    model: SegmentationModel,
    plan: _OutputPlan,
    options: OutputOptions,
    *,
    started: float,
    progress: bool,
) -> RunResult:
    """Predict and store level 0 (with label counts and the input thumbnail from the same pass,
    so the input is decoded once), build coarser levels from the level above, finalise the
    metadata, write the side files, and stream a TIFF from the finished pyramid if asked."""
    labels = build_labels(features, model)
    shapes = pyramid_shapes(labels.shape)
    pixel_size = options.pixel_size or image.pixel_size
    ngff = options.ngff
    if plan.into_image is not None:
        ngff = prepare_labels_group(plan.into_image)
    if plan.kind == "zarr":
        zarr_path = plan.path
        if plan.replace:
            remove_output(plan.path)
    else:  # a TIFF is streamed from a finished zarr pyramid, then renamed into place
        zarr_path = plan.path + WORK_SUFFIX
        remove_output(zarr_path)  # leftover of an interrupted run
        ngff = "0.5"
    metadata = _output_metadata(image, model)
    arrays = create_label_zarr(
        zarr_path, shapes=shapes, chunks=labels.chunksize, dtype=labels.dtype, ngff=ngff, attrs=metadata
    )
    step = thumbnail_step(labels.shape)
    logger.info("predicting %d chunks into %s", labels.npartitions, zarr_path)
    _, counts, thumbnail = _compute(
        store_labels(labels, arrays[0]),
        build_label_counts(labels, model.n_clusters),
        image.data[::step, ::step] if options.previews else None,
        progress=progress,
    )
    for level in range(1, len(shapes)):
        logger.info("pyramid level %d: %dx%d", level, *shapes[level])
        above = da.from_zarr(arrays[level - 1])
        _compute(store_labels(reduce_labels(above, chunks=arrays[level].chunks), arrays[level]), progress=False)
    statistics = label_table(counts, model.centroids, model.feature_spec.columns, pixel_size=pixel_size)
    summary = {"masked_pixels": int(counts[0]), "pixel_size_um": list(pixel_size) if pixel_size else None}
    source_image = "../../" if plan.into_image is not None else None
    ome = ome_label_metadata(
        n_levels=len(shapes),
        n_labels=model.n_clusters,
        name=os.path.basename(plan.path),
        pixel_size=pixel_size,
        properties=statistics,
        source_image=source_image,
    )
    finalise_label_zarr(zarr_path, ngff=ngff, ome=ome, extra={**summary, "statistics": statistics})
    if plan.into_image is not None:
        register_label(plan.into_image, os.path.basename(plan.path), ngff=ngff)
    side_files = _write_side_files(plan.side_base, statistics, summary, thumbnail, arrays[-1], model.n_clusters, image)
    if plan.kind == "tiff":
        logger.info("writing pyramidal TIFF %s (%d levels)", plan.path, len(shapes))
        write_label_tiff(
            plan.path,
            open_label_levels(zarr_path),
            metadata={**metadata, **summary, "statistics": statistics},
            pixel_size=pixel_size,
            flavour=options.tiff_flavour,
            tile=options.tiff_tile,
            compression=options.tiff_compression,
        )
        remove_output(zarr_path)
    return RunResult(
        output=plan.path,
        model=model,
        shape=image.shape[:2],
        n_chunks=int(np.prod(image.data.numblocks[:2])),
        seconds=time.perf_counter() - started,
        levels=shapes,
        pixel_size=pixel_size,
        statistics=statistics,
        side_files=side_files,
    )


def _write_side_files(
    base: str,
    statistics: list[dict[str, Any]],
    summary: dict[str, Any],
    thumbnail: np.ndarray | None,
    coarsest: Any,
    n_labels: int,
    image: Image,
) -> list[str]:
    write_statistics(base, statistics, summary=summary)
    written = [base + ".stats.csv", base + ".stats.json"]
    if thumbnail is None:
        return written
    from PIL import Image as PILImage

    small_labels = np.asarray(coarsest[:])
    coloured = colour_labels(small_labels, n_labels)
    rgb = display_rgb(np.asarray(thumbnail), n_colour=image.shape[2] - int(image.has_alpha))
    height, width = small_labels.shape
    matched = np.asarray(PILImage.fromarray(rgb).resize((width, height), PILImage.Resampling.BILINEAR))
    write_png(base + ".thumbnail.png", rgb)
    write_png(base + ".labels.png", coloured)
    write_png(base + ".overlay.png", overlay(matched, coloured, small_labels))
    write_legend(base + ".legend.png", statistics, label_colours(n_labels))
    return written + [base + suffix for suffix in (".thumbnail.png", ".labels.png", ".overlay.png", ".legend.png")]


def _compute(*collections: Any, progress: bool) -> Any:
    """Compute collections together on the active scheduler (shared tasks run once), with a
    progress bar on stderr if asked. ``None`` entries pass through. One collection -> its result."""
    todo = [c for c in collections if c is not None]
    client = _active_client()
    if client is None:
        from dask.diagnostics import ProgressBar

        bar = ProgressBar(out=sys.stderr, minimum=0.5) if progress else contextlib.nullcontext()
        with bar:
            results = list(dask.compute(*todo))
    else:
        futures = client.compute(todo)
        if progress:
            from distributed import progress as distributed_progress

            with contextlib.redirect_stdout(sys.stderr):
                distributed_progress(futures)
        results = client.gather(futures)
    filled = [None if c is None else results.pop(0) for c in collections]
    return filled[0] if len(filled) == 1 else tuple(filled)


def _active_client() -> Any:
    if dask.config.get("scheduler", None) != "dask.distributed":
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


# --- checks --------------------------------------------------------------------------------


def _plan_output(output_path: str, image: Image, *, overwrite: bool) -> _OutputPlan:
    stripped = output_path.rstrip("/")
    suffix = os.path.splitext(stripped)[1].lower()
    into_image = _labels_beside_image(stripped, image)
    kind = "zarr" if into_image is not None else OUTPUT_KINDS.get(suffix)
    if kind is None:
        raise OutputError(f"output {output_path!r} has an unknown suffix {suffix!r}; use .zarr, .tif or .tiff")
    if into_image is None:
        _check_not_input(stripped, image.path, "output")
    side_base = side_file_base(
        stripped if into_image is None else f"{into_image.rstrip('/')}.{os.path.basename(stripped)}"
    )
    existing = [p for p in (stripped, *(side_base + s for s in SIDE_SUFFIXES)) if os.path.lexists(p)]
    if existing and not overwrite:
        raise OutputError(f"output {existing[0]!r} already exists; pass --overwrite to replace it")
    _check_writable_parent(stripped)
    return _OutputPlan(
        path=stripped, kind=kind, replace=os.path.lexists(stripped), side_base=side_base, into_image=into_image
    )


def _labels_beside_image(output_path: str, image: Image) -> str | None:
    """The OME-Zarr image when ``output_path`` is ``IMAGE/labels/NAME`` of the input, else None."""
    labels_dir, name = os.path.split(output_path)
    image_dir, labels = os.path.split(labels_dir)
    if labels != "labels" or not name or os.path.realpath(image_dir) != os.path.realpath(image.path):
        return None
    if image.kind != "ome-zarr":
        raise OutputError(f"labels can only be written into an OME-Zarr image; {image.path!r} is {image.kind}")
    if name in ("", ".", "..") or os.sep in name:
        raise OutputError(f"label name {name!r} is not a plain name")
    return image.path


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
        "input_shape": list(image.shape),
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
