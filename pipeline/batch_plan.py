"""What a batch run would do, computing nothing (``pixseg run --dry-run``): the images found,
what would happen to each (run, redo, skip or fail), the model, the scheduler, and rough memory
estimates per worker and for the fit.

Slides are opened lazily (:func:`pixseg.io.readers.open_image`); volumes
(:func:`pixseg.volume_batch.is_volume`) from their headers, a ``.nii.gz`` without its one-off
conversion (:func:`_volume_layout`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from pixseg import volume_batch
from pixseg.batch import (
    compute_options,
    find_images,
    fit_id,
    image_fingerprint,
    is_done,
    model_id,
    reusable_cohort_model,
)
from pixseg.config import RunConfig
from pixseg.errors import PipelineError
from pixseg.features import make_feature_spec
from pixseg.io.batch_state import read_state
from pixseg.io.readers import open_image
from pixseg.io.readers.volume import is_nifti, open_volume, volume_chunks

#: Rough resident size of an idle dask worker process, for the memory estimate.
_WORKER_BASE_BYTES = 300 * 2**20


def plan_batch(config: RunConfig) -> dict[str, Any]:
    """What :func:`run_batch` would do, computing nothing (``pixseg run --dry-run``).

    Returns
    -------
    dict
        ``images``: one row per image (input, output, shape: (Y, X, C) of a slide, (Z, Y, X, C) of
        a volume, dtype, chunk, chunks, a volume's ``spacing`` (Z, Y, X) in mm, action: ``run``,
        ``skip``, ``redo`` or ``fail: REASON``); ``model``, ``scheduler``, and
        ``worker_memory``: a rough upper estimate of one worker's memory in bytes (largest chunk
        times the threads of a worker, plus the worker's own footprint), and ``fit_memory``:
        the memory of the in-process fit on the sample.

    Raises
    ------
    ConfigError
        As :func:`find_images`, or as :func:`pixseg.volume_batch.check_cohort` (``fit-once``
        over slides and volumes together).
    """
    images = find_images(config)
    volume_batch.check_cohort(config, [image.input for image in images])
    fit = config.fit
    model_identity = None
    if config.batch.model == "per-image":
        model_identity = fit_id(config)
    elif config.model_file is not None or reusable_cohort_model(config) is not None:
        model_identity = model_id(config.model_file or config.cohort_model_path)
    threads = _threads_per_worker(config)
    rows: list[dict[str, Any]] = []
    worker_memory = 0
    n_features = 0
    for image in images:
        row: dict[str, Any] = {"input": image.input, "output": image.output}
        try:
            if volume_batch.is_volume(config, image.input):
                layout = _volume_layout(config, image.input)
            else:
                layout = _image_layout(config, image.input)
        except PipelineError as err:
            rows.append({**row, "action": f"fail: {err}"})
            continue
        n_features = max(n_features, layout.n_features)
        per_task = _chunk_bytes(layout.chunk, layout.shape[-1], layout.dtype.itemsize, layout.n_features)
        worker_memory = max(worker_memory, _WORKER_BASE_BYTES + threads * per_task)
        action = "run"
        if os.path.lexists(image.output):
            state = read_state(image.output)
            if model_identity is not None and is_done(image, state, image_fingerprint(config, image, model_identity)):
                action = "skip"
            elif state is not None or config.batch.overwrite:
                action = "redo"
            else:
                action = "fail: output exists and was not written by pixseg run (set output.overwrite: true)"
        rows.append(
            {
                **row,
                "shape": list(layout.shape),
                "dtype": layout.dtype.name,
                "chunk": list(layout.chunk),
                "chunks": layout.n_chunks,
                **({"spacing": list(layout.spacing)} if layout.spacing is not None else {}),
                "action": action,
            }
        )
    if config.batch.model == "fit-once":
        model = f"fit-once: {'reuse' if model_identity else 'fit'} {config.cohort_model_path}"
    elif config.batch.model == "per-image":
        model = "per-image: one model per image, saved beside its output"
    else:
        model = f"apply {config.batch.model}"
    return {
        "config": config.path,
        "images": rows,
        "model": model,
        "scheduler": _describe_scheduler(config),
        "threads_per_worker": threads,
        "worker_memory": worker_memory,
        "fit_memory": _fit_bytes(fit.sample_size, max(n_features, 1)),
        "summary": config.summary_path,
    }


def format_plan(plan: dict[str, Any]) -> str:
    """The dry-run plan as text: one line per image, then the model, scheduler and memory."""
    lines = [f"config: {plan['config']}"]
    for row in plan["images"]:
        if "shape" in row:
            shape, chunk = ("x".join(str(n) for n in row[key]) for key in ("shape", "chunk"))
            voxels = f", voxels of {'x'.join(f'{s:g}' for s in row['spacing'])} mm" if "spacing" in row else ""
            layout = f"{shape} {row['dtype']}{voxels}, {row['chunks']} chunks of {chunk}"
            lines.append(f"  {row['action']:<5} {row['input']} ({layout}) -> {row['output']}")
        else:
            reason = row["action"].partition(": ")[2]
            lines.append(f"  fail  {row['input']}: {reason}")
    actions = [row["action"].split(":")[0] for row in plan["images"]]
    counts = ", ".join(f"{actions.count(a)} {a}" for a in ("run", "redo", "skip", "fail") if a in actions)
    lines += [
        f"images: {len(actions)} ({counts})",
        f"model: {plan['model']}",
        f"scheduler: {plan['scheduler']}",
        f"estimated memory per worker: {_format_bytes(plan['worker_memory'])} "
        f"({plan['threads_per_worker']} thread(s) per worker); fit: {_format_bytes(plan['fit_memory'])}",
        f"summary: {plan['summary']}",
    ]
    return "\n".join(lines)


def _threads_per_worker(config: RunConfig) -> int:
    compute = config.compute
    if compute.scheduler == "threads":
        return compute.workers or os.cpu_count() or 1
    if compute.scheduler in ("slurm", "pbs"):
        cores = compute.cores or int(compute.jobqueue.get("cores", 1))
        processes = compute.processes or int(compute.jobqueue.get("processes", 1))
        return max(1, cores // processes)
    return 1


def _describe_scheduler(config: RunConfig) -> str:
    compute = config.compute
    if compute.scheduler == "threads":
        return f"threads ({_threads_per_worker(config)} threads in this process)"
    if compute.scheduler == "local":
        limit = compute.memory_limit or "machine memory shared out"
        return f"local cluster of {compute.workers or os.cpu_count()} single-threaded workers (memory limit {limit})"
    if compute.scheduler in ("slurm", "pbs"):
        described = ", ".join(f"{k}={v}" for k, v in compute_options(config).jobqueue_options().items())
        lifetime = f", lifetime {compute.lifetime}" if compute.lifetime else ""
        return f"{compute.scheduler} via dask-jobqueue: {compute.workers or 1} job(s), {described}{lifetime}"
    return f"existing scheduler {compute.scheduler}"


@dataclass(frozen=True)
class _Layout:
    """What the plan shows of an input: ``shape`` (Y, X, C) or (Z, Y, X, C), the processing
    ``chunk`` (without C) and their number, the feature columns, a volume's spacing (mm)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    chunk: tuple[int, ...]
    n_chunks: int
    n_features: int
    spacing: tuple[float, float, float] | None = None


def _image_layout(config: RunConfig, path: str) -> _Layout:
    """A slide's layout, opened lazily as the run opens it.

    Raises
    ------
    PipelineError
        As :func:`pixseg.io.readers.open_image`.
    """
    read = config.read
    opened = open_image(
        path, level=read.level, chunk=read.chunk, series=read.series, plane=read.plane, channels=read.channels
    )
    return _Layout(
        shape=tuple(opened.shape),
        dtype=opened.dtype,
        chunk=tuple(int(n) for n in opened.data.chunksize[:2]),
        n_chunks=math.prod(opened.data.numblocks[:2]),
        n_features=_feature_columns(config, opened.shape[2], has_alpha=opened.has_alpha, dtype=opened.dtype),
    )


def _volume_layout(config: RunConfig, path: str) -> _Layout:
    """A volume's layout from its headers: a ``.nii.gz`` is not converted (its chunks are those
    of the OME-Zarr copy the run reads, :func:`pixseg.io.readers.nifti.open_zarr_volume`), and
    no voxel is read.

    Raises
    ------
    PipelineError
        As :func:`pixseg.io.readers.volume.open_volume`, or for options volumes refuse
        (:func:`pixseg.volume_runner.check_volume_options`).
    """
    from pixseg.volume_runner import check_volume_options

    read = config.read
    check_volume_options(read, config.output, config.fit if config.model_file is None else None)
    if is_nifti(path) and path.lower().endswith(".gz"):
        from pixseg.io.readers.nifti import read_nifti_header, scaled_dtype

        header = read_nifti_header(path)
        shape, spacing = header.shape, header.spacing
        dtype = scaled_dtype(header.raw_dtype, header.slope, header.inter)
        chunk = volume_chunks(shape[:3], read.chunk)
    else:
        volume = open_volume(path, chunk=read.chunk, series_uid=read.series_uid)
        shape, spacing, dtype = volume.shape, volume.spacing, volume.dtype
        chunk = tuple(int(n) for n in volume.data.chunksize[:3])
    return _Layout(
        shape=tuple(shape),
        dtype=np.dtype(dtype),
        chunk=tuple(chunk),
        n_chunks=math.prod(-(-n // c) for n, c in zip(shape[:3], chunk, strict=True)),
        n_features=_feature_columns(config, shape[3], has_alpha=False, dtype=np.dtype(dtype)),
        spacing=spacing,
    )


def _feature_columns(config: RunConfig, n_channels: int, *, has_alpha: bool, dtype: np.dtype) -> int:
    try:
        spec = make_feature_spec(config.fit.features, n_channels=n_channels, has_alpha=has_alpha, dtype=dtype)
    except PipelineError:
        return n_channels
    return len(spec.columns)


def _chunk_bytes(chunk: tuple[int, ...], channels: int, itemsize: int, n_features: int) -> int:
    """Rough peak bytes of one task: the decoded chunk (pixels or voxels), float32 scaled channels,
    the float32 features and their temporaries (x3), and the labels."""
    pixels = math.prod(chunk)
    return pixels * (channels * itemsize + channels * 4 + 3 * n_features * 4 + 2)


def _fit_bytes(sample_size: int, n_features: int) -> int:
    """Rough peak bytes of the fit: float64 copies of the sample (standardised, shuffled, dask-ml's)."""
    return 8 * sample_size * n_features * 8


def _format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover
