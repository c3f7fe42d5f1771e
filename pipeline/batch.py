"""Batch runs from a config (``pixseg run``): many images, one cohort model or one per image, incremental.

The batch orchestrates :mod:`pixseg.runner` (which does all the computing) over the images a
:class:`~pixseg.config.RunConfig` names, on the scheduler it names:

- ``model: fit-once`` fits one model on a sample pooled over every input
  (:func:`pixseg.fitting.fit_cohort`), saves it as ``output.cohort_model`` and applies it to every
  image, so a label means the same on every image. Later runs reuse the saved model (refitted only
  when the fit settings change), so a nightly run over a growing folder labels new images with
  the same model.
- ``model: per-image`` segments each image with its own model (saved beside its output).
- ``model: PATH`` applies a saved model to every image.

Incremental: each output has a small state file (:mod:`pixseg.io.batch_state`) holding the
fingerprint of the job that wrote it (the input's path, size and modification time, the read and
output settings, and the model or fit settings). An image whose output is complete and whose
fingerprint matches is skipped; an image whose output this batch tool wrote under another
fingerprint, or left incomplete, is redone; an output the batch tool did not write is only replaced
with ``output.overwrite``. An image that fails is recorded and the others go on; the run summary
(JSON) lists done, skipped and failed images. What the batch would do, computing nothing, is
:mod:`pixseg.batch_plan` (``pixseg run --dry-run``).
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from pixseg import volume_batch
from pixseg.cluster import open_compute
from pixseg.config import RunConfig, name_outputs
from pixseg.describe import describe
from pixseg.errors import ConfigError, ModelError, OutputExistsError, PipelineError, ResumeMismatchError
from pixseg.fitting import fit_cohort
from pixseg.io.batch_state import (
    STATE_DIR,
    digest,
    input_identity,
    now,
    read_state,
    state_path,
    write_json_document,
    write_state,
)
from pixseg.io.json_files import read_json_object
from pixseg.io.model_file import load_model, model_document
from pixseg.io.remote import is_url
from pixseg.runner import WORKER_MODULES, apply, segment

logger = logging.getLogger(__name__)

SUMMARY_FORMAT = "pixseg-run-summary"
#: Statuses of an image in a run summary.
STATUSES = ("done", "skipped", "failed")


@dataclass(frozen=True)
class BatchImage:
    """One image of a batch: its position in the cohort, its input and output paths."""

    index: int
    input: str
    output: str


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
        If a path does not exist, a pattern matches nothing, two inputs get one output name, or
        the output directory is not a directory or is, or is inside, an input (a zarr store).
    """
    found: list[str] = []
    seen: set[str] = set()
    outputs_root = os.path.realpath(config.directory) + os.sep
    for i, pattern in enumerate(config.batch.inputs):
        if is_url(pattern):  # read as given: URLs are not globbed; a missing one fails its own run
            matches = [pattern]
        elif glob.has_magic(pattern):
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
    if os.path.lexists(config.directory) and not os.path.isdir(config.directory):
        raise ConfigError(f"{config.path}: output.directory {config.directory!r} exists and is not a directory")
    real_directory = os.path.realpath(config.directory)
    for path in found:  # a store's directory: writing inside it would modify the input
        real = os.path.realpath(path)
        if os.path.isdir(real) and (real_directory == real or real_directory.startswith(real + os.sep)):
            raise ConfigError(
                f"{config.path}: output.directory {config.directory!r} is, or is inside, the input {path!r}; "
                "inputs are never modified"
            )
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
    started_at = now()
    started = time.perf_counter()
    images = find_images(config)
    volume_batch.check_cohort(config, [image.input for image in images])
    os.makedirs(config.directory, exist_ok=True)
    logger.info("batch of %d image(s) from %s; model: %s", len(images), config.path, config.batch.model)
    outcomes: dict[int, ImageOutcome] = {}
    with open_compute(compute_options(config), worker_imports=WORKER_MODULES):
        model_path, model_id, fit_failures = _prepare_model(config, images, progress=progress)
        for image in images:
            if image.input in fit_failures:
                outcomes[image.index] = ImageOutcome(
                    image.input, image.output, "failed", error=fit_failures[image.input]
                )
                continue
            outcomes[image.index] = _process(config, image, model_path, model_id, progress=progress)
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


# --- the model -----------------------------------------------------------------------------


def _prepare_model(
    config: RunConfig, images: list[BatchImage], *, progress: bool
) -> tuple[str | None, str, dict[str, str]]:
    """The model file to apply (None for per-image), the model's identity for fingerprints, and
    the images that failed while fitting a cohort model (with their error)."""
    if config.batch.model == "per-image":
        return None, fit_id(config), {}
    if config.model_file is not None:
        return config.model_file, model_id(config.model_file), {}
    path = config.cohort_model_path
    if reusable_cohort_model(config) is not None:
        logger.info("reusing cohort model %s", path)
        return path, model_id(path), {}
    logger.info("fitting a cohort model on %d image(s)", len(images))
    inputs = [image.input for image in images]
    failures: dict[str, str] = {}
    if volume_batch.is_volume(config, inputs[0]):  # a cohort is all volumes or all slides (check_cohort)
        volume_batch.fit_cohort(config, inputs, path, progress=progress)
    else:
        cohort = fit_cohort(
            inputs, read=config.read, fit=config.fit, model_path=path, overwrite=True, progress=progress
        )
        inputs = list(cohort.inputs)
        failures = {path: f"{type(err).__name__}: {err}" for path, err in cohort.failed.items()}
    write_json_document(_cohort_state_path(config), {"fit": fit_id(config), "inputs": inputs})
    return path, model_id(path), failures


def reusable_cohort_model(config: RunConfig) -> str | None:
    """The saved cohort model when it was fitted with the current fit settings, else None."""
    path = config.cohort_model_path
    if not os.path.isfile(path):
        return None
    state = read_json_object(_cohort_state_path(config))
    if state is None or state.get("fit") != fit_id(config):
        logger.info("cohort model %s was fitted with other settings: fitting again", path)
        return None
    return path


def _cohort_state_path(config: RunConfig) -> str:
    return os.path.join(config.directory, STATE_DIR, config.batch.cohort_model)


def model_id(path: str) -> str:
    """The identity of a model file: a hash of the model itself (not of its provenance).

    Raises
    ------
    ConfigError
        If the model file cannot be read.
    """
    try:
        document = model_document(load_model(path))
    except ModelError as err:
        raise ConfigError(f"model {path!r}: {err}") from err
    return digest(document)


def fit_id(config: RunConfig) -> str:
    """The identity of the fit settings of a config (with the level read, which the fit samples)."""
    return digest({**dataclasses.asdict(config.fit), "level": config.read.level})


def compute_options(config: RunConfig) -> Any:
    """The config's compute options; batch jobs' logs go by default to ``logs/`` in the output directory."""
    compute = config.compute
    if compute.scheduler in ("slurm", "pbs") and compute.log_directory is None:
        compute = dataclasses.replace(compute, log_directory=os.path.join(config.directory, "logs"))
    return compute


# --- one image -----------------------------------------------------------------------------


def _process(
    config: RunConfig, image: BatchImage, model_path: str | None, model_identity: str, *, progress: bool
) -> ImageOutcome:
    started = time.perf_counter()
    try:
        fingerprint = image_fingerprint(config, image, model_identity)
        state = read_state(image.output)
        if is_done(image, state, fingerprint):
            logger.info("skipping %s: %s is complete", image.input, image.output)
            return ImageOutcome(image.input, image.output, "skipped")
        interrupted = state is not None and state.get("fingerprint") == fingerprint
        overwrite = (state is not None or config.batch.overwrite) and not interrupted
        if interrupted:
            logger.info("continuing %s (interrupted)", image.output)
        elif state is not None:
            logger.info("redoing %s (its input or settings changed)", image.output)
        write_state(image.output, {"fingerprint": fingerprint, "input": image.input, "status": "started"})
        logger.info("[%d] %s -> %s", image.index + 1, image.input, image.output)
        try:
            _label(image, model_path, config, overwrite=overwrite, resume=interrupted, progress=progress)
        except ResumeMismatchError as err:
            if not interrupted:
                raise
            logger.info("cannot continue %s (%s): starting it again", image.output, err)
            _label(image, model_path, config, overwrite=True, resume=False, progress=progress)
    except PipelineError as err:  # one image fails alone; the run goes on and reports it (a bug stops it)
        seconds = time.perf_counter() - started
        message = " ".join(f"{type(err).__name__}: {err}".split())
        if isinstance(err, OutputExistsError):
            message += " (in a config: set output.overwrite: true)"
        logger.error("failed: %s: %s", image.input, message)
        if os.path.exists(state_path(image.output)):
            write_state(image.output, {**(read_state(image.output) or {}), "status": "failed", "error": message})
        return ImageOutcome(image.input, image.output, "failed", seconds, message)
    seconds = time.perf_counter() - started
    write_state(
        image.output,
        {"fingerprint": fingerprint, "input": image.input, "status": "done", "finished": now(), "seconds": seconds},
    )
    return ImageOutcome(image.input, image.output, "done", seconds)


def _label(
    image: BatchImage, model_path: str | None, config: RunConfig, *, overwrite: bool, resume: bool, progress: bool
) -> None:
    """Segment (per-image) or apply the model to one image; an interrupted output of the same job
    is continued with the runner's ``resume``; a volume goes to :mod:`pixseg.volume_batch`."""
    if volume_batch.is_volume(config, image.input):
        volume_batch.label_volume(
            config, image.input, image.output, model_path, overwrite=overwrite, resume=resume, progress=progress
        )
    elif model_path is None:
        segment(
            image.input,
            image.output,
            read=config.read,
            fit=config.fit,
            output=config.output,
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
            read=config.read,
            output=config.output,
            overwrite=overwrite,
            resume=resume,
            mask=config.fit.mask,
            progress=progress,
        )


def image_fingerprint(config: RunConfig, image: BatchImage, model_identity: str) -> str:
    """What must not change for an output to count as done: the input, the settings, the model."""
    return digest(
        {
            "input": input_identity(image.input),
            "read": dataclasses.asdict(config.read),
            "mask": config.fit.mask,
            "model": model_identity,
            "output": {"format": config.batch.format, **dataclasses.asdict(config.output)},
        }
    )


def is_done(image: BatchImage, state: dict[str, Any] | None, fingerprint: str) -> bool:
    """Whether ``image``'s output is complete and was written by the job of ``fingerprint``."""
    if state is None or state.get("status") != "done" or state.get("fingerprint") != fingerprint:
        return False
    if not os.path.lexists(image.output):
        return False
    nifti = volume_batch.is_complete(image.output)
    if nifti is not None:
        return nifti
    try:
        return bool(describe(image.output).get("complete"))
    except PipelineError:
        return False


def _write_summary(config: RunConfig, result: BatchResult, started_at: str) -> None:
    document = {
        "format": SUMMARY_FORMAT,
        "config": config.path,
        "overrides": list(config.overrides),
        "started": started_at,
        "finished": now(),
        "seconds": round(result.seconds, 3),
        "scheduler": config.compute.scheduler,
        "model": {"mode": config.batch.model if config.model_file is None else "file", "path": result.model_path},
        "counts": {status: result.count(status) for status in STATUSES},
        "images": [dataclasses.asdict(outcome) for outcome in result.outcomes],
    }
    write_json_document(result.summary_path, document)
