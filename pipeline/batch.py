"""Batch runs from a config (``pixseg run``): many images, one cohort model or one per image, incremental.

The batch orchestrates :mod:`pixseg.runner` (which does all the computing) over the images a
:class:`~pixseg.config.RunConfig` names, on the scheduler it names:

- ``model: fit-once`` fits one model on a sample pooled over every input
  (:func:`pixseg.runner.fit_cohort`), saves it as ``output.cohort_model`` and applies it to every
  image, so a label means the same on every image. Later runs reuse the saved model (refitted only
  when the fit settings change), so a nightly run over a growing folder labels new images with
  the same model.
- ``model: per-image`` segments each image with its own model (saved beside its output).
- ``model: PATH`` applies a saved model to every image.

Incremental: each output has a small state file (``.pixseg-state/NAME.json`` in the output
directory) holding the fingerprint of the job that wrote it (the input's path, size and
modification time, the read and output settings, and the model or fit settings). An image whose
output is complete and whose fingerprint matches is skipped; an image whose output this batch
tool wrote under another fingerprint, or left incomplete, is redone; an output the batch tool
did not write is only replaced with ``output.overwrite``. An image that fails is recorded and
the others go on; the run summary (JSON) lists done, skipped and failed images.
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import hashlib
import json
import logging
import math
import os
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np
from pixseg.cluster import open_scheduler
from pixseg.config import RunConfig, name_outputs
from pixseg.errors import ConfigError, ModelError, OutputError, ParameterError, PipelineError
from pixseg.features import make_feature_spec
from pixseg.io.json_files import read_json_object
from pixseg.io.model_file import load_model, model_document
from pixseg.io.readers import open_image
from pixseg.runner import FitOptions, OutputOptions, ReadOptions, apply, describe, fit_cohort, segment

logger = logging.getLogger(__name__)

SUMMARY_FORMAT = "pixseg-run-summary"
#: Folder, in the output directory, of the per-output state files.
STATE_DIR = ".pixseg-state"
#: Statuses of an image in a run summary.
STATUSES = ("done", "skipped", "failed")
#: Rough resident size of an idle dask worker process, for the dry-run memory estimate.
_WORKER_BASE_BYTES = 300 * 2**20


@dataclass(frozen=True)
class BatchImage:
    """One image of a batch: its position in the cohort, its input and output paths."""

    index: int
    input: str
    output: str

    @property
    def state_path(self) -> str:
        """The state file holding the fingerprint of the job that wrote ``output``."""
        directory, name = os.path.split(self.output)
        return os.path.join(directory, STATE_DIR, name + ".json")


@dataclass(frozen=True)
class ImageOutcome:
    """What happened to one image: ``status`` is ``done``, ``skipped`` or ``failed`` (with ``error``)."""

    input: str
    output: str
    status: str
    seconds: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class BatchResult:
    """The outcome of :func:`run_batch`.

    Attributes
    ----------
    outcomes : tuple of ImageOutcome
        One per image, in input order.
    summary_path : str
        The run summary written (JSON).
    model_path : str or None
        The model applied to every image (``fit-once`` or a saved model), else None.
    seconds : float
        Wall time of the run.
    """

    outcomes: tuple[ImageOutcome, ...]
    summary_path: str
    model_path: str | None
    seconds: float

    def count(self, status: str) -> int:
        """Images with ``status``."""
        return sum(outcome.status == status for outcome in self.outcomes)

    @property
    def failed(self) -> list[ImageOutcome]:
        """The images that failed."""
        return [outcome for outcome in self.outcomes if outcome.status == "failed"]


def find_images(config: RunConfig) -> list[BatchImage]:
    """The images a config names, in order, with their output paths.

    Glob patterns (``*``, ``?``, ``[...]``, ``**``) expand in sorted order; a path named twice is
    taken once; matches inside the output directory are left out (earlier outputs are not inputs).

    Raises
    ------
    ConfigError
        If a path does not exist, a pattern matches nothing, or two inputs get one output name.
    """
    found: list[str] = []
    seen: set[str] = set()
    outputs_root = os.path.realpath(config.output.directory) + os.sep
    for i, pattern in enumerate(config.inputs):
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            matches = [m for m in matches if not (os.path.realpath(m) + os.sep).startswith(outputs_root)]
            if not matches:
                raise ConfigError(f"{config.path}: inputs[{i}] {pattern!r} matches no image")
        elif not os.path.exists(pattern):
            raise ConfigError(f"{config.path}: inputs[{i}] {pattern!r} does not exist")
        else:
            matches = [pattern]
        for match in matches:
            key = os.path.realpath(match)
            if key not in seen:
                seen.add(key)
                found.append(match.rstrip("/"))
    outputs = name_outputs(config, found)
    return [
        BatchImage(index=i, input=path, output=out) for i, (path, out) in enumerate(zip(found, outputs, strict=True))
    ]


def run_batch(config: RunConfig, *, progress: bool = False) -> BatchResult:
    """Run a batch: open the scheduler, get the model, label every image not already done.

    Parameters
    ----------
    config : RunConfig
        A validated config (:func:`pixseg.config.load_config`).
    progress : bool
        Show progress bars on stderr.

    Returns
    -------
    BatchResult
        Also written as the run summary (``config.summary_path``). Images that failed are in
        it with their error; the others are finished whatever happened to them.

    Raises
    ------
    PipelineError
        For a mistake that stops the whole run: bad config values, an unusable scheduler, a
        saved model that cannot be read, or a cohort none of whose images can be sampled.
    """
    started_at = _now()
    started = time.perf_counter()
    images = find_images(config)
    read, fit, output = _runner_options(config)
    os.makedirs(config.output.directory, exist_ok=True)
    logger.info("batch of %d image(s) from %s; model: %s", len(images), config.path, config.model)
    outcomes: dict[int, ImageOutcome] = {}
    with open_scheduler(**scheduler_options(config)):
        model_path, model_id, fit_failures = _prepare_model(config, images, read=read, fit=fit, progress=progress)
        for image in images:
            if image.input in fit_failures:
                outcomes[image.index] = ImageOutcome(
                    image.input, image.output, "failed", error=fit_failures[image.input]
                )
                continue
            outcomes[image.index] = _process(
                config, image, model_path, model_id, read=read, fit=fit, output=output, progress=progress
            )
    result = BatchResult(
        outcomes=tuple(outcomes[image.index] for image in images),
        summary_path=config.summary_path,
        model_path=model_path,
        seconds=time.perf_counter() - started,
    )
    _write_summary(config, result, started_at)
    logger.info(
        "batch finished: %d done, %d skipped, %d failed; summary %s",
        result.count("done"),
        result.count("skipped"),
        result.count("failed"),
        result.summary_path,
    )
    return result


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
    read, fit, _ = _runner_options(config)
    model_id = None
    if config.model == "per-image":
        model_id = _fit_id(config)
    elif config.model_file is not None or _reusable_cohort_model(config) is not None:
        model_path = config.model_file or config.cohort_model_path
        model_id = _model_id(model_path)
    threads = _threads_per_worker(config)
    rows: list[dict[str, Any]] = []
    worker_memory = 0
    n_features = 0
    for image in images:
        row: dict[str, Any] = {"input": image.input, "output": image.output}
        try:
            opened = open_image(image.input, level=read.level, chunk=read.chunk)
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
            state = _read_state(image)
            if model_id is not None and _is_done(image, state, _fingerprint(config, image, model_id)):
                action = "skip"
            elif state is not None or config.output.overwrite:
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
    if config.model == "fit-once":
        model = f"fit-once: {'reuse' if model_id else 'fit'} {config.cohort_model_path}"
    elif config.model == "per-image":
        model = "per-image: one model per image, saved beside its output"
    else:
        model = f"apply {config.model}"
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


def scheduler_options(config: RunConfig) -> dict[str, Any]:
    """Keyword arguments of :func:`pixseg.cluster.open_scheduler` for a config.

    dask-jobqueue worker logs go to ``compute.log_directory``, by default ``logs/`` in the output
    directory.
    """
    compute = config.compute
    jobqueue = compute.jobqueue_options()
    if compute.scheduler in ("slurm", "pbs"):
        jobqueue.setdefault("log_directory", os.path.join(config.output.directory, "logs"))
    return {
        "scheduler": compute.scheduler,
        "workers": compute.workers,
        "memory_limit": compute.memory_limit,
        "jobqueue": jobqueue,
        "lifetime": compute.lifetime,
        "lifetime_stagger": compute.lifetime_stagger,
        "dashboard_address": compute.dashboard_address,
        "startup_timeout": compute.startup_timeout,
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


# --- the model -----------------------------------------------------------------------------


def _prepare_model(
    config: RunConfig, images: list[BatchImage], *, read: ReadOptions, fit: FitOptions, progress: bool
) -> tuple[str | None, str, dict[str, str]]:
    """The model file to apply (None for per-image), the model's identity for fingerprints, and
    the images that failed while fitting a cohort model (with their error)."""
    if config.model == "per-image":
        return None, _fit_id(config), {}
    if config.model_file is not None:
        return config.model_file, _model_id(config.model_file), {}
    path = config.cohort_model_path
    if _reusable_cohort_model(config) is not None:
        logger.info("reusing cohort model %s", path)
        return path, _model_id(path), {}
    logger.info("fitting a cohort model on %d image(s)", len(images))
    cohort = fit_cohort(
        [image.input for image in images], read=read, fit=fit, model_path=path, overwrite=True, progress=progress
    )
    _write_json(_cohort_state_path(config), {"fit": _fit_id(config), "inputs": list(cohort.inputs)})
    failures = {path: f"{type(err).__name__}: {err}" for path, err in cohort.failed.items()}
    return path, _model_id(path), failures


def _reusable_cohort_model(config: RunConfig) -> str | None:
    """The saved cohort model when it was fitted with the current fit settings."""
    path = config.cohort_model_path
    if not os.path.isfile(path):
        return None
    state = read_json_object(_cohort_state_path(config))
    if state is None or state.get("fit") != _fit_id(config):
        logger.info("cohort model %s was fitted with other settings: fitting again", path)
        return None
    return path


def _cohort_state_path(config: RunConfig) -> str:
    return os.path.join(config.output.directory, STATE_DIR, config.output.cohort_model)


def _model_id(path: str) -> str:
    """The identity of a model file: a hash of the model itself (not of its provenance)."""
    try:
        document = model_document(load_model(path))
    except ModelError as err:
        raise ConfigError(f"model {path!r}: {err}") from err
    return _digest(document)


def _fit_id(config: RunConfig) -> str:
    """The identity of the fit settings of a config."""
    settings = {
        "features": list(config.features),
        "sigmas": list(config.sigmas) if config.sigmas is not None else None,
        "mask": config.mask,
        "fit_level": config.fit_level,
        "normalise": config.normalise,
        "clusters": config.clusters,
        "restarts": config.restarts,
        "seed": config.seed,
        "sample_size": config.sampling.size,
        "level": config.read.level,
    }
    return _digest(settings)


# --- one image -----------------------------------------------------------------------------


def _process(
    config: RunConfig,
    image: BatchImage,
    model_path: str | None,
    model_id: str,
    *,
    read: ReadOptions,
    fit: FitOptions,
    output: OutputOptions,
    progress: bool,
) -> ImageOutcome:
    started = time.perf_counter()
    try:
        fingerprint = _fingerprint(config, image, model_id)
        state = _read_state(image)
        if _is_done(image, state, fingerprint):
            logger.info("skipping %s: %s is complete", image.input, image.output)
            return ImageOutcome(image.input, image.output, "skipped")
        interrupted = state is not None and state.get("fingerprint") == fingerprint
        overwrite = (state is not None or config.output.overwrite) and not interrupted
        if interrupted:
            logger.info("continuing %s (interrupted)", image.output)
        elif state is not None:
            logger.info("redoing %s (its input or settings changed)", image.output)
        _write_json(image.state_path, {"fingerprint": fingerprint, "input": image.input, "status": "started"})
        logger.info("[%d] %s -> %s", image.index + 1, image.input, image.output)
        try:
            _label(
                image,
                model_path,
                config,
                read=read,
                fit=fit,
                output=output,
                mode=(overwrite, interrupted),
                progress=progress,
            )
        except OutputError as err:
            if not interrupted or "cannot resume" not in str(err):
                raise
            logger.info("cannot continue %s (%s): starting it again", image.output, err)
            _label(image, model_path, config, read=read, fit=fit, output=output, mode=(True, False), progress=progress)
    except Exception as err:  # one image fails alone; the run goes on and reports it
        seconds = time.perf_counter() - started
        message = " ".join(f"{type(err).__name__}: {err}".split())
        if isinstance(err, OutputError) and "already exists" in str(err):
            message += " (in a config: set output.overwrite: true)"
        if isinstance(err, PipelineError):
            logger.error("failed: %s: %s", image.input, message)
        else:
            logger.error("failed: %s: %s\n%s", image.input, message, traceback.format_exc())
        if os.path.exists(image.state_path):
            _write_json(image.state_path, {**(_read_state(image) or {}), "status": "failed", "error": message})
        return ImageOutcome(image.input, image.output, "failed", seconds, message)
    seconds = time.perf_counter() - started
    _write_json(
        image.state_path,
        {"fingerprint": fingerprint, "input": image.input, "status": "done", "finished": _now(), "seconds": seconds},
    )
    return ImageOutcome(image.input, image.output, "done", seconds)


def _label(
    image: BatchImage,
    model_path: str | None,
    config: RunConfig,
    *,
    read: ReadOptions,
    fit: FitOptions,
    output: OutputOptions,
    mode: tuple[bool, bool],
    progress: bool,
) -> None:
    """Segment (per-image) or apply the model to one image; ``mode`` is (overwrite, resume): an
    interrupted output of the same job is continued with the runner's ``resume``."""
    overwrite, resume = mode
    if model_path is None:
        segment(
            image.input,
            image.output,
            read=read,
            fit=fit,
            output=output,
            model_path=image.output + ".model.json",
            overwrite=overwrite,
            resume=resume,
            progress=progress,
        )
    else:
        apply(
            model_path,
            image.input,
            image.output,
            read=read,
            output=output,
            overwrite=overwrite,
            resume=resume,
            mask=config.mask,
            progress=progress,
        )


def _fingerprint(config: RunConfig, image: BatchImage, model_id: str) -> str:
    """What must not change for an output to count as done: the input, the settings, the model."""
    return _digest(
        {
            "input": _input_identity(image.input),
            "read": dataclasses.asdict(config.read),
            "mask": config.mask,
            "model": model_id,
            "output": {"format": config.output.format, "ngff": config.output.ngff, "previews": config.output.previews},
        }
    )


def _input_identity(path: str) -> dict[str, Any]:
    real = os.path.realpath(path)
    if os.path.isdir(real):  # a zarr store: its metadata documents stand for it
        names = ("zarr.json", ".zarray", ".zattrs", ".zgroup")
        stats = [os.stat(os.path.join(real, n)) for n in names if os.path.exists(os.path.join(real, n))]
        return {
            "path": real,
            "size": sum(s.st_size for s in stats),
            "mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
        }
    stat = os.stat(real)
    return {"path": real, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _is_done(image: BatchImage, state: dict[str, Any] | None, fingerprint: str) -> bool:
    if state is None or state.get("status") != "done" or state.get("fingerprint") != fingerprint:
        return False
    if not os.path.lexists(image.output):
        return False
    try:
        return bool(describe(image.output).get("complete"))
    except PipelineError:
        return False


def _read_state(image: BatchImage) -> dict[str, Any] | None:
    return read_json_object(image.state_path)


# --- options -------------------------------------------------------------------------------


def _runner_options(config: RunConfig) -> tuple[ReadOptions, FitOptions, OutputOptions]:
    """The runner's options for a config; a bad value is a ConfigError naming the key."""
    read = ReadOptions(level=config.read.level, chunk=config.read.chunk)
    features = tuple(part.strip() for name in config.features for part in name.split(","))
    fit_values: dict[str, Any] = {
        "clusters": config.clusters,
        "restarts": config.restarts,
        "seed": config.seed,
        "features": features,
        "sample_size": config.sampling.size,
        "mask": config.mask,
        "fit_level": config.fit_level,
        "normalise": config.normalise,
    }
    if config.sigmas is not None:
        fit_values["sigmas"] = tuple(config.sigmas)
    fit = FitOptions(**fit_values)
    try:
        output = OutputOptions(ngff=config.output.ngff, previews=config.output.previews)
    except ParameterError as err:
        raise ConfigError(f"{config.path}: key 'output.ngff': {err}") from err
    return read, fit, output


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
        options = scheduler_options(config)
        described = ", ".join(f"{k}={v}" for k, v in options["jobqueue"].items())
        lifetime = f", lifetime {compute.lifetime}" if compute.lifetime else ""
        return f"{compute.scheduler} via dask-jobqueue: {compute.workers or 1} job(s), {described}{lifetime}"
    return f"existing scheduler {compute.scheduler}"


def _feature_columns(config: RunConfig, image: Any) -> int:
    try:
        spec = make_feature_spec(
            tuple(part.strip() for name in config.features for part in name.split(",")),
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


# --- files ---------------------------------------------------------------------------------


def _write_summary(config: RunConfig, result: BatchResult, started_at: str) -> None:
    document = {
        "format": SUMMARY_FORMAT,
        "config": config.path,
        "overrides": list(config.overrides),
        "started": started_at,
        "finished": _now(),
        "seconds": round(result.seconds, 3),
        "scheduler": config.compute.scheduler,
        "model": {"mode": config.model if config.model_file is None else "file", "path": result.model_path},
        "counts": {status: result.count(status) for status in STATUSES},
        "images": [dataclasses.asdict(outcome) for outcome in result.outcomes],
    }
    _write_json(result.summary_path, document)


def _write_json(path: str, document: Any) -> None:
    """Write JSON under a temporary name, then rename it into place."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path}.{os.getpid()}.partial"
    try:
        with open(partial, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=1, default=_json_default)
        os.replace(partial, path)
    except OSError as err:
        raise OutputError(f"cannot write {path!r}: {err}") from err


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _digest(document: Any) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=_json_default).encode()).hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
