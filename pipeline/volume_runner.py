"""``segment`` and ``apply`` for volumes: open -> plan -> (mask, sample, fit) -> label -> write.

Outputs: ``.zarr`` (an OME-Zarr label multiscale, :func:`pixseg.io.label_volume.pyramid_factors`)
or ``.nii`` / ``.nii.gz`` (a NIfTI label volume with the input's affine). Statistics: voxels,
fraction and volume in mm³ per label, written as ``OUTPUT.stats.csv`` and ``OUTPUT.stats.json``
(:mod:`pixseg.volume_statistics`), so pixseg recognises a volume's side files as its own, and
refuses any it did not write, as for slides (:func:`pixseg.destinations.check_side_files`).

``--resume`` (``.zarr`` outputs only): the group records the run's fingerprint (the input's
identity and shape, the options or the applied model) and its model when it is created, so an
interrupted run continues with the same model, recomputing only the chunks not yet stored
(:func:`pixseg.io.label_volume.store_missing_counting`); a different input or other options are
refused as in 2-D (:func:`pixseg.plan.previous_run`). The OME metadata is written last.
A NIfTI output is one file written whole, so ``--resume`` is refused for it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from pixseg.colours import label_colours
from pixseg.compute import compute
from pixseg.destinations import check_model_path, check_side_files
from pixseg.errors import ModelError, OutputError, OutputExistsError, ParameterError
from pixseg.io import batch_state
from pixseg.io.label_groups import label_side_base, open_label_levels, read_label_zarr_status, remove_output
from pixseg.io.label_volume import (
    create_nifti_labels,
    create_volume_label_zarr,
    finish_nifti,
    finish_volume_label_zarr,
    is_label_nifti,
    pyramid_factors,
    reduce_level,
    store_counting,
    store_missing_counting,
)
from pixseg.io.locks import lock_path_for, output_lock
from pixseg.io.model_file import load_model, model_document, save_model
from pixseg.io.readers.volume import Volume, is_nifti, open_volume
from pixseg.io.side_files import REPORT_SUFFIX, SLICES_SUFFIX, side_file_base
from pixseg.model import SegmentationModel
from pixseg.options import FitOptions, OutputOptions, ReadOptions
from pixseg.plan import OutputPlan, PreviousRun, previous_run
from pixseg.statistics import split_summary
from pixseg.volume_preview import mid_planes, write_slices_preview
from pixseg.volume_statistics import volume_statistics, write_volume_statistics
from pixseg.volumes import VoxelFeatures, check_volume_features, check_window, fit_volume, volume_labels

#: Output suffixes of a volume's labels.
VOLUME_OUTPUTS = (".zarr", ".nii", ".nii.gz")
#: ``--mask`` values a volume takes.
VOLUME_MASKS = ("none", "auto")


@dataclass(frozen=True)
class VolumeResult:
    """What a volume ``segment`` or ``apply`` produced.

    ``statistics`` has one row per label: ``label``, ``voxels``, ``fraction`` (of labelled
    voxels), ``volume_mm3`` and ``colour_rgba``; ``side_files`` the previews written.
    """

    output: str
    model: SegmentationModel
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    n_chunks: int
    seconds: float
    levels: list[tuple[int, ...]]
    statistics: list[dict[str, Any]]
    side_files: tuple[str, ...] = ()

    def summary(self) -> str:
        """The end-of-run lines: what was written, how fast, and the label table."""
        depth, height, width = self.shape
        rate = depth * height * width / 1e6 / max(self.seconds, 1e-9)
        lines = [
            f"wrote {self.output}: {depth}x{height}x{width} voxels of {'x'.join(f'{s:g}' for s in self.spacing)} mm, "
            f"labels 1..{self.model.n_clusters} in {self.seconds:.1f} s ({rate:.3g} Mvox/s, {self.n_chunks} chunks, "
            f"{len(self.levels)} levels)",
            f"{'label':>5} {'voxels':>14} {'%':>7} {'volume mm^3':>14}",
        ]
        lines += [
            f"{r['label']:>5} {r['voxels']:>14} {100 * r['fraction']:>7.2f} {r['volume_mm3']:>14.6g}"
            for r in self.statistics
        ]
        lines += [f"wrote {path}" for path in self.side_files]
        return "\n".join(lines)


def check_volume_options(read: ReadOptions, output: OutputOptions, fit: FitOptions | None = None) -> None:
    """Refuse, before any work, the options the volume path does not implement yet (one line each).

    Raises
    ------
    ParameterError
        Naming the first such option given.
    """
    given = {
        "--level": read.level != 0,
        "--series": read.series is not None,
        "--plane": read.plane is not None,
        "--channels": read.channels is not None,
        "--nodata": read.nodata is not None,
        "--fit-level": fit is not None and fit.fit_level is not None,
        "--with-image": output.with_image,
        "--regions": output.regions is not None,
        "--pixel-size": output.pixel_size is not None,
    }
    refused = [flag for flag, present in given.items() if present]
    if refused:
        raise ParameterError(f"{refused[0]} is not available for volumes yet (see docs/volumes.md)")


def segment_volume(
    input_path: str,
    output_path: str,
    *,
    read: ReadOptions | None = None,
    fit: FitOptions | None = None,
    model_path: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
    previews: bool = True,
) -> VolumeResult:
    """Segment a volume (NIfTI, DICOM series, TIFF or OME-Zarr stack) into a NIfTI or OME-Zarr label volume.

    Parameters
    ----------
    input_path : str
        See :func:`pixseg.io.readers.volume.open_volume`. Never modified; a ``.nii.gz`` is
        converted once into ``read.workdir`` (default: the output's directory) and the copy
        removed after the run unless ``read.keep_workdir``.
    output_path : str
        ``.zarr``, ``.nii`` or ``.nii.gz``.
    read, fit : ReadOptions, FitOptions, optional
        ``chunk``, ``series_uid``, ``workdir``; ``clusters``, ``seed``, ``features``,
        ``sample_size``, ``restarts``, ``normalise``, ``window``, ``mask`` (``none``, ``auto``).
    model_path : str, optional
        Also save the fitted model there (JSON, as ``--save-model``).
    overwrite : bool
        Replace an existing output (and model file).
    resume : bool
        Continue an interrupted run of the same job (``.zarr`` outputs only).
    progress : bool
        Progress on stderr.
    previews : bool
        Write ``OUTPUT.slices.png`` (:mod:`pixseg.volume_preview`) and ``OUTPUT.report.html``
        (:mod:`pixseg.volume_report`); ``--no-previews`` skips them. ``OUTPUT.stats.csv`` and
        ``OUTPUT.stats.json`` are always written.

    Raises
    ------
    PipelineError
        For every user mistake: a bad input, an output that exists or has another suffix, a bad option.
    """
    started = time.perf_counter()
    read, fit = read or ReadOptions(), fit or FitOptions()
    window = check_window(fit.window)
    check_volume_features(fit.features)
    mask = check_mask(fit.mask)
    kind = _check_output(output_path, input_path, overwrite=overwrite, resume=resume)
    if model_path is not None:
        check_model_path(model_path, overwrite=overwrite)
    with output_lock(lock_path_for(label_side_base(output_path))):  # one writer per output, as for slides
        volume = _open(input_path, output_path, read)
        job = _start(volume, output_path, kind, read, command="segment", started=started, resume=resume, fit=fit)
        if job.done:
            return _finished(job)
        keep = _mask(volume, mask, progress=progress)
        if job.previous is not None:
            model = job.previous.model
        else:
            model = fit_volume(volume.data, fit, window=window, spacing=volume.spacing, mask=keep, progress=progress)
        if model_path is not None:
            save_model(model, model_path, provenance={"input": os.path.abspath(input_path), "window": window})
        return _label_and_write(job, model, keep, progress=progress, previews=previews)


def apply_volume(
    model_path: str,
    input_path: str,
    output_path: str,
    *,
    read: ReadOptions | None = None,
    mask: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
    previews: bool = True,
) -> VolumeResult:
    """Label a volume with a saved model; the labels equal those ``segment`` gave with that model.

    The model's window and channel ranges apply as saved; texture sigmas are millimetres of
    this volume's spacing. ``mask`` is ``"none"`` or ``"auto"`` (default: the model's mask mode).
    Other parameters as for :func:`segment_volume`.

    Raises
    ------
    ModelError
        If the model is unreadable, or its channels or features do not fit the volume.
    """
    started = time.perf_counter()
    read = read or ReadOptions()
    model = load_model(model_path)
    check_volume_features(model.feature_spec.groups)
    chosen = check_mask(model.feature_spec.mask if mask is None else mask)
    kind = _check_output(output_path, input_path, overwrite=overwrite, resume=resume)
    with output_lock(lock_path_for(label_side_base(output_path))):
        volume = _open(input_path, output_path, read)
        _check_model_fits(model, volume, model_path)
        parts = {"model": model_document(model), "mask": chosen}
        job = _start(volume, output_path, kind, read, command="apply", started=started, resume=resume, **parts)
        if job.done:
            return _finished(job)
        keep = _mask(volume, chosen, progress=progress)
        return _label_and_write(job, model, keep, progress=progress, previews=previews)


@dataclass(frozen=True)
class _Job:
    """A volume ``segment`` or ``apply`` once its output is checked and its input opened: what
    labelling and writing need, and the interrupted run ``--resume`` continues, if any."""

    volume: Volume
    output_path: str
    kind: str
    read: ReadOptions
    command: str
    started: float
    fingerprint: dict[str, Any]
    previous: PreviousRun | None

    @property
    def done(self) -> bool:
        """Whether ``--resume`` found the run complete (nothing to compute)."""
        return self.previous is not None and bool(self.previous.status.get("complete"))


def _start(
    volume: Volume,
    output_path: str,
    kind: str,
    read: ReadOptions,
    *,
    command: str,
    started: float,
    resume: bool,
    **parts: Any,
) -> _Job:
    """The job of a run: its fingerprint (the input, the read options and ``parts``) and, with
    ``resume``, the interrupted run of the same fingerprint (another one is refused)."""
    fingerprint = _fingerprint(volume, read=_read_identity(read), **parts)
    previous = previous_run(_plan(output_path), fingerprint) if resume else None
    return _Job(volume, output_path, kind, read, command, started, fingerprint, previous)


def _workdir(read: ReadOptions, output_path: str) -> str:
    """Where a ``.nii.gz`` input is converted: ``--workdir``, else the output's directory."""
    return read.workdir or os.path.dirname(os.path.abspath(output_path))


def _open(input_path: str, output_path: str, read: ReadOptions) -> Volume:
    return open_volume(input_path, chunk=read.chunk, series_uid=read.series_uid, workdir=_workdir(read, output_path))


def _label_and_write(
    job: _Job, model: SegmentationModel, keep: da.Array | None, *, progress: bool, previews: bool
) -> VolumeResult:
    """Label every chunk, write the output (metadata last), its statistics and previews, drop a
    converted copy, summarise."""
    volume, output_path = job.volume, job.output_path
    labels = volume_labels(volume.data, model, VoxelFeatures(model.feature_spec, volume.spacing), keep)
    if job.kind == ".zarr":
        if job.previous is None and os.path.lexists(output_path):
            remove_output(output_path)  # a NIfTI output is replaced by a rename
        status = {"fingerprint": job.fingerprint, "model": model_document(model)}
        table, levels, planes = _write_zarr(
            labels, output_path, volume, model, status, resume=job.previous is not None, progress=progress
        )
    else:
        table, levels, planes = _write_nifti(labels, output_path, volume, model, progress=progress)
    counts, sums = split_summary(table)
    rows = volume_statistics(counts, sums, volume.voxel_volume, model)
    side_files = write_volume_statistics(
        output_path, rows, masked_voxels=int(counts[0]), shape=volume.shape, spacing=volume.spacing
    )
    if previews:  # before the converted copy goes: the preview reads the input's mid-planes
        side_files += _write_previews(job, model, planes, rows)
    if not job.read.keep_workdir:  # after an error the copy is kept for the rerun
        drop_copy(volume, _workdir(job.read, output_path))
    if job.kind == ".zarr":
        factors = pyramid_factors(volume.shape[:3], volume.spacing)
        extra = {"statistics": rows, "model": model_document(model), "input": os.path.abspath(volume.path)}
        finish_volume_label_zarr(output_path, spacing=volume.spacing, factors=factors, rows=rows, extra=extra)
    return VolumeResult(
        output=output_path,
        model=model,
        shape=volume.shape[:3],  # type: ignore[arg-type]
        spacing=volume.spacing,
        n_chunks=int(np.prod(labels.numblocks)),
        seconds=time.perf_counter() - job.started,
        levels=levels,
        statistics=rows,
        side_files=tuple(side_files),
    )


def _write_previews(
    job: _Job, model: SegmentationModel, planes: tuple[np.ndarray, ...], rows: list[dict[str, Any]]
) -> list[str]:
    """``OUTPUT.slices.png`` from the labels' mid-planes and the input's, then ``OUTPUT.report.html``."""
    from pixseg import __version__
    from pixseg.volume_report import write_volume_report

    volume, base = job.volume, side_file_base(job.output_path)
    slices, report = base + SLICES_SUFFIX, base + REPORT_SUFFIX
    write_slices_preview(slices, volume.data, planes, volume.spacing, label_colours(model.n_clusters))
    write_volume_report(
        report,
        slices,
        output=job.output_path,
        input_path=volume.path,
        command=job.command,
        shape=volume.shape,
        spacing=volume.spacing,
        model=model,
        statistics=rows,
        seconds=time.perf_counter() - job.started,
        version=__version__,
    )
    return [slices, report]


def _finished(job: _Job) -> VolumeResult:
    """The result of a run ``--resume`` finds complete: nothing is recomputed."""
    assert job.previous is not None
    return VolumeResult(
        output=job.output_path,
        model=job.previous.model,
        shape=job.volume.shape[:3],  # type: ignore[arg-type]
        spacing=job.volume.spacing,
        n_chunks=0,
        seconds=time.perf_counter() - job.started,
        levels=[tuple(level) for level in job.previous.status.get("levels", [])],
        statistics=list(job.previous.status.get("statistics", [])),
    )


def check_mask(mask: str) -> str:
    """``mask`` when a volume takes it (:data:`VOLUME_MASKS`), else a :class:`ParameterError`."""
    if mask not in VOLUME_MASKS:
        raise ParameterError(f"--mask for a volume is one of {', '.join(VOLUME_MASKS)}, got {mask!r}")
    return mask


def _mask(volume: Volume, mask: str, *, progress: bool) -> da.Array | None:
    if mask == "none":
        return None
    from pixseg.volume_mask import body_mask

    return body_mask(volume.data, progress=progress)


def _check_model_fits(model: SegmentationModel, volume: Volume, model_path: str) -> None:

    spec = model.feature_spec
    if spec.n_channels != volume.shape[3]:
        raise ModelError(
            f"model {model_path!r} was fitted on {spec.n_channels} channel(s); {volume.path!r} has {volume.shape[3]}"
        )


def _read_identity(read: ReadOptions) -> dict[str, Any]:
    """The read options that change what is read (not where work files go)."""
    return {"chunk": read.chunk, "series_uid": read.series_uid}


def _fingerprint(volume: Volume, **parts: Any) -> dict[str, Any]:
    """What must not change between an interrupted run and its ``--resume``: the input's identity
    (:func:`pixseg.io.batch_state.input_identity`) and shape, and ``parts``, normalised through JSON."""
    described = {
        name: dataclasses.asdict(part) if dataclasses.is_dataclass(part) and not isinstance(part, type) else part
        for name, part in parts.items()
    }
    identity = {**batch_state.input_identity(volume.path), "shape": list(volume.shape)}
    return json.loads(json.dumps({"input": identity, **described}))  # type: ignore[no-any-return]


def _plan(output_path: str) -> OutputPlan:
    return OutputPlan(path=output_path, kind="zarr", side_base=label_side_base(output_path), into_image=None)


def _check_output(path: str, input_path: str, *, overwrite: bool, resume: bool) -> str:
    """The output's kind (suffix), after refusing an output at or inside the input, an existing one
    without ``overwrite`` (or ``resume``) or that pixseg did not write, and ``resume`` for NIfTI."""
    kind = _output_kind(path)
    if resume and kind != ".zarr":
        raise ParameterError(f"--resume needs a .zarr output for volumes; {path!r} is written whole, start it again")
    output, source = os.path.realpath(path), os.path.realpath(input_path)
    if output == source or output.startswith(source.rstrip(os.sep) + os.sep):
        raise OutputError(f"output {path!r} would overwrite the input {input_path!r}")
    check_side_files(side_file_base(path))
    if not os.path.lexists(path):
        return kind
    if not (overwrite or resume):
        raise OutputExistsError(f"output {path!r} exists; pass --overwrite to replace it or --resume to continue it")
    ours = read_label_zarr_status(path) is not None if kind == ".zarr" else is_label_nifti(path)
    if os.path.islink(path) or not ours:
        raise OutputError(f"refusing to replace {path!r}: it is not a pixseg label volume")
    return kind


def _output_kind(path: str) -> str:
    lowered = path.lower().rstrip("/")
    for suffix in sorted(VOLUME_OUTPUTS, key=len, reverse=True):
        if lowered.endswith(suffix):
            return suffix
    raise ParameterError(f"output {path!r}: a volume's labels are written as {', '.join(VOLUME_OUTPUTS)}")


def _write_zarr(
    labels: da.Array,
    path: str,
    volume: Volume,
    model: SegmentationModel,
    status: dict[str, Any],
    *,
    resume: bool,
    progress: bool,
) -> tuple[np.ndarray, list[tuple[int, ...]], tuple[np.ndarray, ...]]:
    """Level 0 (counting; with ``resume`` only the chunks missing), then each coarser level from
    the stored one above; metadata is the caller's. Returns the label table
    (:func:`pixseg.io.label_volume.label_table`), the levels' shapes and level 0's three
    mid-planes (:func:`pixseg.volume_preview.mid_planes`)."""
    chunks = tuple(int(c[0]) for c in labels.chunks)
    labels = labels.rechunk(chunks)  # regular chunks, so each zarr chunk is one dask chunk
    pixels = volume.data.rechunk((*chunks, -1))
    shapes: list[tuple[int, ...]] = [volume.shape[:3]]
    shape_factors = pyramid_factors(volume.shape[:3], volume.spacing)
    for factor in shape_factors:
        shapes.append(tuple(-(-n // f) for n, f in zip(shapes[-1], factor, strict=True)))
    n_values = model.n_clusters + 1
    if resume:
        arrays = open_label_levels(path, writable=True)
        table = compute(store_missing_counting(labels, arrays[0], n_values, pixels), progress=progress)
    else:
        arrays = create_volume_label_zarr(path, shapes=shapes, chunks=chunks, dtype=model.label_dtype, status=status)  # type: ignore[arg-type]
        table = compute(store_counting(labels, arrays[0], n_values, pixels), progress=progress)
    for above, below, factor in zip(arrays[:-1], arrays[1:], shape_factors, strict=True):
        reduce_level(above, below, factor)
    return table, shapes, mid_planes(arrays[0], volume.shape)


def _write_nifti(
    labels: da.Array, path: str, volume: Volume, model: SegmentationModel, *, progress: bool
) -> tuple[np.ndarray, list[tuple[int, ...]], tuple[np.ndarray, ...]]:
    """The labels into a temporary ``.nii`` beside ``path`` (one chunk at a time), then moved or
    compressed there; returns the label table, the shape and the three mid-planes, read before."""
    handle, written = tempfile.mkstemp(prefix=".pixseg-", suffix=".nii", dir=os.path.dirname(os.path.abspath(path)))
    os.close(handle)
    try:
        voxels = create_nifti_labels(written, shape=volume.shape[:3], dtype=model.label_dtype, affine=volume.affine)  # type: ignore[arg-type]
        table = compute(store_counting(labels, voxels, model.n_clusters + 1, volume.data), progress=progress)
        planes = mid_planes(voxels, volume.shape)
        finish_nifti(written, path)
    finally:
        if os.path.exists(written):
            os.remove(written)
    return table, [volume.shape[:3]], planes


def drop_copy(volume: Volume, workdir: str) -> None:
    """Remove the copy in ``workdir`` a ``.nii.gz`` input was converted into, if any."""
    if not (is_nifti(volume.path) and volume.path.lower().endswith(".gz")):
        return
    from pixseg.io.readers.nifti import nifti_copy_path

    copy = nifti_copy_path(volume.path, workdir)
    if os.path.isdir(copy):
        remove_output(copy)
