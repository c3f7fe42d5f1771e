"""What a batch run would do, computing nothing (``pixseg run --dry-run``): the images found,
what would happen to each (run, redo, skip or fail), the model, the scheduler, and rough memory
estimates per worker and for the fit."""

from __future__ import annotations

import math
import os
from typing import Any

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

#: Rough resident size of an idle dask worker process, for the memory estimate.
_WORKER_BASE_BYTES = 300 * 2**20


def plan_batch(config: RunConfig) -> dict[str, Any]:
    """What :func:`run_batch` would do, computing nothing (``pixseg run --dry-run``).

    Returns
    -------
    dict
        ``images``: one row per image (input, output, shape, dtype, chunk, chunks, action:
        ``run``, ``skip``, ``redo`` or ``fail: REASON``); ``model``, ``scheduler``, and
        ``worker_memory``: a rough upper estimate of one worker's memory in bytes (largest chunk
        times the threads of a worker, plus the worker's own footprint), and ``fit_memory``:
        the memory of the in-process fit on the sample.

    Raises
    ------
    ConfigError
        As :func:`find_images`.
    """
    images = find_images(config)
    read, fit = config.read, config.fit
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
            opened = open_image(
                image.input,
                level=read.level,
                chunk=read.chunk,
                series=read.series,
                plane=read.plane,
                channels=read.channels,
            )
        except PipelineError as err:
            rows.append({**row, "action": f"fail: {err}"})
            continue
        chunk = tuple(int(n) for n in opened.data.chunksize[:2])
        spec_columns = _feature_columns(config, opened)
        n_features = max(n_features, spec_columns)
        per_task = _chunk_bytes(chunk, opened.shape[2], opened.dtype.itemsize, spec_columns)
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
                "shape": list(opened.shape),
                "dtype": opened.dtype.name,
                "chunk": list(chunk),
                "chunks": math.prod(opened.data.numblocks[:2]),
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
            height, width, channels = row["shape"]
            chunk = "x".join(str(n) for n in row["chunk"])
            layout = f"{height}x{width}x{channels} {row['dtype']}, {row['chunks']} chunks of {chunk}"
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


def _feature_columns(config: RunConfig, image: Any) -> int:
    try:
        spec = make_feature_spec(
            config.fit.features,
            n_channels=image.shape[2],
            has_alpha=image.has_alpha,
            dtype=image.dtype,
        )
    except PipelineError:
        return image.shape[2]
    return len(spec.columns)


def _chunk_bytes(chunk: tuple[int, ...], channels: int, itemsize: int, n_features: int) -> int:
    """Rough peak bytes of one task: the decoded chunk, float32 scaled channels, the float32
    features and their temporaries (x3), and the labels."""
    pixels = chunk[0] * chunk[1]
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
