"""``segment`` and ``apply`` on any input: the 2-D runner, or the volume runner for a volume.

The CLI and the Python API both come here, so the one choice between :mod:`pixseg.runner` and
:mod:`pixseg.volume_runner` (NIfTI, a DICOM series, or ``volume=True``: docs/volumes.md) is made
in one place. A volume's options are checked before the scheduler starts. The volume runner is
imported only for a volume.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from pixseg import runner
from pixseg.io.readers.volume import is_volume_input
from pixseg.options import FitOptions, OutputOptions, ReadOptions

if TYPE_CHECKING:
    from pixseg.labelling import RunResult
    from pixseg.volume_runner import VolumeResult


def segment_input(
    input_path: str,
    output_path: str,
    *,
    read: ReadOptions,
    fit: FitOptions,
    output: OutputOptions,
    scheduler: AbstractContextManager[object],
    model_path: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
) -> RunResult | VolumeResult:
    """:func:`pixseg.runner.segment`, or :func:`pixseg.volume_runner.segment_volume` for a volume.

    Parameters
    ----------
    input_path, output_path : str
        The image (or volume) and the output.
    read, fit, output : ReadOptions, FitOptions, OutputOptions
        The options; a volume takes only ``output.previews`` of ``output``.
    scheduler : context manager
        Entered around the run (not yet entered: see :func:`pixseg.cluster.open_compute`).
    model_path, overwrite, resume, progress
        As for :func:`pixseg.runner.segment`.

    Returns
    -------
    RunResult or VolumeResult
        What the run wrote.

    Raises
    ------
    PipelineError
        For a bad option, input or output (a volume's options before ``scheduler`` is entered).
    """
    shared: dict[str, Any] = dict(
        read=read, model_path=model_path, overwrite=overwrite, resume=resume, progress=progress
    )
    if not is_volume_input(input_path, volume=read.volume):
        with scheduler:
            return runner.segment(input_path, output_path, fit=fit, output=output, **shared)
    from pixseg import volume_runner

    volume_runner.check_volume_options(read, output, fit)
    with scheduler:
        return volume_runner.segment_volume(input_path, output_path, fit=fit, previews=output.previews, **shared)


def apply_input(
    model_path: str,
    input_path: str,
    output_path: str,
    *,
    read: ReadOptions,
    output: OutputOptions,
    scheduler: AbstractContextManager[object],
    mask: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
) -> RunResult | VolumeResult:
    """:func:`pixseg.runner.apply`, or :func:`pixseg.volume_runner.apply_volume` for a volume.

    Parameters and errors as for :func:`segment_input`; ``model_path`` is the JSON model to apply
    and ``mask`` as for :func:`pixseg.runner.apply`.
    """
    shared: dict[str, Any] = dict(read=read, mask=mask, overwrite=overwrite, resume=resume, progress=progress)
    if not is_volume_input(input_path, volume=read.volume):
        with scheduler:
            return runner.apply(model_path, input_path, output_path, output=output, **shared)
    from pixseg import volume_runner

    volume_runner.check_volume_options(read, output)
    with scheduler:
        return volume_runner.apply_volume(model_path, input_path, output_path, previews=output.previews, **shared)
