"""Orchestration: the only module that computes. Open -> features -> sample -> fit -> predict -> write."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import pixseg
from dask.delayed import Delayed
from pixseg.colours import label_colours
from pixseg.downsample import downsample_level
from pixseg.errors import InputError, OutputError, OutputExistsError, ParameterError, PipelineError, ResumeMismatchError
from pixseg.features import (
    DEFAULT_SIGMAS,
    FeatureSpec,
    build_features,
    make_feature_spec,
    robust_channel_ranges,
)
from pixseg.io.image_zarr import create_image_zarr, finalise_image_zarr, write_block_shape
from pixseg.io.label_tiff import (
    TIFF_COMPRESSIONS,
    TIFF_FLAVOURS,
    TIFF_TILES,
    read_label_tiff_status,
    write_label_tiff,
)
from pixseg.io.label_zarr import (
    NGFF_VERSIONS,
    chunk_written,
    count_stored_chunk,
    create_label_zarr,
    finalise_label_zarr,
    ome_label_metadata,
    open_label_levels,
    prepare_labels_group,
    read_label_zarr_status,
    reduce_level,
    register_label,
    remove_output,
    store_and_count,
    store_count_and_preview,
)
from pixseg.io.locks import lock_path_for, output_lock
from pixseg.io.model_file import load_model, model_document, save_model
from pixseg.io.readers import Image, describe_chunks, open_image
from pixseg.io.side_files import write_legend, write_png, write_statistics
from pixseg.layout import conversion_reason
from pixseg.masks import (
    block_mean,
    check_mask_shape,
    choose_mask_level,
    mask_features,
    mask_labels,
    tissue_mask,
    upsample_mask,
)
from pixseg.model import FIT_RESTARTS, MAX_CLUSTERS, SegmentationModel, fit_model, preload_fitting
from pixseg.plan import (
    CONVERTED_SUFFIX,
    OutputPlan,
    PreviousRun,
    check_model_fits,
    check_model_path,
    check_not_input,
    check_writable_parent,
    input_identity,
    job_fingerprint,
    plan_output,
    previous_run,
    refuse_incomplete_input,
)
from pixseg.predict import build_labels, build_table_labels, table_applies
from pixseg.preview import colour_labels, display_rgb, overlay, thumbnail_step
from pixseg.pyramid import pyramid_shapes
from pixseg.sampling import (
    Candidates,
    SampleSource,
    build_candidates,
    candidate_threshold,
    cohort_seed,
    plan_blocks,
    sampling_stride,
    take_pooled_sample,
    take_sample,
)
from pixseg.statistics import label_table

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReadOptions:
    """How to read the input: pyramid ``level``, processing ``chunk`` edge (None = automatic), and
    whether to convert a poorly laid-out input first (see :func:`pixseg.layout.conversion_reason`)
    into ``workdir`` (default: beside the output), kept afterwards with ``keep_workdir``."""

    level: int = 0
    chunk: int | None = None
    convert: bool = True
    workdir: str | None = None
    keep_workdir: bool = False


@dataclass(frozen=True)
class FitOptions:
    """How to fit: K, seed, feature groups, k-means|| restarts and sample size; texture scales, mask,
    fit level, normalisation.

    ``sigmas`` are in full-resolution pixels; ``mask`` is ``"none"``, ``"auto"`` or a mask image path;
    ``fit_level`` is the pyramid level sampled for the fit (None: the level read); ``normalise`` is
    ``"auto"`` (``"robust"`` unless the input is 8-bit), ``"dtype"`` or ``"robust"``.
    """

    clusters: int = 4
    seed: int = 0
    features: tuple[str, ...] = ("channels",)
    restarts: int = FIT_RESTARTS
    sample_size: int = 200_000
    sigmas: tuple[float, ...] = DEFAULT_SIGMAS
    mask: str = "none"
    fit_level: int | None = None
    normalise: str = "auto"


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

    ``statistics`` has one row per label (see :func:`pixseg.statistics.label_table`);
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


def segment(
    input_path: str,
    output_path: str,
    *,
    read: ReadOptions = ReadOptions(),
    fit: FitOptions = FitOptions(),
    output: OutputOptions = OutputOptions(),
    model_path: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
) -> RunResult:
    """Segment one image: sample, fit k-means, label every pixel, write the label image.

    Parameters
    ----------
    input_path : str
        Any image :func:`pixseg.io.readers.open_image` reads. Never modified.
    output_path : str
        ``.zarr`` (OME-Zarr labels) or ``.tif``/``.tiff`` (tiled BigTIFF).
    read, fit, output : ReadOptions, FitOptions, OutputOptions
        Reading, fitting and writing options.
    model_path : str, optional
        Also save the fitted model there (JSON).
    overwrite : bool
        Replace an existing output (and model file).
    resume : bool
        Continue an interrupted run of the same job at ``output_path`` (same input and options,
        checked against the fingerprint stored in the output): its model is reused and chunks
        already written and verified are kept. The labels equal an uninterrupted run's.
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
    _check_fit_options(fit)
    image = open_image(input_path, level=read.level, chunk=read.chunk)
    refuse_incomplete_input(image)
    plan = plan_output(output_path, image, overwrite=overwrite, resume=resume)
    if model_path is not None:
        check_model_path(model_path, input_path, plan.path, overwrite=overwrite or resume)
    fingerprint = job_fingerprint(image, read=read, fit=fit, output=output)
    with output_lock(lock_path_for(plan.side_base)):
        previous = previous_run(plan, fingerprint) if resume else None
        if previous is not None and previous.status.get("complete"):
            return _finished_result(plan, previous, image, started)
        # --fit-level reads another pyramid level of the input itself: a one-level copy has none
        if fit.fit_level is None:
            image = _converted_if_needed(image, plan, read, progress=progress)
        logger.info("input %s: %s %s, %s", image.path, _shape_text(image), image.dtype.name, describe_chunks(image))
        if previous is None:
            if _active_client() is not None:  # this process idles while the workers sample
                preload_fitting()
            spec, mask, fit_source = _segment_features(image, fit, read=read, progress=progress)
            sample = _draw_sample(fit_source, sample_size=fit.sample_size, seed=fit.seed, progress=progress)
            logger.info("fitting k-means (K=%d) on %d sampled pixels", fit.clusters, len(sample))
            model = fit_model(sample, spec, n_clusters=fit.clusters, seed=fit.seed, restarts=fit.restarts)
            logger.info(
                "fitted in %d iterations; centroids (%s):\n%s", model.n_iter, ", ".join(spec.columns), model.centroids
            )
        else:
            logger.info("resuming %s with the interrupted run's model", plan.path)
            model = previous.model
            mask = _model_mask(image, model.feature_spec, mask=fit.mask, read=read, progress=progress)
        if model_path is not None:
            save_model(model, model_path, provenance=_provenance(image))
            logger.info("model saved to %s", model_path)
        return _write_labels(
            image,
            mask,
            model,
            plan,
            output,
            read=read,
            fingerprint=fingerprint,
            previous=previous,
            started=started,
            progress=progress,
        )


def apply(
    model_path: str,
    input_path: str,
    output_path: str,
    *,
    read: ReadOptions = ReadOptions(),
    output: OutputOptions = OutputOptions(),
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
    mask: str | None = None,
) -> RunResult:
    """Label an image with a saved model; the labels equal those ``segment`` gave with that model.

    Parameters are as for :func:`segment`; ``model_path`` is a JSON model file. ``mask`` is
    ``"none"``, ``"auto"`` or a mask image path; by default the model's mask mode (``auto`` or
    ``none``; a model fitted with a mask file needs the path again).

    Raises
    ------
    ModelError
        If the model is unreadable or does not fit the image's channels and dtype.
    """
    started = time.perf_counter()
    model = load_model(model_path)
    image = open_image(input_path, level=read.level, chunk=read.chunk)
    refuse_incomplete_input(image)
    plan = plan_output(output_path, image, overwrite=overwrite, resume=resume)
    check_model_fits(model.feature_spec, image, model_path)
    fingerprint = job_fingerprint(image, read=read, output=output, model=model_document(model))
    with output_lock(lock_path_for(plan.side_base)):
        previous = previous_run(plan, fingerprint) if resume else None
        if previous is not None and previous.status.get("complete"):
            return _finished_result(plan, previous, image, started)
        image = _converted_if_needed(image, plan, read, progress=progress)
        logger.info("input %s: %s %s, %s", image.path, _shape_text(image), image.dtype.name, describe_chunks(image))
        mask = _model_mask(image, model.feature_spec, mask=mask, read=read, progress=progress)
        return _write_labels(
            image,
            mask,
            model,
            plan,
            output,
            read=read,
            fingerprint=fingerprint,
            previous=previous,
            started=started,
            progress=progress,
        )


@dataclass(frozen=True)
class ConvertResult:
    """What ``pixseg convert`` wrote."""

    output: str
    levels: list[tuple[int, int]]
    chunks: tuple[int, int]
    seconds: float


def convert(
    input_path: str,
    output_path: str,
    *,
    level: int = 0,
    chunk: int = 1024,
    levels: int | None = None,
    codec: str = "zstd",
    shard: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> ConvertResult:
    """Write an image as an OME-Zarr (NGFF 0.5) multiscale image, chunk by chunk, metadata last.

    Parameters
    ----------
    input_path : str
        Any image :func:`pixseg.io.readers.open_image` reads (striped TIFFs are read in
        full-width bands, so memory stays at a band of ``chunk`` rows). Never modified.
    output_path : str
        The ``.zarr`` directory to write.
    level : int
        Input pyramid level to convert.
    chunk : int
        Edge of the square zarr chunks of every level.
    levels : int, optional
        Number of pyramid levels; by default halving until the long side is <= 1024.
    codec : str
        ``zstd`` (default), ``lz4``, ``zlib`` or ``none`` (all lossless).
    shard : int, optional
        Store level arrays in zarr v3 shards of ``shard x shard`` chunks.
    overwrite, progress : bool
        Replace an existing output; show progress bars.

    Raises
    ------
    PipelineError
        For a bad input, output or option.
    """
    started = time.perf_counter()
    if chunk < 16:
        raise ParameterError(f"--chunk must be at least 16 pixels, got {chunk!r}")
    image = open_image(input_path, level=level)
    target = output_path.rstrip("/")
    if not target.lower().endswith(".zarr"):
        raise OutputError(f"convert writes OME-Zarr: output {output_path!r} must end in .zarr")
    check_not_input(target, image.path, "output")
    if os.path.lexists(target) and not overwrite:
        raise OutputExistsError(f"output {output_path!r} already exists; pass --overwrite to replace it")
    check_writable_parent(target)
    shapes = pyramid_shapes(image.shape[:2])
    if levels is not None:
        if levels < 1:
            raise ParameterError(f"--levels must be >= 1, got {levels!r}")
        shapes = [(-(-image.shape[0] // 2**n), -(-image.shape[1] // 2**n)) for n in range(levels)]
    with output_lock(lock_path_for(target)):
        remove_output(target)
        arrays = create_image_zarr(
            target,
            shapes=shapes,
            channels=image.shape[2],
            chunks=(chunk, chunk),
            dtype=image.dtype,
            codec=codec,
            shard=shard,
            attrs={"source": input_identity(image), "version": pixseg.__version__},
        )
        logger.info("converting %s (%s) into %s, %d levels", image.path, describe_chunks(image), target, len(shapes))
        _store_in_bands(image.data, arrays[0], progress=progress)
        for above, array in zip(arrays, arrays[1:], strict=False):
            reduced = downsample_level(da.from_zarr(above).transpose(1, 2, 0), chunks=write_block_shape(array))
            stored = da.store(reduced.transpose(2, 0, 1), array, lock=False, compute=False)  # type: ignore[arg-type]
            _compute(stored, progress=False)
        finalise_image_zarr(
            target,
            n_levels=len(shapes),
            name=os.path.basename(image.path.rstrip("/")),
            channel_names=_channel_names(image),
            pixel_size=image.pixel_size,
            extra={"alpha": image.has_alpha},
        )
    return ConvertResult(output=target, levels=shapes, chunks=(chunk, chunk), seconds=time.perf_counter() - started)


def _store_in_bands(pixels: da.Array, array: Any, *, progress: bool) -> None:
    """Store (Y, X, C) ``pixels`` into a (C, Y, X) array one band of write blocks at a time.

    Regrouping strips or tiles into the array's chunks in one graph lets dask read far ahead of
    the writes; a band at a time bounds memory by a band (block rows x the full width).
    """
    rows, cols = write_block_shape(array)
    channels = pixels.shape[2]
    for top in range(0, pixels.shape[0], rows):
        band = pixels[top : top + rows].rechunk((rows, cols, channels)).transpose(2, 0, 1)
        region = (slice(None), slice(top, top + band.shape[1]), slice(None))
        _compute(da.store(band, array, regions=region, lock=False, compute=False), progress=False)
        if progress:
            print(f"\rconverted {min(top + rows, pixels.shape[0])} of {pixels.shape[0]} rows", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)


def _workdir_copy_path(plan: OutputPlan, read: ReadOptions) -> str:
    workdir = read.workdir or os.path.dirname(os.path.abspath(plan.side_base))
    return os.path.join(workdir, os.path.basename(plan.side_base) + CONVERTED_SUFFIX)


def _converted_if_needed(image: Image, plan: OutputPlan, read: ReadOptions, *, progress: bool) -> Image:
    """``image`` itself, or (when its layout makes direct reading slow or memory-hungry and
    conversion is allowed) its chunked OME-Zarr copy in the work directory. A complete copy of
    the same input, left by an interrupted run, is reused."""
    reason = conversion_reason(image)
    if reason is None or not read.convert:
        if reason is not None:
            logger.info("reading %s directly (--no-convert) although it has %s", image.path, reason)
        return image
    copy = _workdir_copy_path(plan, read)
    status = read_label_zarr_status(copy) if os.path.isdir(copy) else None
    if status and status.get("complete") and status.get("source") == input_identity(image):
        logger.info("reusing the converted copy %s", copy)
    else:
        logger.info("converting %s first: it has %s (--no-convert reads it directly)", image.path, reason)
        os.makedirs(os.path.dirname(copy), exist_ok=True)
        convert(image.path, copy, level=image.level, levels=1, overwrite=True, progress=progress)
    converted = open_image(copy, chunk=read.chunk)
    return dataclasses.replace(converted, pixel_size=image.pixel_size, level_shapes=image.level_shapes)


def _remove_workdir_copy(image: Image, plan: OutputPlan, read: ReadOptions) -> None:
    copy = _workdir_copy_path(plan, read)
    if image.path == copy and not read.keep_workdir:
        remove_output(copy)


def _channel_names(image: Image) -> list[str]:
    colour = image.shape[2] - int(image.has_alpha)
    names = ["red", "green", "blue"] if colour == 3 else [f"channel {i}" for i in range(colour)]
    return names + (["alpha"] if image.has_alpha else [])


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
    if status is not None and "model" in status:
        return {"kind": "output", "path": path, **status}
    if status is not None and not status.get("complete"):
        return {"kind": "converted image", "path": path, **status}
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
        "pixel_size_um": image.pixel_size,
        "convert": f"yes: {reason}" if (reason := conversion_reason(image)) else "no: its layout reads well directly",
    }


@dataclass(frozen=True)
class CohortFit:
    """A model fitted on a sample pooled over several images (``fit_cohort``).

    Attributes
    ----------
    model : SegmentationModel
        The fitted model.
    inputs : tuple of str
        The images that contributed to the sample, in cohort order.
    contributions : tuple of int
        Sampled pixels taken from each of ``inputs``: in proportion to its valid pixels.
    failed : dict of str to PipelineError
        Images left out of the pool, with the reason (unreadable, corrupt, or of another layout).
    """

    model: SegmentationModel
    inputs: tuple[str, ...]
    contributions: tuple[int, ...]
    failed: dict[str, PipelineError]


def fit_cohort(
    input_paths: Sequence[str],
    *,
    read: ReadOptions = ReadOptions(),
    fit: FitOptions = FitOptions(),
    model_path: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> CohortFit:
    """Fit one model on a sample pooled over several images, so a label means the same on all.

    Every image ``i`` samples its pixels with its own seed (:func:`pixseg.sampling.cohort_seed`
    of ``fit.seed`` and ``i``) below one key threshold common to all images; the ``fit.sample_size``
    smallest keys overall form the sample, so each image contributes in proportion to its valid
    pixels. Like a single image's sample, it depends only on the seed, the images and their order.
    The first readable image sets the feature spec (its channel normalisation included); every
    image is sampled with the features that spec gives it, i.e. those :func:`apply` computes.
    Each image's candidates are computed separately, so an image that fails (unreadable, corrupt,
    or of another channel layout or dtype than the first readable one) is left out alone.

    Parameters
    ----------
    input_paths : sequence of str
        The cohort, in a deterministic order (it seeds the per-image keys).
    read, fit : ReadOptions, FitOptions
        As for :func:`segment`.
    model_path : str, optional
        Save the model there (JSON), with the cohort listed in its provenance.
    overwrite : bool
        Replace an existing model file.
    progress : bool
        Show progress bars on stderr.

    Returns
    -------
    CohortFit
        Computes one candidate pass per image (two when masking left too few candidates).

    Raises
    ------
    PipelineError
        For a bad parameter, or when no image could be sampled (the first image's error is named).
    """
    _check_fit_options(fit)
    if not input_paths:
        raise ParameterError("fit_cohort needs at least one input image")
    if model_path is not None:
        for path in input_paths:
            check_not_input(model_path, path, "cohort model file")
        if os.path.lexists(model_path) and not overwrite:
            raise OutputExistsError(f"model file {model_path!r} already exists; pass --overwrite to replace it")
        check_writable_parent(model_path)
    if _active_client() is not None:  # this process idles while the workers sample
        preload_fitting()
    failed: dict[str, PipelineError] = {}
    members: list[tuple[int, Image, Any]] = []
    spec: FeatureSpec | None = None
    for index, path in enumerate(input_paths):
        try:
            image = open_image(path, level=read.level, chunk=read.chunk)
            refuse_incomplete_input(image)
            if spec is None:  # the first readable image sets the spec (normalisation included)
                image_spec, _, source = _segment_features(image, fit, read=read, progress=progress)
            else:  # the others are sampled with the features the model will give them
                check_model_fits(spec, image, f"cohort of {members[0][1].path!r}")
                level = image.level if fit.fit_level is None else fit.fit_level
                fit_image = image if level == image.level else open_image(path, level=level, chunk=read.chunk)
                mask = _model_mask(fit_image, spec, mask=fit.mask, read=read, progress=progress)
                source = _sample_source(fit_image, spec, mask)
        except PipelineError as err:
            logger.warning("cohort: leaving out %s: %s", path, err)
            failed[path] = err
            continue
        spec = spec or image_spec
        members.append((index, image, source))
    if spec is None:
        first = next(iter(failed.items()))
        raise InputError(f"no input of the cohort could be read; {first[0]!r}: {first[1]}") from first[1]
    sample, counts = _draw_pooled_sample(members, failed, fit=fit, progress=progress)
    contributors = [image.path for _, image, _ in members]
    logger.info(
        "fitting k-means (K=%d) on %d pixels pooled from %d images", fit.clusters, len(sample), len(contributors)
    )
    model = fit_model(sample, spec, n_clusters=fit.clusters, seed=fit.seed, restarts=fit.restarts)
    if model_path is not None:
        provenance = {
            **_provenance(members[0][1]),
            "input": None,
            "cohort": [
                {"input": os.path.abspath(path), "index": index, "sampled_pixels": int(n)}
                for (index, _, _), path, n in zip(members, contributors, counts, strict=True)
            ],
        }
        save_model(model, model_path, provenance=provenance)
        logger.info("cohort model saved to %s", model_path)
    return CohortFit(
        model=model, inputs=tuple(contributors), contributions=tuple(int(n) for n in counts), failed=failed
    )


def _check_fit_options(fit: FitOptions) -> None:
    if fit.sample_size < 1:
        raise ParameterError(f"--sample-size must be >= 1, got {fit.sample_size!r}")
    if not 2 <= fit.clusters <= MAX_CLUSTERS:
        raise ParameterError(f"--clusters must be between 2 and {MAX_CLUSTERS}, got {fit.clusters!r}")
    if not 1 <= fit.restarts <= 100:
        raise ParameterError(f"--restarts must be between 1 and 100, got {fit.restarts!r}")
    if not 0 <= fit.seed < 2**63:
        raise ParameterError(f"--seed must be a non-negative integer below 2**63, got {fit.seed!r}")
    _check_feature_options(fit)


def _draw_pooled_sample(
    members: list[tuple[int, Image, Any]], failed: dict[str, PipelineError], *, fit: FitOptions, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Candidates of every member below one weighted-key threshold, then the smallest keys overall.

    A member whose candidates cannot be computed is moved from ``members`` to ``failed``.
    """

    def leave_out(position: int, err: PipelineError) -> None:
        path = members[position][1].path
        logger.warning("cohort: leaving out %s: %s", path, err)
        failed[path] = err

    sources = [(cohort_seed(fit.seed, index), source) for index, _, source in members]
    parts = _sample_candidates(sources, fit.sample_size, progress=progress, on_error=leave_out)
    members[:] = [member for position, member in enumerate(members) if position in parts]
    if not parts or sum(part.n_valid for part in parts.values()) == 0:
        raise InputError(f"no valid pixels in any of the {len(members)} readable cohort images")
    return take_pooled_sample(list(parts.values()), fit.sample_size)


# --- steps ---------------------------------------------------------------------------------


def _draw_sample(source: SampleSource, *, sample_size: int, seed: int, progress: bool) -> np.ndarray:
    """The sample of one image (see :mod:`pixseg.sampling`)."""
    candidates = _sample_candidates([(seed, source)], sample_size, progress=progress, on_error=None)[0]
    if candidates.n_valid == 0:
        raise InputError("the input has no valid pixels (all masked, transparent or NaN)")
    return take_sample(candidates, sample_size)


def _sample_candidates(
    sources: list[tuple[int, SampleSource]],
    sample_size: int,
    *,
    progress: bool,
    on_error: Callable[[int, PipelineError], None] | None,
) -> dict[int, Candidates]:
    """Candidates of each (seed, source) below one weighted-key threshold, enough for ``sample_size``.

    The first pass reads each source's planned blocks with a threshold from the pixel count.
    While masking leaves too few candidates, the threshold is raised from the estimated valid
    pixels; once every valid pixel read is a candidate, the strata are made finer (more blocks
    read), down to reading every block. A source whose pass raises a :class:`PipelineError` is
    reported to ``on_error`` with its position and dropped (without ``on_error``, the error
    propagates). Returns the candidates by position in ``sources``.
    """
    strides = {i: sampling_stride(source.shape, sample_size) for i, (_, source) in enumerate(sources)}
    threshold = candidate_threshold(sample_size, sum(math.prod(source.shape) for _, source in sources))
    while True:
        parts: dict[int, Candidates] = {}
        plans = {
            i: plan_blocks(sources[i][1].shape, stride=stride, seed=sources[i][0]) for i, stride in strides.items()
        }
        logger.info(
            "sampling %d pixels from %d blocks (weighted-key threshold %.3g)",
            sample_size,
            sum(len(plan.regions) for plan in plans.values()),
            threshold,
        )
        for i, plan in plans.items():
            seed, source = sources[i]
            try:
                parts[i] = _compute(build_candidates(source, plan, threshold=threshold, seed=seed), progress=progress)
            except PipelineError as err:
                if on_error is None:
                    raise
                on_error(i, err)
                del strides[i]
        n_candidates = sum(len(part.keys) for part in parts.values())
        if n_candidates >= sample_size:
            return parts
        unsaturated = [i for i, plan in plans.items() if i in parts and threshold * plan.weights.min() < 1.0]
        if unsaturated:
            valid = sum(part.valid_estimate for part in parts.values())
            threshold = max(2 * threshold, candidate_threshold(sample_size, valid))
        elif any(stride > 1 for stride in strides.values()):
            strides = {i: max(1, stride // 2) for i, stride in strides.items()}
        else:
            return parts


def _write_labels(
    image: Image,
    mask: Any,
    model: SegmentationModel,
    plan: OutputPlan,
    options: OutputOptions,
    *,
    read: ReadOptions,
    fingerprint: dict[str, Any],
    previous: PreviousRun | None,
    started: float,
    progress: bool,
) -> RunResult:
    """Predict and store level 0 (with label counts and the input thumbnail from the same pass,
    so the input is decoded once), build coarser levels from the level above, finalise the
    metadata, write the side files, and stream a TIFF from the finished pyramid if asked.

    With ``previous`` (an interrupted run of the same fingerprint), level-0 chunks already
    written and decodable are kept and only the others are predicted. A converted copy of the
    input in the work directory is removed at the end unless ``read.keep_workdir``.
    """
    labels = _image_labels(image, model, mask)
    shapes = pyramid_shapes(labels.shape)
    pixel_size = options.pixel_size or image.pixel_size
    zarr_path = plan.work_path
    ngff = "0.5" if plan.kind == "tiff" else options.ngff
    if plan.into_image is not None:
        ngff = prepare_labels_group(plan.into_image)
    metadata = {**_output_metadata(image, model), "fingerprint": fingerprint, "ngff": ngff}
    if previous is None:
        remove_output(zarr_path)  # an output replaced with --overwrite, or a TIFF run's leftover
        arrays = create_label_zarr(
            zarr_path,
            shapes=shapes,
            chunks=_level_chunks(shapes, (int(labels.chunksize[0]), int(labels.chunksize[1]))),
            dtype=labels.dtype,
            ngff=ngff,
            attrs=metadata,
        )
        done_counts, missing = np.zeros(model.n_clusters + 1, np.int64), list(np.ndindex(*labels.numblocks))
    else:
        arrays = open_label_levels(zarr_path, writable=True)
        if tuple(arrays[0].chunks) != tuple(labels.chunksize):
            raise ResumeMismatchError(
                f"cannot resume {zarr_path!r}: its chunks {arrays[0].chunks!r} differ from this run's"
            )
        done_counts, missing = _verify_written(zarr_path, arrays[0], labels.numblocks, model.n_clusters)
    logger.info("predicting %d of %d chunks into %s", len(missing), labels.npartitions, zarr_path)
    try:
        first_reduced = 1
        if previous is None:  # one pass writes, counts, takes the preview thumbnail and writes level 1
            pixels = image.data if options.previews else None
            next_level = None
            if len(arrays) > 1 and tuple(2 * c for c in arrays[1].chunks) == tuple(arrays[0].chunks):
                next_level, first_reduced = arrays[1], 2
            written = store_count_and_preview(
                labels,
                arrays[0],
                model.n_clusters + 1,
                pixels=pixels,
                step=thumbnail_step(image.shape[:2]),
                next_level=next_level,
            )
        else:
            written = (
                store_and_count(labels, arrays[0], missing, model.n_clusters + 1),
                _thumbnail_pixels(image) if options.previews else None,
            )
        new_counts, thumbnail = _compute(*written, progress=progress)
        _write_pyramid(arrays, first=first_reduced)
    except PipelineError:
        raise
    except OSError as err:
        raise OutputError(
            f"writing {zarr_path!r} failed: {err.strerror or err}; the chunks written so far are kept: "
            "fix the cause and rerun with --resume"
        ) from err
    counts = done_counts + new_counts
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
    _remove_workdir_copy(image, plan, read)
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


def _thumbnail_pixels(image: Image) -> da.Array:
    """Lazy (h, w, C) pixels for a resumed run's preview thumbnail, long side <= 1024: strided from
    the smallest pyramid level of the input that is still at least that large (a small read), or
    from the processed level itself (one more decode: a resumed run skips the written chunks, so
    the label pass cannot provide it, as a first run's does)."""
    source = image
    usable = [lvl for lvl in range(image.level + 1, len(image.level_shapes)) if max(image.level_shapes[lvl]) >= 1024]
    if usable:
        try:
            source = open_image(image.path, level=usable[-1])
        except InputError:  # e.g. a converted one-level copy standing in for the input
            source = image
    step = thumbnail_step(source.shape[:2])
    return source.data[::step, ::step]


def _level_chunks(shapes: list[tuple[int, int]], chunks: tuple[int, int]) -> list[tuple[int, int]]:
    """Zarr chunks of each level: ``chunks``, but half of them on level 1 when they are even, so
    the level-0 pass can write level 1 chunk by chunk (see ``store_count_and_preview``)."""
    halve = len(shapes) > 1 and chunks[0] % 2 == 0 and chunks[1] % 2 == 0 and min(shapes[0]) > 1
    return [((chunks[0] // 2, chunks[1] // 2) if level == 1 and halve else chunks) for level in range(len(shapes))]


def _write_pyramid(arrays: list[Any], *, first: int = 1) -> None:
    """Build every level from ``first`` on from the level above, as stored (never from the lazy graph).

    One task per chunk of a level reads the chunks of the level above it covers and writes every
    second pixel (see :func:`pixseg.io.label_zarr.reduce_level`). Levels from 2 on hold at most
    1/16 of the pixels: they run on this process's threads even under a distributed scheduler
    (with the earlier from_zarr/rechunk graph, a local cluster's per-task transfers made them
    several times slower; not measured again since).
    """
    for level in range(first, len(arrays)):
        logger.info("pyramid level %d: %dx%d", level, *arrays[level].shape)
        stored = reduce_level(arrays[level - 1], arrays[level])
        if level == 1:
            _compute(*stored, progress=False)
        else:
            with dask.config.set(scheduler="threads"):
                _compute(*stored, progress=False)


def _verify_written(
    zarr_path: str, array: Any, numblocks: tuple[int, ...], n_labels: int
) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Counts of the level-0 chunks an interrupted run wrote (each decoded to check it), and the
    chunks still to predict (missing or undecodable)."""
    blocks = list(np.ndindex(*numblocks))
    written = [b for b in blocks if chunk_written(zarr_path, 0, array, b)]
    count = dask.delayed(count_stored_chunk, pure=True)
    results = _compute([count(array, b, n_labels + 1) for b in written], progress=False) if written else []
    good = {b for b, counts in zip(written, results, strict=True) if counts is not None}
    total = np.sum([c for c in results if c is not None], axis=0) if good else np.zeros(n_labels + 1)
    logger.info("resuming: %d of %d chunks already written and verified", len(good), len(blocks))
    return np.asarray(total, dtype=np.int64), [b for b in blocks if b not in good]


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
    # dask 2026.8 can hand back the results of mixed collection types (arrays and delayed
    # objects, even in a dict) in the wrong places: compute one type at a time
    todo = [c for c in collections if c is not None]
    if len({isinstance(c, Delayed) for c in todo}) > 1:
        raise TypeError("_compute takes collections of one type at a time (dask arrays or delayed objects)")
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


def _finished_result(plan: OutputPlan, previous: PreviousRun, image: Image, started: float) -> RunResult:
    """The result of a run that ``--resume`` found already complete: nothing is redone."""
    status = previous.status
    logger.info("%s is already complete; nothing to do", plan.path)
    size = status.get("pixel_size_um")
    return RunResult(
        output=plan.path,
        model=previous.model,
        shape=image.shape[:2],
        n_chunks=int(np.prod(image.data.numblocks[:2])),
        seconds=time.perf_counter() - started,
        levels=[tuple(level) for level in status.get("levels", [])],
        pixel_size=(size[0], size[1]) if size else None,
        statistics=list(status.get("statistics", [])),
        side_files=[],
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
            "pixseg": pixseg.__version__,
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


# --- features: texture scale, masks, normalisation, fit level ------------------------------

NORMALISE_MODES = ("auto", "dtype", "robust")
#: Percentiles of the sampled channel values that ``--normalise robust`` maps to 0 and 1.
ROBUST_PERCENTILES = (0.5, 99.5)


def _check_feature_options(fit: FitOptions) -> None:
    if fit.normalise not in NORMALISE_MODES:
        raise ParameterError(f"--normalise must be one of {', '.join(NORMALISE_MODES)}, got {fit.normalise!r}")
    if fit.fit_level is not None and fit.fit_level < 0:
        raise ParameterError(f"--fit-level must be >= 0, got {fit.fit_level!r}")
    if fit.mask not in ("none", "auto") and not os.path.exists(fit.mask):
        raise ParameterError(f"--mask {fit.mask!r} is neither auto, none nor an existing mask image")


def _segment_features(
    image: Image, fit: FitOptions, *, read: ReadOptions, progress: bool
) -> tuple[FeatureSpec, Any, Any]:
    """The feature spec, the mask (see :func:`_open_mask`), and what to sample at the fit level.

    Computes the automatic mask (on a small level) and, for robust normalisation, one sample
    pass of the raw channels at the fit level.
    """
    spec = _feature_spec(image, fit, channel_ranges=None)  # validates the options before any compute
    fit_image = image
    if fit.fit_level is not None and fit.fit_level != image.level:
        if fit.fit_level >= len(image.level_shapes):
            n_levels = len(image.level_shapes)
            raise ParameterError(
                f"--fit-level {fit.fit_level} does not exist in {image.path!r}: it has {n_levels} level(s)"
            )
        fit_image = open_image(image.path, level=fit.fit_level, chunk=read.chunk)
        logger.info(
            "fitting on level %d (%s), predicting level %d", fit_image.level, _shape_text(fit_image), image.level
        )
    mask = _open_mask(fit.mask, image, read=read, progress=progress)
    mode = fit.normalise if fit.normalise != "auto" else ("dtype" if image.dtype == np.uint8 else "robust")
    if mode == "robust":
        raw_spec = make_feature_spec(
            "channels", n_channels=image.shape[2], has_alpha=image.has_alpha, dtype=image.dtype, value_range=(0.0, 1.0)
        )
        raw = _sample_source(fit_image, raw_spec, mask)
        values = _draw_sample(raw, sample_size=fit.sample_size, seed=fit.seed, progress=progress)
        rgb = image.shape[2] - int(image.has_alpha) == 3
        ranges = robust_channel_ranges(values, percentiles=ROBUST_PERCENTILES, rgb=rgb)
        logger.info("robust channel ranges (%g-%g percentiles): %s", *ROBUST_PERCENTILES, ranges)
        spec = _feature_spec(image, fit, channel_ranges=ranges)
    return spec, mask, _sample_source(fit_image, spec, mask)


def _feature_spec(image: Image, fit: FitOptions, *, channel_ranges: Any) -> FeatureSpec:
    return make_feature_spec(
        fit.features,
        n_channels=image.shape[2],
        has_alpha=image.has_alpha,
        dtype=image.dtype,
        channel_ranges=channel_ranges,
        sigmas=fit.sigmas,
        mask=fit.mask if fit.mask in ("none", "auto") else "file",
    )


def _model_mask(image: Image, spec: FeatureSpec, *, mask: str | None, read: ReadOptions, progress: bool) -> Any:
    """The mask (see :func:`_open_mask`) to apply with a saved model's spec: as asked, by default as the model."""
    if mask is None:
        if spec.mask == "file":
            raise ParameterError("the model was fitted with a mask file: pass --mask PATH again (or --mask none)")
        mask = spec.mask
    if mask not in ("none", "auto") and not os.path.exists(mask):
        raise ParameterError(f"--mask {mask!r} is neither auto, none nor an existing mask image")
    return _open_mask(mask, image, read=read, progress=progress)


def _image_labels(image: Image, model: SegmentationModel, mask: Any) -> da.Array:
    """Lazy (Y, X) labels of ``image``, 0 outside ``mask``: through a colour table when one applies
    (see :func:`pixseg.predict.table_applies`), else from the features by the kernel."""
    if not table_applies(model, math.prod(image.shape[:2])):
        return build_labels(_image_features(image, model.feature_spec, mask), model)
    logger.info("labelling through a table of every colour's label")
    labels = build_table_labels(image.data, model)
    if mask is None:
        return labels
    return mask_labels(labels, upsample_mask(mask, image.shape[:2], labels.chunks))


def _image_features(image: Image, spec: FeatureSpec, mask: Any) -> Any:
    """Lazy features of ``image`` at its level, NaN outside ``mask`` (a 2-D bool dask array at any resolution)."""
    features = build_features(image.data, spec, scale=_level_scale(image))
    if mask is None:
        return features
    return mask_features(features, upsample_mask(mask, image.shape[:2], features.chunks[:2]))


def _sample_source(image: Image, spec: FeatureSpec, mask: Any) -> SampleSource:
    """What to sample ``image`` for: its region reader, ``spec``'s features, and ``mask``."""
    return SampleSource(
        pixels=image.source,
        spec=spec,
        scale=_level_scale(image),
        mask=mask,
        full_width_reads=image.native_chunks[1] >= image.shape[1],
    )


def _level_scale(image: Image) -> tuple[float, float]:
    """Full-resolution pixels per pixel of ``image``'s level, (rows, columns)."""
    full, level = image.level_shapes[0], image.shape[:2]
    return full[0] / level[0], full[1] / level[1]


def _open_mask(mask: str, image: Image, *, read: ReadOptions, progress: bool) -> Any:
    """``None``, the automatic tissue mask (computed here, on a small level) or a user mask file, lazily.

    Returns a 2-D bool dask array (True = keep) at its own resolution.
    """
    if mask == "none":
        return None
    if mask != "auto":
        mask_image = open_image(mask, chunk=read.chunk)
        if mask_image.shape[2] != 1:
            raise ParameterError(f"--mask {mask!r} has {mask_image.shape[2]} channels; a mask has one (0 = masked)")
        check_mask_shape(mask_image.shape[:2], image.level_shapes[0], source=mask)
        return mask_image.data[..., 0] != 0
    colour = image.shape[2] - int(image.has_alpha)
    if colour != 3:
        raise ParameterError(f"--mask auto needs an RGB image; {image.path!r} has {colour} colour channel(s)")
    level, factor = choose_mask_level(image.level_shapes)
    low = image if level == image.level else open_image(image.path, level=level, chunk=read.chunk)
    raw_spec = make_feature_spec(
        "channels", n_channels=low.shape[2], has_alpha=low.has_alpha, dtype=low.dtype, value_range=(0.0, 1.0)
    )
    pixels = _compute(block_mean(build_features(low.data, raw_spec), factor), progress=progress)
    white = (float(np.iinfo(np.uint8).max),) * 3 if image.dtype == np.uint8 else None
    tissue = tissue_mask(pixels, white=white)
    logger.info(
        "auto mask from level %d averaged %dx: %dx%d, %.1f%% tissue", level, factor, *tissue.shape, 100 * tissue.mean()
    )
    if not tissue.any():
        raise InputError(f"--mask auto found no tissue in {image.path!r}; use --mask none or a mask file")
    return da.from_array(tissue, chunks=tissue.shape)
