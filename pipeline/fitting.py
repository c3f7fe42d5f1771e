"""The fit: the feature spec, the deterministic sample (of one image or pooled over a cohort) and the dask-ml fit.

See :mod:`pixseg.sampling` for how the sample is drawn and :mod:`pixseg.kmeans_fit` for the fit itself.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pixseg.choose_k import CRITERION, auto_range, choose_clusters
from pixseg.compute import active_client, compute
from pixseg.destinations import check_not_input, check_writable_parent
from pixseg.errors import InputError, OutputExistsError, ParameterError, PipelineError
from pixseg.features import FeatureSpec, make_feature_spec, robust_channel_ranges
from pixseg.graphs import check_mask_option, model_mask, open_mask, sample_source, shape_text
from pixseg.io.model_file import save_model
from pixseg.io.readers import Image, open_input
from pixseg.kmeans_fit import fit_model, preload_fitting
from pixseg.model import SegmentationModel
from pixseg.options import FitOptions, ReadOptions
from pixseg.plan import check_model_fits, provenance, refuse_incomplete_input
from pixseg.sample_graph import build_candidates
from pixseg.sampling import (
    MAX_COUNTED_MASK,
    BlockPlan,
    Candidates,
    SampleSource,
    candidate_threshold,
    cohort_seed,
    plan_blocks,
    planned_valid_pixels,
    sampling_stride,
    take_pooled_sample,
    take_sample,
)
from pixseg.tables import format_k_table

logger = logging.getLogger(__name__)

#: Percentiles of the sampled channel values that ``normalise="robust"`` maps to 0 and 1.
ROBUST_PERCENTILES = (0.5, 99.5)


def sample_and_fit(
    image: Image, fit: FitOptions, *, read: ReadOptions, progress: bool
) -> tuple[SegmentationModel, Any]:
    """Sample ``image`` and fit its model; also returns the mask the labels need (see :func:`prepare_fit`).

    Computes the sample (and the automatic mask and robust channel ranges when asked).
    """
    if active_client() is not None:  # this process idles while the workers sample
        preload_fitting()
    spec, mask, source = prepare_fit(image, fit, read=read, progress=progress)
    sample = draw_sample(source, sample_size=fit.sample_size, seed=fit.seed, progress=progress)
    model = fit_options_model(sample, spec, fit)
    logger.info("fitted in %d iterations; centroids (%s):\n%s", model.n_iter, ", ".join(spec.columns), model.centroids)
    return model, mask


def fit_options_model(sample: np.ndarray, spec: FeatureSpec, fit: FitOptions) -> SegmentationModel:
    """The model of ``sample`` for ``fit``: K chosen first for ``--clusters auto`` (see
    :mod:`pixseg.choose_k`); the preset and the choice of K are recorded in the model."""
    k_range, choice = auto_range(fit.clusters), None
    if k_range is not None:
        logger.info("choosing K in %d-%d by %s on the sample", *k_range, CRITERION)
        choice = choose_clusters(sample, spec, k_range=k_range, seed=fit.seed)
        logger.info("chose K=%d (highest %s):\n%s", choice.chosen, CRITERION, format_k_table(choice))
    n_clusters = choice.chosen if choice is not None else int(fit.clusters)
    logger.info("fitting k-means (K=%d) on %d sampled pixels", n_clusters, len(sample))
    model = fit_model(sample, spec, n_clusters=n_clusters, seed=fit.seed, restarts=fit.restarts)
    return dataclasses.replace(model, preset=fit.preset, k_choice=choice)


def prepare_fit(image: Image, fit: FitOptions, *, read: ReadOptions, progress: bool) -> tuple[FeatureSpec, Any, Any]:
    """The feature spec, the mask (see :func:`open_mask`), and what to sample at the fit level.

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
        fit_image = open_input(image.path, read, level=fit.fit_level, nodata=image.nodata)
        logger.info(
            "fitting on level %d (%s), predicting level %d", fit_image.level, shape_text(fit_image), image.level
        )
    mask = open_mask(fit.mask, image, read=read, progress=progress)
    mode = fit.normalise if fit.normalise != "auto" else ("dtype" if image.dtype == np.uint8 else "robust")
    if mode == "robust":
        raw_spec = make_feature_spec(
            "channels", n_channels=image.shape[2], has_alpha=image.has_alpha, dtype=image.dtype, value_range=(0.0, 1.0)
        )
        raw = sample_source(fit_image, raw_spec, mask)
        values = draw_sample(raw, sample_size=fit.sample_size, seed=fit.seed, progress=progress)
        rgb = image.shape[2] - int(image.has_alpha) == 3
        ranges = robust_channel_ranges(values, percentiles=ROBUST_PERCENTILES, rgb=rgb)
        logger.info("robust channel ranges (%g-%g percentiles): %s", *ROBUST_PERCENTILES, ranges)
        spec = _feature_spec(image, fit, channel_ranges=ranges)
    return spec, mask, sample_source(fit_image, spec, mask)


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


def draw_sample(source: SampleSource, *, sample_size: int, seed: int, progress: bool) -> np.ndarray:
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
    plans = _plans(sources, strides)
    threshold = candidate_threshold(
        sample_size,
        sum(planned_valid_pixels(_small_mask(sources[i][1]), sources[i][1].shape, plan) for i, plan in plans.items()),
    )
    while True:
        parts: dict[int, Candidates] = {}
        logger.info(
            "sampling %d pixels from %d blocks (weighted-key threshold %.3g)",
            sample_size,
            sum(len(plan.regions) for plan in plans.values()),
            threshold,
        )
        for i, plan in plans.items():
            seed, source = sources[i]
            try:
                parts[i] = compute(build_candidates(source, plan, threshold=threshold, seed=seed), progress=progress)
            except PipelineError as err:
                if on_error is None:
                    raise
                on_error(i, err)
                del strides[i]
        n_candidates = sum(len(part.keys) for part in parts.values())
        if n_candidates >= sample_size:
            return parts
        unsaturated = [i for i, plan in plans.items() if i in parts and threshold * plan.weights.min() < 1.0]
        plans = {i: plan for i, plan in plans.items() if i in strides}  # a failed source is not read again
        if unsaturated:
            valid = sum(part.valid_estimate for part in parts.values())
            threshold = max(2 * threshold, candidate_threshold(sample_size, valid))
        elif any(stride > 1 for stride in strides.values()):
            strides = {i: max(1, stride // 2) for i, stride in strides.items()}
            plans = _plans(sources, strides)
        else:
            return parts


def _plans(sources: Sequence[tuple[int, SampleSource]], strides: dict[int, int]) -> dict[int, BlockPlan]:
    """The block plan of each source still sampled, at its stride, by position in ``sources``."""
    return {i: plan_blocks(sources[i][1].shape, stride=stride, seed=sources[i][0]) for i, stride in strides.items()}


def _small_mask(source: SampleSource) -> np.ndarray | None:
    """``source``'s mask in memory when it has at most ``MAX_COUNTED_MASK`` pixels (the automatic
    mask always), to count before the first sample pass; else None (or unreadable: the sample
    pass reports it)."""
    if source.mask is None or source.mask.size > MAX_COUNTED_MASK:
        return None
    try:
        return np.asarray(compute(source.mask, progress=False))
    except PipelineError:
        return None


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
    read: ReadOptions | None = None,
    fit: FitOptions | None = None,
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
    read = read or ReadOptions()
    fit = fit or FitOptions()
    check_mask_option(fit.mask)
    if not input_paths:
        raise ParameterError("fit_cohort needs at least one input image")
    if model_path is not None:
        for path in input_paths:
            check_not_input(model_path, path, "cohort model file")
        if os.path.lexists(model_path) and not overwrite:
            raise OutputExistsError(f"model file {model_path!r} already exists; pass --overwrite to replace it")
        check_writable_parent(model_path)
    if active_client() is not None:  # this process idles while the workers sample
        preload_fitting()
    failed: dict[str, PipelineError] = {}
    members: list[tuple[int, Image, Any]] = []
    spec: FeatureSpec | None = None
    for index, path in enumerate(input_paths):
        try:
            image = open_input(path, read)
            refuse_incomplete_input(image)
            if spec is None:  # the first readable image sets the spec (normalisation included)
                image_spec, _, source = prepare_fit(image, fit, read=read, progress=progress)
            else:  # the others are sampled with the features the model will give them
                check_model_fits(spec, image, f"cohort of {members[0][1].path!r}")
                level = image.level if fit.fit_level is None else fit.fit_level
                same = level == image.level
                fit_image = image if same else open_input(path, read, level=level, nodata=image.nodata)
                mask = model_mask(fit_image, spec, mask=fit.mask, read=read, progress=progress)
                source = sample_source(fit_image, spec, mask)
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
    logger.info("fitting on %d pixels pooled from %d images", len(sample), len(contributors))
    model = fit_options_model(sample, spec, fit)
    if model_path is not None:
        cohort_provenance = {
            **provenance(members[0][1]),
            "input": None,
            "cohort": [
                {"input": os.path.abspath(path), "index": index, "sampled_pixels": int(n)}
                for (index, _, _), path, n in zip(members, contributors, counts, strict=True)
            ],
        }
        save_model(model, model_path, provenance=cohort_provenance)
        logger.info("cohort model saved to %s", model_path)
    return CohortFit(
        model=model, inputs=tuple(contributors), contributions=tuple(int(n) for n in counts), failed=failed
    )


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
