"""Volumes in batch runs (``pixseg run``): which images are volumes, and labelling one of them.

:mod:`pixseg.batch` hands each image it finds to this module when it is a volume
(:func:`pixseg.io.readers.volume.is_volume_input`: a NIfTI file, a DICOM series, or with
``read.volume`` a 3-D TIFF or OME-Zarr stack):

- ``model: per-image`` segments it with :func:`pixseg.volume_runner.segment_volume` (its model
  saved beside its output, as for slides);
- ``model: PATH`` applies that model with :func:`pixseg.volume_runner.apply_volume`;
- ``model: fit-once`` fits one model on a sample pooled over every volume (:func:`fit_cohort`),
  saved as ``output.cohort_model`` and applied to each volume as ``model: PATH`` is. A fit-once
  batch of slides and volumes together is refused before any work (:func:`check_cohort`).

Outputs are ``.zarr`` (``output.format: zarr``) or ``.nii.gz`` (``output.format: nifti``). An
interrupted ``.zarr`` output continues with ``resume``; a NIfTI output is written whole under a
temporary name, so one at its final path is complete (:func:`is_complete`).
"""

from __future__ import annotations

import math
import os

from pixseg.config import RunConfig
from pixseg.errors import ConfigError
from pixseg.io.readers.volume import is_volume_input

#: Suffixes of a NIfTI output, which is complete once it exists.
NIFTI_OUTPUTS = (".nii", ".nii.gz")


def is_volume(config: RunConfig, path: str) -> bool:
    """Whether the batch input ``path`` is read as a volume under ``config``'s read options."""
    return is_volume_input(path, volume=config.read.volume)


def check_cohort(config: RunConfig, inputs: list[str]) -> None:
    """Refuse ``model: fit-once`` over slides and volumes together, before any work.

    Raises
    ------
    ConfigError
        Naming the first slide and the first volume.
    """
    if config.batch.model != "fit-once":
        return
    kinds = {is_volume(config, path): path for path in reversed(inputs)}
    if len(kinds) == 2:
        raise ConfigError(
            f"{config.path}: model: fit-once cannot pool slides and volumes ({kinds[False]!r}, {kinds[True]!r}); "
            "run them in separate configs"
        )


def fit_cohort(config: RunConfig, inputs: list[str], model_path: str, *, progress: bool) -> None:
    """Fit one model on a sample pooled over the volumes ``inputs`` and save it at ``model_path``.

    As the 2-D cohort fit (:func:`pixseg.fitting.fit_cohort`): volume ``i`` is sampled
    (:mod:`pixseg.volume_sampling`) with its own seed (:func:`pixseg.sampling.cohort_seed`), and
    contributes in proportion to its voxels (``fit.sample_size`` in all); texture sigmas are mm of
    its own spacing (:func:`pixseg.volumes.fit_volumes`). Deterministic for a seed and the inputs'
    order. A ``.nii.gz`` input's converted copy is removed after the fit.

    Raises
    ------
    PipelineError
        For an unreadable volume, options volumes refuse, or volumes of different channel counts.
    """
    from pixseg.io.model_file import save_model
    from pixseg.io.readers.volume import Volume, open_volume
    from pixseg.sampling import cohort_seed
    from pixseg.volume_mask import body_mask
    from pixseg.volume_runner import check_mask, check_volume_options, drop_copy
    from pixseg.volumes import VolumeMember, check_volume_features, check_window, fit_volumes

    fit, read = config.fit, config.read
    check_volume_options(read, config.output, fit)
    window, mask = check_window(fit.window), check_mask(fit.mask)
    check_volume_features(fit.features)
    workdir = read.workdir or config.directory
    volumes: list[Volume] = []
    try:
        for path in inputs:
            volumes.append(open_volume(path, chunk=read.chunk, series_uid=read.series_uid, workdir=workdir))
        channels = {volume.shape[3] for volume in volumes}
        if len(channels) > 1:
            raise ConfigError(
                f"{config.path}: model: fit-once needs volumes of one channel count, got {sorted(channels)}"
            )
        total = sum(math.prod(volume.shape[:3]) for volume in volumes)
        sizes = [max(1, round(fit.sample_size * math.prod(v.shape[:3]) / total)) for v in volumes]
        members = [
            VolumeMember(
                volume.data,
                volume.spacing,
                None if mask == "none" else body_mask(volume.data, progress=progress),
                cohort_seed(fit.seed, index),
                size,
            )
            for index, (volume, size) in enumerate(zip(volumes, sizes, strict=True))
        ]
        model = fit_volumes(members, fit, window=window, progress=progress)
    finally:
        for volume in volumes:
            drop_copy(volume, workdir)
    cohort = [
        {"input": os.path.abspath(path), "index": index, "sampled_voxels": size}
        for index, (path, size) in enumerate(zip(inputs, sizes, strict=True))
    ]
    save_model(model, model_path, provenance={"input": None, "window": window, "cohort": cohort})


def is_complete(output: str) -> bool | None:
    """Whether a NIfTI ``output`` is a complete pixseg label volume; None for other outputs."""
    if not output.lower().endswith(NIFTI_OUTPUTS):
        return None
    from pixseg.io.label_volume import is_label_nifti

    return is_label_nifti(output)


def label_volume(
    config: RunConfig,
    input_path: str,
    output_path: str,
    model_path: str | None,
    *,
    overwrite: bool,
    resume: bool,
    progress: bool,
) -> None:
    """Segment (``model_path`` None: per-image, model saved as ``OUTPUT.model.json``) or apply a
    model to one volume of a batch; ``resume`` applies to ``.zarr`` outputs only (a NIfTI output
    of the same job is written again).

    Raises
    ------
    PipelineError
        As :func:`pixseg.volume_runner.segment_volume`, or for options volumes refuse
        (:func:`pixseg.volume_runner.check_volume_options`).
    """
    from pixseg.volume_runner import apply_volume, check_volume_options, segment_volume

    check_volume_options(config.read, config.output, config.fit if model_path is None else None)
    if is_complete(output_path) is not None:  # a NIfTI output: redone whole
        overwrite, resume = overwrite or resume, False
    if model_path is None:
        segment_volume(
            input_path,
            output_path,
            read=config.read,
            fit=config.fit,
            model_path=output_path + ".model.json",
            overwrite=overwrite,
            resume=resume,
            progress=progress,
            previews=config.output.previews,
        )
    else:
        apply_volume(
            model_path,
            input_path,
            output_path,
            read=config.read,
            mask=config.fit.mask,
            overwrite=overwrite,
            resume=resume,
            progress=progress,
            previews=config.output.previews,
        )
