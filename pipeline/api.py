"""The Python API over files: ``pixseg.segment``, ``pixseg.apply`` and ``pixseg.convert``.

Each takes the options of :mod:`pixseg.options` as keyword arguments (``clusters=5``,
``features=["hed", "texture"]``, ``mask="auto"``, ``scheduler="local"``), checked as the CLI and
configs check them, and returns what the run wrote. Arrays in a notebook go through
:class:`pixseg.PixelKMeans` instead.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from pixseg.convert import ConvertResult
from pixseg.convert import convert as _convert
from pixseg.dispatch import apply_input, segment_input
from pixseg.labelling import RunResult
from pixseg.options import ComputeOptions, ConvertOptions, FitOptions, OutputOptions, ReadOptions, split_options
from pixseg.runner import WORKER_MODULES
from pixseg.volume_runner import VolumeResult

PathLike = str | os.PathLike[str]


def segment(
    input: PathLike,  # noqa: A002 - the name users know from the CLI
    output: PathLike,
    *,
    save_model: PathLike | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
    **options: Any,
) -> RunResult | VolumeResult:
    """Segment an image file out of core: sample, fit k-means (dask-ml), label every pixel, write the labels.

    Parameters
    ----------
    input : path-like
        Any image pixseg reads (TIFF/OME-TIFF/SVS, zarr/OME-Zarr, PNG/JPEG). Never modified.
    output : path-like
        ``.zarr`` (OME-Zarr label pyramid) or ``.tif``/``.tiff`` (tiled pyramidal BigTIFF).
    save_model : path-like, optional
        Also save the fitted model there (JSON), for :func:`apply` or :meth:`PixelKMeans.load`.
    overwrite, resume : bool
        Replace an existing pixseg output; continue an interrupted run of the same job.
    progress : bool
        Progress on stderr.
    **options
        Any option of :class:`~pixseg.options.ReadOptions`, :class:`~pixseg.options.FitOptions`,
        :class:`~pixseg.options.OutputOptions` or :class:`~pixseg.options.ComputeOptions`
        (``clusters``, ``features``, ``mask``, ``sample_size``, ``chunk``, ``ngff``,
        ``scheduler``, ``workers``...). Without ``scheduler`` or ``workers``, the active dask
        scheduler is used (a notebook's ``distributed.Client`` included).

    Returns
    -------
    RunResult or VolumeResult
        The output, the model, the per-label statistics, the side files; a
        :class:`~pixseg.volume_runner.VolumeResult` for a volume (NIfTI, DICOM series, or with
        ``volume=True``: docs/volumes.md).

    Raises
    ------
    PipelineError
        For a bad option, input or output; :class:`~pixseg.options.OptionError` names the option.
    """
    chosen = split_options(options)
    return segment_input(
        os.fspath(input),
        os.fspath(output),
        read=chosen[ReadOptions],
        fit=chosen[FitOptions],
        output=chosen[OutputOptions],
        scheduler=_scheduler(chosen[ComputeOptions], options),
        model_path=None if save_model is None else os.fspath(save_model),
        overwrite=overwrite,
        resume=resume,
        progress=progress,
    )


def apply(
    model: PathLike,
    input: PathLike,  # noqa: A002 - the name users know from the CLI
    output: PathLike,
    *,
    mask: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
    **options: Any,
) -> RunResult | VolumeResult:
    """Label an image file with a saved model (``segment(save_model=...)`` or :meth:`PixelKMeans.save`).

    Parameters
    ----------
    model : path-like
        The JSON model file.
    input, output, overwrite, resume, progress
        As for :func:`segment`.
    mask : str, optional
        ``"none"``, ``"auto"`` or a mask image path; by default the model's mask mode.
    **options
        Options of :class:`~pixseg.options.ReadOptions`, :class:`~pixseg.options.OutputOptions`
        or :class:`~pixseg.options.ComputeOptions`.

    Returns
    -------
    RunResult or VolumeResult
        As for :func:`segment`.

    Raises
    ------
    PipelineError
        For a bad option, model, input or output.
    """
    chosen = split_options(options, (ReadOptions, OutputOptions, ComputeOptions))
    return apply_input(
        os.fspath(model),
        os.fspath(input),
        os.fspath(output),
        read=chosen[ReadOptions],
        output=chosen[OutputOptions],
        scheduler=_scheduler(chosen[ComputeOptions], options),
        mask=mask,
        overwrite=overwrite,
        resume=resume,
        progress=progress,
    )


def convert(
    input: PathLike,  # noqa: A002 - the name users know from the CLI
    output: PathLike,
    *,
    overwrite: bool = False,
    progress: bool = False,
    **options: Any,
) -> ConvertResult:
    """Write an image as a chunked OME-Zarr image pyramid (see :func:`pixseg.convert.convert`).

    ``options`` are those of :class:`~pixseg.options.ConvertOptions` (``chunk``, ``levels``,
    ``codec``, ``shard``, ``level``).
    """
    chosen = split_options(options, (ConvertOptions,))
    return _convert(
        os.fspath(input), os.fspath(output), options=chosen[ConvertOptions], overwrite=overwrite, progress=progress
    )


def _scheduler(compute: ComputeOptions, given: dict[str, Any]) -> contextlib.AbstractContextManager[Any]:
    """The asked scheduler for the block, or the active one when none of its options was given."""
    if not any(name in given for name in ("scheduler", "workers")):
        return contextlib.nullcontext()
    from pixseg.cluster import open_compute

    return open_compute(compute, worker_imports=WORKER_MODULES)
