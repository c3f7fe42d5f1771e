"""Orchestration of one image: open -> plan -> sample -> fit -> label -> finish.

Each step is a call into the module that owns it: :mod:`pixseg.io.readers` opens,
:mod:`pixseg.plan` checks everything before any work, :mod:`pixseg.convert` converts a poorly
laid-out input, :mod:`pixseg.fitting` samples and fits, :mod:`pixseg.labelling` writes the labels,
their pyramid and side files. Options come validated from :mod:`pixseg.options`.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext

from pixseg.convert import converted_if_needed, write_output_image
from pixseg.destinations import check_model_path
from pixseg.fitting import sample_and_fit
from pixseg.graphs import check_mask_option, model_mask, shape_text
from pixseg.io.locks import lock_path_for, output_lock
from pixseg.io.model_file import load_model, model_document, save_model
from pixseg.io.readers import Image, describe_chunks, open_input
from pixseg.labelling import RunResult, finished_result, write_labels
from pixseg.options import FitOptions, OutputOptions, ReadOptions
from pixseg.plan import (
    check_model_fits,
    check_run_paths,
    job_fingerprint,
    plan_output,
    previous_run,
    provenance,
    refuse_incomplete_input,
)
from pixseg.regions import open_regions

logger = logging.getLogger(__name__)

#: The modules pixseg's tasks run, for workers to import as they start (see
#: :func:`pixseg.cluster.open_compute`).
WORKER_MODULES = ("pixseg.labelling", "pixseg.fitting")


def segment(
    input_path: str,
    output_path: str,
    *,
    read: ReadOptions | None = None,
    fit: FitOptions | None = None,
    output: OutputOptions | None = None,
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
        ``.zarr`` (OME-Zarr labels) or ``.tif``/``.tiff`` (tiled BigTIFF). With
        ``output.with_image``, a ``.zarr`` OME-Zarr image of the input with the labels in its
        ``labels/labels`` group (side files beside it, ``OUT.zarr.labels.*``).
    read, fit, output : ReadOptions, FitOptions, OutputOptions, optional
        Reading, fitting and writing options (default: their defaults).
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
    read, fit, output = read or ReadOptions(), fit or FitOptions(), output or OutputOptions()
    check_mask_option(fit.mask)
    image = open_input(input_path, read)
    refuse_incomplete_input(image)
    plan = plan_output(output_path, image, overwrite=overwrite, resume=resume, with_image=output.with_image)
    if model_path is not None:
        check_model_path(model_path, overwrite=overwrite or resume)
    check_run_paths(plan, image, model_path=model_path, mask=fit.mask, workdir=read.workdir)
    regions = open_regions(output.regions, image.shape[:2])
    fingerprint = job_fingerprint(image, read=read, fit=fit, output=output)
    with output_lock(lock_path_for(plan.side_base)):
        _warn_if_pixel_size_unknown(image, output)
        previous = previous_run(plan, fingerprint) if resume else None
        if previous is not None and previous.status.get("complete"):
            if model_path is not None:  # asked for: the finished run's model
                save_model(previous.model, model_path, provenance=provenance(image))
            return finished_result(plan, previous, image, started)
        if plan.writes_image:  # --with-image: the slide's pyramid first, the labels into its labels/
            write_output_image(
                image, plan, output, fingerprint=fingerprint, resuming=previous is not None, progress=progress
            )
        # --fit-level reads another pyramid level of the input itself: a one-level copy has none
        converted = fit.fit_level is None
        with converted_if_needed(image, plan, read, progress=progress) if converted else nullcontext(image) as image:
            logger.info("input %s: %s %s, %s", image.path, shape_text(image), image.dtype.name, describe_chunks(image))
            if previous is None:
                model, mask = sample_and_fit(image, fit, read=read, progress=progress)
            else:
                logger.info("resuming %s with the interrupted run's model", plan.path)
                model = previous.model
                mask = model_mask(image, model.feature_spec, mask=fit.mask, read=read, progress=progress)
            if model_path is not None:
                save_model(model, model_path, provenance=provenance(image))
                logger.info("model saved to %s", model_path)
            return write_labels(
                image,
                mask,
                model,
                plan,
                output,
                fingerprint=fingerprint,
                previous=previous,
                started=started,
                progress=progress,
                regions=regions,
            )


def apply(
    model_path: str,
    input_path: str,
    output_path: str,
    *,
    read: ReadOptions | None = None,
    output: OutputOptions | None = None,
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
    read, output = read or ReadOptions(), output or OutputOptions()
    model = load_model(model_path)
    image = open_input(input_path, read)
    refuse_incomplete_input(image)
    plan = plan_output(output_path, image, overwrite=overwrite, resume=resume, with_image=output.with_image)
    check_run_paths(plan, image, mask=mask, applied_model=model_path, workdir=read.workdir)
    regions = open_regions(output.regions, image.shape[:2])
    check_model_fits(model.feature_spec, image, model_path)
    model = model.reading_alpha(image.has_alpha)
    fingerprint = job_fingerprint(image, read=read, output=output, model=model_document(model), mask=mask)
    with output_lock(lock_path_for(plan.side_base)):
        _warn_if_pixel_size_unknown(image, output)
        previous = previous_run(plan, fingerprint) if resume else None
        if previous is not None and previous.status.get("complete"):
            return finished_result(plan, previous, image, started)
        if plan.writes_image:  # --with-image: the slide's pyramid first, the labels into its labels/
            write_output_image(
                image, plan, output, fingerprint=fingerprint, resuming=previous is not None, progress=progress
            )
        with converted_if_needed(image, plan, read, progress=progress) as image:
            logger.info("input %s: %s %s, %s", image.path, shape_text(image), image.dtype.name, describe_chunks(image))
            labels_mask = model_mask(image, model.feature_spec, mask=mask, read=read, progress=progress)
            return write_labels(
                image,
                labels_mask,
                model,
                plan,
                output,
                fingerprint=fingerprint,
                previous=previous,
                started=started,
                progress=progress,
                applied_model=model_path,
                applied_mask=mask,
                regions=regions,
            )


def _warn_if_pixel_size_unknown(image: Image, output: OutputOptions) -> None:
    """One warning, once every check has passed, when neither the input nor ``--pixel-size`` gives a pixel size."""
    if output.pixel_size is None and image.pixel_size is None:
        logger.warning("pixel size unknown: areas in pixels; pass --pixel-size UM to set it")
