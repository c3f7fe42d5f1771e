"""The label pass: predict every chunk into the level-0 labels, build the pyramid from what was
stored, finalise the metadata last, write the side files and the TIFF.

The input is decoded once: the same pass counts the labels, sums each label's input colour,
takes the preview thumbnail and writes level 1 (see
:func:`pixseg.io.label_zarr.store_count_and_preview`). The display colours are decided once, from
the labels' mean colours, after that pass (:func:`pixseg.colours.background_label`), stored in
the statistics and used by every output: OME ``image-label`` colours, the TIFF palette, the
overlay and the legend.

With a class table in the model (:mod:`pixseg.classes`), the same task maps each chunk's cluster
ids to class ids: the levels hold the class ids, and the level-0 cluster ids are kept beside them
(array ``clusters``, see :data:`pixseg.io.label_zarr.CLUSTER_IDS`) for ``pixseg relabel``. Counts
and colour sums stay per cluster (stored as ``cluster_counts`` and ``cluster_sums``); the
statistics rows are per label value (:func:`pixseg.statistics.label_statistics`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np

from pixseg.choose_k import plot_k_choice
from pixseg.compute import compute
from pixseg.errors import InputError, OutputError, PipelineError, ResumeMismatchError
from pixseg.graphs import image_labels
from pixseg.io.label_groups import (
    finalise_label_zarr,
    ome_label_metadata,
    open_label_levels,
    prepare_labels_group,
    register_label,
    remove_output,
)
from pixseg.io.label_tiff import write_label_tiff
from pixseg.io.label_zarr import (
    ClassIds,
    chunk_written,
    create_cluster_ids,
    create_label_zarr,
    open_cluster_ids,
    reduce_level,
    store_and_count,
    store_count_and_preview,
    summarise_stored_chunk,
)
from pixseg.io.model_file import model_document
from pixseg.io.readers import Image, open_image
from pixseg.io.side_files import write_legend, write_png, write_region_tables, write_statistics
from pixseg.model import SegmentationModel
from pixseg.options import OutputOptions
from pixseg.plan import OutputPlan, PreviousRun, provenance
from pixseg.preview import colour_labels, display_rgb, overlay, thumbnail_step
from pixseg.pyramid import pyramid_shapes
from pixseg.regions import Region, measure_regions
from pixseg.report import ReportRun, write_report
from pixseg.statistics import label_statistics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """What a ``segment`` or ``apply`` run produced.

    ``statistics`` has one row per label (see :func:`pixseg.statistics.label_table`);
    ``side_files`` lists the statistics and preview files written next to the output.
    """

    output: str
    model: SegmentationModel
    shape: tuple[int, int]
    n_chunks: int
    seconds: float
    levels: list[tuple[int, int]]
    pixel_size: tuple[float, float] | None
    statistics: list[dict[str, Any]]
    side_files: list[str]
    regions: list[dict[str, Any]] = field(default_factory=list)


def write_labels(
    image: Image,
    mask: Any,
    model: SegmentationModel,
    plan: OutputPlan,
    options: OutputOptions,
    *,
    fingerprint: dict[str, Any],
    previous: PreviousRun | None,
    started: float,
    progress: bool,
    applied_model: str | None = None,
    applied_mask: str | None = None,
    regions: Sequence[Region] = (),
) -> RunResult:
    """Predict and store level 0 (with label counts and the input thumbnail from the same pass,
    so the input is decoded once), build coarser levels from the level above, finalise the
    metadata, write the side files, and stream a TIFF from the finished pyramid if asked.

    With ``previous`` (an interrupted run of the same fingerprint), level-0 chunks already
    written and decodable are kept and only the others are predicted; the colour sums of the kept
    chunks come from re-reading their input pixels (a decode, no features or prediction) beside
    the stored labels, so a resumed run's mean colours equal an uninterrupted run's. ``applied_model`` and
    ``applied_mask`` (an ``apply`` run's model file and mask) go into the report's command.
    """
    label_started = time.perf_counter()
    labels = image_labels(image, model, mask)
    n_colour = image.shape[2] - int(image.has_alpha)
    shapes = pyramid_shapes(labels.shape)
    pixel_size = options.pixel_size or image.pixel_size
    zarr_path = plan.work_path
    ngff = "0.5" if plan.kind == "tiff" else options.ngff
    if plan.into_image is not None:
        ngff = prepare_labels_group(plan.into_image)
    metadata = {**_output_metadata(image, model), "fingerprint": fingerprint, "ngff": ngff}
    classes = None
    if previous is None:
        remove_output(zarr_path)  # an output replaced with --overwrite, or a TIFF run's leftover
        arrays = create_label_zarr(
            zarr_path,
            shapes=shapes,
            chunks=_level_chunks(shapes, (int(labels.chunksize[0]), int(labels.chunksize[1]))),
            dtype=labels.dtype if model.classes is None else model.classes.dtype,
            ngff=ngff,
            attrs=metadata,
        )
        if model.classes is not None:
            clusters = create_cluster_ids(zarr_path, like=arrays[0], dtype=labels.dtype)
            classes = ClassIds(model.classes.lookup(), clusters)
        done_counts, missing = np.zeros(model.n_clusters + 1, np.int64), list(np.ndindex(*labels.numblocks))
        done_sums = np.zeros((model.n_clusters + 1, n_colour))
    else:
        arrays = open_label_levels(zarr_path, writable=True)
        if tuple(arrays[0].chunks) != tuple(labels.chunksize):
            raise ResumeMismatchError(
                f"cannot resume {zarr_path!r}: its chunks {arrays[0].chunks!r} differ from this run's"
            )
        stored = arrays[0]
        if model.classes is not None:  # the cluster ids are written last: they mark a chunk done
            clusters = open_cluster_ids(zarr_path, writable=True) or create_cluster_ids(
                zarr_path, like=arrays[0], dtype=labels.dtype
            )
            stored, classes = clusters, ClassIds(model.classes.lookup(), clusters)
        done_counts, done_sums, missing = _verify_written(
            zarr_path, stored, labels.numblocks, model.n_clusters, pixels=image.data, n_colour=n_colour
        )
    logger.info("predicting %d of %d chunks into %s", len(missing), labels.npartitions, zarr_path)
    try:
        first_reduced = 1
        if previous is None:  # one pass writes, counts, sums colours, takes the thumbnail, writes level 1
            next_level = None
            if len(arrays) > 1 and tuple(2 * c for c in arrays[1].chunks) == tuple(arrays[0].chunks):
                next_level, first_reduced = arrays[1], 2
            written = store_count_and_preview(
                labels,
                arrays[0],
                model.n_clusters + 1,
                pixels=image.data,
                n_colour=n_colour,
                preview=options.previews,
                step=thumbnail_step(image.shape[:2]),
                next_level=next_level,
                classes=classes,
            )
        else:
            written = (
                *store_and_count(
                    labels,
                    arrays[0],
                    missing,
                    model.n_clusters + 1,
                    pixels=image.data,
                    n_colour=n_colour,
                    classes=classes,
                ),
                _thumbnail_pixels(image) if options.previews else None,
            )
        new_counts, new_sums, thumbnail = compute(*written, progress=progress)
        write_pyramid(arrays, first=first_reduced)
    except PipelineError:
        raise
    except OSError as err:
        raise OutputError(
            f"writing {zarr_path!r} failed: {err.strerror or err}; the chunks written so far are kept: "
            "fix the cause and rerun with --resume"
        ) from err
    labelled = time.perf_counter()
    counts, sums = done_counts + new_counts, done_sums + new_sums
    statistics, colours = label_statistics(counts, sums, model, pixel_size=pixel_size, dtype=image.dtype)
    summary = {"masked_pixels": int(counts[0]), "pixel_size_um": list(pixel_size) if pixel_size else None}
    kept = cluster_summary(counts, sums, model, input_dtype=image.dtype)
    ome = ome_label_metadata(
        n_levels=len(shapes),
        name=os.path.basename(plan.path),
        pixel_size=pixel_size,
        properties=statistics,
        source_image="../../" if plan.into_image is not None else None,
    )
    finalise_label_zarr(zarr_path, ngff=ngff, ome=ome, extra={**summary, **kept, "statistics": statistics})
    if plan.into_image is not None:
        register_label(plan.into_image, os.path.basename(plan.path), ngff=ngff)
    region_rows = measure_regions(regions, arrays[0], statistics, pixel_size=pixel_size, progress=progress)
    run = ReportRun(
        output=plan.path,
        fingerprint=fingerprint,
        model=model,
        versions=metadata["versions"],
        started=started,
        stages=(
            ("open, plan, sample and fit", label_started - started),
            ("labels and pyramid", labelled - label_started),
        ),
        applied_model=applied_model,
        applied_mask=applied_mask,
        regions=tuple(region_rows),
    )
    side_files = write_region_tables(plan.side_base, region_rows, source=str(options.regions)) if regions else []
    side_files += write_side_files(
        plan.side_base,
        statistics,
        summary,
        None if thumbnail is None else display_rgb(np.asarray(thumbnail), n_colour=n_colour),
        arrays[-1],
        run,
        n_pixels=image.shape[0] * image.shape[1],
    )
    if plan.kind == "tiff":
        logger.info("writing pyramidal TIFF %s (%d levels)", plan.path, len(shapes))
        write_label_tiff(
            plan.path,
            open_label_levels(zarr_path),
            metadata={**metadata, **summary, **kept, "statistics": statistics},
            pixel_size=pixel_size,
            flavour=options.tiff_flavour,
            tile=options.tiff_tile,
            compression=options.tiff_compression,
            colours=colours,
        )
        remove_output(zarr_path)
    return RunResult(
        output=plan.path,
        model=model,
        shape=image.shape[:2],
        n_chunks=int(np.prod(image.data.numblocks[:2])),
        seconds=time.perf_counter() - started,
        levels=shapes,
        pixel_size=pixel_size,
        statistics=statistics,
        side_files=side_files,
        regions=region_rows,
    )


def finished_result(plan: OutputPlan, previous: PreviousRun, image: Image, started: float) -> RunResult:
    """The result of a run that ``--resume`` found already complete: nothing is redone."""
    status = previous.status
    logger.info("%s is already complete; nothing to do", plan.path)
    size = status.get("pixel_size_um")
    return RunResult(
        output=plan.path,
        model=previous.model,
        shape=image.shape[:2],
        n_chunks=int(np.prod(image.data.numblocks[:2])),
        seconds=time.perf_counter() - started,
        levels=[tuple(level) for level in status.get("levels", [])],
        pixel_size=(size[0], size[1]) if size else None,
        statistics=list(status.get("statistics", [])),
        side_files=[],
    )


def cluster_summary(
    counts: np.ndarray, sums: np.ndarray, model: SegmentationModel, *, input_dtype: np.dtype
) -> dict[str, Any]:
    """What an output keeps so its statistics can be redone for another class table without
    reading the input (``pixseg relabel``): the per-cluster counts and colour sums, the input's
    dtype, and the number of label values when they are classes (``n_classes``)."""
    kept: dict[str, Any] = {
        "cluster_counts": counts.tolist(),
        "cluster_sums": sums.tolist(),
        "input_dtype": np.dtype(input_dtype).name,
    }
    if model.classes is not None:
        kept["n_classes"] = model.classes.n_classes
    return kept


def _output_metadata(image: Image, model: SegmentationModel) -> dict[str, Any]:
    """The provenance and the model, stored in the output's metadata."""
    kept = {"cluster_ids": True} if model.classes is not None else {}  # see pixseg.relabel
    return {**provenance(image), "n_clusters": model.n_clusters, "model": model_document(model), **kept}


def _thumbnail_pixels(image: Image) -> da.Array:
    """Lazy (h, w, C) pixels for a resumed run's preview thumbnail, long side <= 1024: strided from
    the smallest pyramid level of the input that is still at least that large (a small read), or
    from the processed level itself (one more decode: a resumed run skips the written chunks, so
    the label pass cannot provide it, as a first run's does)."""
    source = image
    usable = [lvl for lvl in range(image.level + 1, len(image.level_shapes)) if max(image.level_shapes[lvl]) >= 1024]
    if usable:
        try:
            source = open_image(
                image.path,
                level=usable[-1],
                series=image.selection.series,
                plane=image.selection.plane,
                channels=image.selection.channels,
            )
        except InputError:  # e.g. a converted one-level copy standing in for the input
            source = image
    step = thumbnail_step(source.shape[:2])
    return source.data[::step, ::step]


def _level_chunks(shapes: list[tuple[int, int]], chunks: tuple[int, int]) -> list[tuple[int, int]]:
    """Zarr chunks of each level: ``chunks``, but half of them on level 1 when they are even, so
    the level-0 pass can write level 1 chunk by chunk (see ``store_count_and_preview``)."""
    halve = len(shapes) > 1 and chunks[0] % 2 == 0 and chunks[1] % 2 == 0 and min(shapes[0]) > 1
    return [((chunks[0] // 2, chunks[1] // 2) if level == 1 and halve else chunks) for level in range(len(shapes))]


def write_pyramid(arrays: list[Any], *, first: int = 1) -> None:
    """Build every level from ``first`` on from the level above, as stored (never from the lazy graph).

    One task per chunk of a level reads the chunks of the level above it covers and writes every
    second pixel (see :func:`pixseg.io.label_zarr.reduce_level`). Levels from 2 on hold at most
    1/16 of the pixels: they run on this process's threads even under a distributed scheduler,
    where per-task transfers would cost more than the work (docs/performance.md).
    """
    for level in range(first, len(arrays)):
        logger.info("pyramid level %d: %dx%d", level, *arrays[level].shape)
        stored = reduce_level(arrays[level - 1], arrays[level])
        if level == 1:
            compute(*stored, progress=False)
        else:
            with dask.config.set(scheduler="threads"):
                compute(*stored, progress=False)


def _verify_written(
    zarr_path: str, array: Any, numblocks: tuple[int, ...], n_labels: int, *, pixels: da.Array, n_colour: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, ...]]]:
    """Counts and colour sums of the level-0 chunks an interrupted run wrote (each decoded to check
    it, its input pixels read again for the sums), and the chunks still to predict (missing or
    undecodable)."""
    blocks = list(np.ndindex(*numblocks))
    written = [b for b in blocks if chunk_written(zarr_path, 0, array, b)]
    summarise = dask.delayed(summarise_stored_chunk, pure=True)
    tasks = [summarise(array, b, n_labels + 1, pixels.blocks[b], n_colour) for b in written]
    results = compute(tasks, progress=False) if written else []
    good = {b for b, result in zip(written, results, strict=True) if result is not None}
    counts = np.zeros(n_labels + 1, dtype=np.int64)
    sums = np.zeros((n_labels + 1, n_colour))
    for result in results:
        if result is not None:
            counts += result[0]
            sums += result[1]
    logger.info("resuming: %d of %d chunks already written and verified", len(good), len(blocks))
    return counts, sums, [b for b in blocks if b not in good]


def write_side_files(
    base: str,
    statistics: list[dict[str, Any]],
    summary: dict[str, Any],
    rgb: np.ndarray | None,
    coarsest: Any,
    run: ReportRun,
    *,
    n_pixels: int,
) -> list[str]:
    """Write the statistics, and with ``rgb`` (the (h, w, 3) uint8 display thumbnail of the input)
    the label map, overlay, legend and report, beside ``base``; return their paths.

    ``coarsest`` is the coarsest stored level (label values as in ``statistics``).
    """
    write_statistics(base, statistics, summary=summary)
    written = [base + ".stats.csv", base + ".stats.json"]
    if rgb is None:
        return written
    from PIL import Image as PILImage

    colours = [tuple(row["colour_rgba"]) for row in statistics]
    small_labels = np.asarray(coarsest[:])
    coloured = colour_labels(small_labels, colours)
    height, width = small_labels.shape
    matched = np.asarray(PILImage.fromarray(rgb).resize((width, height), PILImage.Resampling.BILINEAR))
    images = {".thumbnail.png": rgb, ".labels.png": coloured, ".overlay.png": overlay(matched, coloured, small_labels)}
    if run.model.k_choice is not None:  # --clusters auto: the criterion table as a plot
        images[".k-choice.png"] = plot_k_choice(run.model.k_choice)
    # libpng releases the GIL: the previews encode side by side (0.24 -> 0.13 s for three 1024^2 ones)
    with ThreadPoolExecutor(max_workers=len(images), thread_name_prefix="pixseg-png") as pool:
        encoded = [pool.submit(write_png, base + suffix, image) for suffix, image in images.items()]
        write_legend(base + ".legend.png", statistics, colours, masked_pixels=int(summary["masked_pixels"]))
        for done in encoded:
            done.result()
    previews = [".thumbnail.png", ".labels.png", ".overlay.png", ".legend.png"]
    previews += [".k-choice.png"] if ".k-choice.png" in images else []
    report = write_report(base, run, statistics, summary, n_pixels=n_pixels)
    return written + [base + suffix for suffix in previews] + [report]
