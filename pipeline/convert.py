"""Conversion of an input to a chunked OME-Zarr image pyramid (``pixseg convert``), and the
automatic conversion of poorly laid-out inputs into the work directory before a run.

A work-directory copy is named after the input's identity (its path, size, modification time
and level: :func:`pixseg.plan.input_identity`), never after the run's output, so jobs sharing a
work directory share the copy of one input and never touch another's. The copy is converted
under its lock (:func:`pixseg.io.locks.output_lock`; a job converting the same input waits), and
every job reading it holds a lease: a marker file in ``COPY.users/``. A job removes the copy
only when it leaves the last live lease; a lease of a process that died on this host is ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dask.array as da

import pixseg
from pixseg.compute import compute
from pixseg.destinations import (
    CONVERTED_IMAGE,
    check_destinations,
    check_lock_path,
    check_own_output,
    check_writable_parent,
)
from pixseg.downsample import downsample_level
from pixseg.errors import LockedError, OutputError, OutputExistsError, ResumeMismatchError
from pixseg.io.image_zarr import create_image_zarr, finalise_image_zarr, write_block_shape
from pixseg.io.json_files import read_json_object
from pixseg.io.label_groups import read_label_zarr_status, remove_output
from pixseg.io.locks import lock_path_for, output_lock, pid_runs
from pixseg.io.readers import Image, describe_chunks, open_image, open_input
from pixseg.io.remote import exists, is_dir
from pixseg.layout import conversion_reason
from pixseg.options import ConvertOptions, OutputOptions, ReadOptions
from pixseg.plan import CONVERTED_SUFFIX, OutputPlan, input_identity
from pixseg.pyramid import pyramid_shapes

logger = logging.getLogger(__name__)

#: Beside a work-directory copy: the folder of its users' lease markers.
USERS_SUFFIX = ".users"
#: Seconds between tries of a copy's lock held by a job converting the same input.
_LOCK_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class ConvertResult:
    """What ``pixseg convert`` wrote."""

    output: str
    levels: list[tuple[int, int]]
    chunks: tuple[int, int]
    seconds: float


def convert(
    input_path: str,
    output_path: str,
    *,
    options: ConvertOptions | None = None,
    overwrite: bool = False,
    progress: bool = False,
    **option_values: Any,
) -> ConvertResult:
    """Write an image as an OME-Zarr (NGFF 0.5) multiscale image, chunk by chunk, metadata last.

    Parameters
    ----------
    input_path : str
        Any image :func:`pixseg.io.readers.open_image` reads (striped TIFFs are read in
        full-width bands, so memory stays at a band of ``chunk`` rows). Never modified.
    output_path : str
        The ``.zarr`` directory to write.
    options : ConvertOptions, optional
        Input level, chunk edge, number of levels (default: halving until the long side is
        <= 1024), lossless codec, zarr v3 shards, and the series, plane and channels of the input
        to convert (see :class:`pixseg.options.ConvertOptions`).
    overwrite, progress : bool
        Replace an existing output; show progress bars.
    **option_values
        The fields of ``options`` one by one instead (``chunk=512``).

    Returns
    -------
    ConvertResult

    Raises
    ------
    PipelineError
        For a bad input, output or option.
    """
    started = time.perf_counter()
    options = options or ConvertOptions(**option_values)
    image = open_image(
        input_path, level=options.level, series=options.series, plane=options.plane, channels=options.channels
    )
    target = output_path.rstrip("/")
    if not target.lower().endswith(".zarr"):
        raise OutputError(f"convert writes OME-Zarr: output {output_path!r} must end in .zarr")
    lock = lock_path_for(target)
    check_destinations({"output": target, "lock": lock}, {"input": image.path})
    check_own_output(target, CONVERTED_IMAGE)
    check_lock_path(lock)
    if exists(target) and not overwrite:
        raise OutputExistsError(f"output {output_path!r} already exists; pass --overwrite to replace it")
    check_writable_parent(target)
    with output_lock(lock):
        remove_output(target)
        shapes = _write_converted(image, target, options, progress=progress)
    chunk = options.chunk
    return ConvertResult(output=target, levels=shapes, chunks=(chunk, chunk), seconds=time.perf_counter() - started)


def write_output_image(
    image: Image,
    plan: OutputPlan,
    output: OutputOptions,
    *,
    fingerprint: dict[str, Any],
    resuming: bool,
    progress: bool,
) -> None:
    """Write the image pyramid of a ``--with-image`` output into ``plan.into_image`` (the caller
    holds the output's lock), as ``pixseg convert`` would, metadata last; the labels go into its
    ``labels`` group afterwards.

    A complete image written for the same job (``fingerprint``, stored with it) is kept, so an
    interrupted run resumes with its labels; anything else of pixseg's there is replaced
    (:func:`pixseg.destinations.check_own_image_store` has refused what is not pixseg's).

    Parameters
    ----------
    image : Image
        The input, at the level segmented (its pixels are read once, band by band).
    plan : OutputPlan
        A ``--with-image`` plan (``plan.writes_image``).
    output : OutputOptions
        The run's output options: the image is stored with the labels' pixel size
        (``output.pixel_size``, else the input's).
    fingerprint : dict
        The run's :func:`pixseg.plan.job_fingerprint`.
    resuming, progress : bool
        Whether labels of an interrupted run are being continued; show progress.

    Raises
    ------
    ResumeMismatchError
        If ``resuming`` and the image there is not a complete one of this job.
    """
    store = plan.written_path
    status = read_label_zarr_status(store) if is_dir(store) else None
    if status is not None and status.get("complete") and status.get("fingerprint") == fingerprint:
        logger.info("keeping the image of %s, written by this job", store)
        return
    if resuming:
        raise ResumeMismatchError(
            f"cannot resume {plan.path!r}: the image of {store!r} is incomplete or from another job; "
            "use --overwrite to start again"
        )
    remove_output(store)
    _write_converted(
        dataclasses.replace(image, pixel_size=output.pixel_size or image.pixel_size),
        store,
        ConvertOptions(level=image.level),
        progress=progress,
        attrs={"fingerprint": fingerprint},
    )


def _write_converted(
    image: Image,
    target: str,
    options: ConvertOptions,
    *,
    progress: bool,
    attrs: dict[str, Any] | None = None,
) -> list[tuple[int, int]]:
    """Write ``image`` as a new OME-Zarr pyramid at ``target`` (the caller holds its lock), metadata
    last; return the level shapes. ``attrs`` are added to ``attrs["pixseg"]``."""
    chunk, levels = options.chunk, options.levels
    shapes = pyramid_shapes(image.shape[:2])
    if levels is not None:
        shapes = [(-(-image.shape[0] // 2**n), -(-image.shape[1] // 2**n)) for n in range(levels)]
    arrays = create_image_zarr(
        target,
        shapes=shapes,
        channels=image.shape[2],
        chunks=(chunk, chunk),
        dtype=image.dtype,
        codec=options.codec,
        shard=options.shard,
        attrs={"source": input_identity(image), "version": pixseg.__version__, **(attrs or {})},
    )
    logger.info("converting %s (%s) into %s, %d levels", image.path, describe_chunks(image), target, len(shapes))
    _store_in_bands(image.data, arrays[0], progress=progress)
    for above, array in zip(arrays, arrays[1:], strict=False):
        reduced = downsample_level(da.from_zarr(above).transpose(1, 2, 0), chunks=write_block_shape(array))
        stored = da.store(reduced.transpose(2, 0, 1), array, lock=False, compute=False)  # type: ignore[arg-type]
        compute(stored, progress=False)
    finalise_image_zarr(
        target,
        n_levels=len(shapes),
        name=os.path.basename(image.path.rstrip("/")),
        channel_names=channel_names(image),
        pixel_size=image.pixel_size,
        extra={"alpha": image.has_alpha},
    )
    return shapes


def _store_in_bands(pixels: da.Array, array: Any, *, progress: bool) -> None:
    """Store (Y, X, C) ``pixels`` into a (C, Y, X) array one band of write blocks at a time.

    Regrouping strips or tiles into the array's chunks in one graph lets dask read far ahead of
    the writes; a band at a time bounds memory by a band (block rows x the full width).
    """
    rows, cols = write_block_shape(array)
    channels = pixels.shape[2]
    for top in range(0, pixels.shape[0], rows):
        band = pixels[top : top + rows].rechunk((rows, cols, channels)).transpose(2, 0, 1)
        region = (slice(None), slice(top, top + band.shape[1]), slice(None))
        compute(da.store(band, array, regions=region, lock=False, compute=False), progress=False)
        if progress:
            print(f"\rconverted {min(top + rows, pixels.shape[0])} of {pixels.shape[0]} rows", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)


def workdir_copy_path(image: Image, plan: OutputPlan, read: ReadOptions) -> str:
    """Where the converted copy of ``image`` lives: in ``read.workdir`` (default: the output's
    directory), named after the input and a hash of its identity, so one input has one copy
    there whichever job or output needs it."""
    workdir = read.workdir or os.path.dirname(os.path.abspath(plan.side_base))
    key = hashlib.sha256(json.dumps(input_identity(image), sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(workdir, f"{os.path.basename(image.path.rstrip('/'))}.{key}{CONVERTED_SUFFIX}")


@contextlib.contextmanager
def converted_if_needed(image: Image, plan: OutputPlan, read: ReadOptions, *, progress: bool) -> Iterator[Image]:
    """Yield ``image`` itself, or (when its layout makes direct reading slow or memory-hungry and
    conversion is allowed) its chunked OME-Zarr copy in the work directory, leased for the block.

    A complete copy of the same input (left by an interrupted run, kept with ``keep_workdir``, or
    in use by another job) is reused. When the block ends without error and no other job holds a
    lease, the copy is removed, unless ``read.keep_workdir``; after an error it is kept for the rerun.

    Raises
    ------
    OutputError
        If something that is not a pixseg-converted copy (a symlink included) is at the copy's
        path or its users folder, or the copy cannot be written.
    """
    reason = conversion_reason(image)
    if reason is None or not read.convert:
        if reason is not None:
            logger.info("reading %s directly (--no-convert) although it has %s", image.path, reason)
        yield image
        return
    copy = workdir_copy_path(image, plan, read)
    with _copy_lock(copy):
        marker = _lease(image, copy, reason, progress=progress)
    finished = False
    try:
        whole = dataclasses.replace(read, series=None, plane=None, channels=None)  # the copy holds only those
        converted = open_input(copy, whole, level=0, nodata=image.nodata)
        yield dataclasses.replace(converted, pixel_size=image.pixel_size, level_shapes=image.level_shapes)
        finished = True
    finally:
        with _copy_lock(copy):
            os.remove(marker)
            if not _live_users(copy + USERS_SUFFIX) and finished and not read.keep_workdir:
                remove_output(copy)
                os.rmdir(copy + USERS_SUFFIX)


@contextlib.contextmanager
def _copy_lock(copy: str) -> Iterator[None]:
    """Hold the lock of a work-directory copy, waiting while another job holds it (converting)."""
    lock = lock_path_for(copy)
    check_lock_path(lock)
    os.makedirs(os.path.dirname(copy), exist_ok=True)
    with contextlib.ExitStack() as stack:
        waited = False
        while True:
            try:
                stack.enter_context(output_lock(lock))
                break
            except LockedError as err:
                if not waited:
                    logger.info("waiting for the converted copy %s: %s", copy, err)
                    waited = True
                time.sleep(_LOCK_POLL_SECONDS)
        yield


def _lease(image: Image, copy: str, reason: str, *, progress: bool) -> str:
    """Make sure ``copy`` is a complete conversion of ``image`` and add a lease on it; return the
    lease's marker file. The caller holds the copy's lock."""
    users = copy + USERS_SUFFIX
    check_own_output(copy, CONVERTED_IMAGE)
    if os.path.islink(users) or (os.path.lexists(users) and not os.path.isdir(users)):
        raise OutputError(f"cannot lease the converted copy {copy!r}: {users!r} is not pixseg's users folder")
    status = read_label_zarr_status(copy) if os.path.isdir(copy) else None
    if status and status.get("complete") and status.get("source") == input_identity(image):
        logger.info("reusing the converted copy %s", copy)
    else:
        holders = _live_users(users)
        if holders:  # a copy in use is complete and of this input; anything else is not pixseg's doing
            raise OutputError(f"converted copy {copy!r} is in use by {holders[0]!r} but is not of {image.path!r}")
        logger.info("converting %s first: it has %s (--no-convert reads it directly)", image.path, reason)
        remove_output(copy)
        _write_converted(image, copy, ConvertOptions(level=image.level, levels=1), progress=progress)
    os.makedirs(users, exist_ok=True)
    record = {"host": socket.gethostname(), "pid": os.getpid()}
    marker = os.path.join(users, f"{record['pid']}.{secrets.token_hex(6)}.json")
    descriptor = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(record, handle)
    return marker


def _live_users(users: str) -> list[str]:
    """The lease markers in ``users`` of processes that may still run; markers of processes that
    died on this host are removed. The caller holds the copy's lock."""
    if not os.path.isdir(users):
        return []
    live = []
    for name in sorted(os.listdir(users)):
        marker = os.path.join(users, name)
        record = read_json_object(marker) or {}
        if _process_gone(record):
            os.remove(marker)
        else:
            live.append(marker)
    return live


def _process_gone(record: dict[str, Any]) -> bool:
    """Whether the process of a lease record is known to have ended (only on this host can it be told)."""
    pid = record.get("pid")
    if record.get("host") != socket.gethostname():
        return False
    return not isinstance(pid, int) or pid <= 0 or not pid_runs(pid)


def channel_names(image: Image) -> list[str]:
    """Names of the channels of ``image`` (red, green, blue, alpha, or channel N)."""
    colour = image.shape[2] - int(image.has_alpha)
    names = ["red", "green", "blue"] if colour == 3 else [f"channel {i}" for i in range(colour)]
    return names + (["alpha"] if image.has_alpha else [])
