"""Volumes in batch runs (``pixseg run``): which images are volumes, and labelling one of them.

:mod:`pixseg.batch` hands each image it finds to this module when it is a volume
(:func:`pixseg.io.readers.volume.is_volume_input`: a NIfTI file, a DICOM series, or with
``read.volume`` a 3-D TIFF or OME-Zarr stack):

- ``model: per-image`` segments it with :func:`pixseg.volume_runner.segment_volume` (its model
  saved beside its output, as for slides);
- ``model: PATH`` applies that model with :func:`pixseg.volume_runner.apply_volume`;
- ``model: fit-once`` is refused before any work (:func:`check_cohort`): a pooled 3-D fit is
  not built yet.

Outputs are ``.zarr`` (``output.format: zarr``) or ``.nii.gz`` (``output.format: nifti``). An
interrupted ``.zarr`` output continues with ``resume``; a NIfTI output is written whole under a
temporary name, so one at its final path is complete (:func:`is_complete`).
"""

from __future__ import annotations

from pixseg.config import RunConfig
from pixseg.errors import ConfigError
from pixseg.io.readers.volume import is_volume_input

#: Suffixes of a NIfTI output, which is complete once it exists.
NIFTI_OUTPUTS = (".nii", ".nii.gz")


def is_volume(config: RunConfig, path: str) -> bool:
    """Whether the batch input ``path`` is read as a volume under ``config``'s read options."""
    return is_volume_input(path, volume=config.read.volume)


def check_cohort(config: RunConfig, inputs: list[str]) -> None:
    """Refuse ``model: fit-once`` over volume inputs, before any work.

    Raises
    ------
    ConfigError
        Naming the first volume input.
    """
    if config.batch.model != "fit-once":
        return
    volume = next((path for path in inputs if is_volume(config, path)), None)
    if volume is not None:
        raise ConfigError(
            f"{config.path}: model: fit-once is not available for volumes yet ({volume!r}); "
            "use model: per-image or a saved model file"
        )


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
