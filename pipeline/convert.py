"""Conversion of an input to a chunked OME-Zarr image pyramid (``pixseg convert``), and the
automatic conversion of poorly laid-out inputs into the work directory before a run."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import dask.array as da

import pixseg
from pixseg.compute import compute
from pixseg.downsample import downsample_level
from pixseg.errors import OutputError, OutputExistsError
from pixseg.io.image_zarr import create_image_zarr, finalise_image_zarr, write_block_shape
from pixseg.io.label_zarr import read_label_zarr_status, remove_output
from pixseg.io.locks import lock_path_for, output_lock
from pixseg.io.readers import Image, describe_chunks, open_image
from pixseg.layout import conversion_reason
from pixseg.options import ConvertOptions, ReadOptions
from pixseg.plan import CONVERTED_SUFFIX, OutputPlan, check_not_input, check_writable_parent, input_identity
from pixseg.pyramid import pyramid_shapes

logger = logging.getLogger(__name__)


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
        <= 1024), lossless codec, zarr v3 shards (see :class:`pixseg.options.ConvertOptions`).
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
    level, chunk, levels = options.level, options.chunk, options.levels
    image = open_image(input_path, level=level)
    target = output_path.rstrip("/")
    if not target.lower().endswith(".zarr"):
        raise OutputError(f"convert writes OME-Zarr: output {output_path!r} must end in .zarr")
    check_not_input(target, image.path, "output")
    if os.path.lexists(target) and not overwrite:
        raise OutputExistsError(f"output {output_path!r} already exists; pass --overwrite to replace it")
    check_writable_parent(target)
    shapes = pyramid_shapes(image.shape[:2])
    if levels is not None:
        shapes = [(-(-image.shape[0] // 2**n), -(-image.shape[1] // 2**n)) for n in range(levels)]
    with output_lock(lock_path_for(target)):
        remove_output(target)
        arrays = create_image_zarr(
            target,
            shapes=shapes,
            channels=image.shape[2],
            chunks=(chunk, chunk),
            dtype=image.dtype,
            codec=options.codec,
            shard=options.shard,
            attrs={"source": input_identity(image), "version": pixseg.__version__},
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
    return ConvertResult(output=target, levels=shapes, chunks=(chunk, chunk), seconds=time.perf_counter() - started)


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


def _workdir_copy_path(plan: OutputPlan, read: ReadOptions) -> str:
    workdir = read.workdir or os.path.dirname(os.path.abspath(plan.side_base))
    return os.path.join(workdir, os.path.basename(plan.side_base) + CONVERTED_SUFFIX)


def converted_if_needed(image: Image, plan: OutputPlan, read: ReadOptions, *, progress: bool) -> Image:
    """``image`` itself, or (when its layout makes direct reading slow or memory-hungry and
    conversion is allowed) its chunked OME-Zarr copy in the work directory. A complete copy of
    the same input, left by an interrupted run, is reused."""
    reason = conversion_reason(image)
    if reason is None or not read.convert:
        if reason is not None:
            logger.info("reading %s directly (--no-convert) although it has %s", image.path, reason)
        return image
    copy = _workdir_copy_path(plan, read)
    status = read_label_zarr_status(copy) if os.path.isdir(copy) else None
    if status and status.get("complete") and status.get("source") == input_identity(image):
        logger.info("reusing the converted copy %s", copy)
    else:
        logger.info("converting %s first: it has %s (--no-convert reads it directly)", image.path, reason)
        os.makedirs(os.path.dirname(copy), exist_ok=True)
        convert(image.path, copy, level=image.level, levels=1, overwrite=True, progress=progress)
    converted = open_image(copy, chunk=read.chunk)
    return dataclasses.replace(converted, pixel_size=image.pixel_size, level_shapes=image.level_shapes)


def remove_workdir_copy(image: Image, plan: OutputPlan, read: ReadOptions) -> None:
    """Remove the converted copy ``image`` reads from, unless ``read.keep_workdir``."""
    copy = _workdir_copy_path(plan, read)
    if image.path == copy and not read.keep_workdir:
        remove_output(copy)


def channel_names(image: Image) -> list[str]:
    """Names of the channels of ``image`` (red, green, blue, alpha, or channel N)."""
    colour = image.shape[2] - int(image.has_alpha)
    names = ["red", "green", "blue"] if colour == 3 else [f"channel {i}" for i in range(colour)]
    return names + (["alpha"] if image.has_alpha else [])
