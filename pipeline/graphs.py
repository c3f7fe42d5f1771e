"""Lazy dask graphs of an opened image: its features and labels at its level, and its mask.

Shared by the fit (:mod:`pixseg.fitting`) and the label pass (:mod:`pixseg.labelling`). Only the
automatic tissue mask computes here (on a small pyramid level, through :mod:`pixseg.compute`).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import dask.array as da
import numpy as np

from pixseg.compute import compute
from pixseg.errors import InputError, ParameterError
from pixseg.features import FeatureSpec
from pixseg.io.readers import Image, open_image, open_input
from pixseg.mask_apply import check_mask_shape, mask_labels, upsample_mask
from pixseg.masks import block_mean, choose_mask_level, tissue_mask
from pixseg.model import SegmentationModel
from pixseg.options import ReadOptions
from pixseg.predict import build_chunk_labels, build_table_labels, table_applies
from pixseg.sampling import SampleSource

logger = logging.getLogger(__name__)

#: ``mask`` values that are not mask image paths.
MASK_KEYWORDS = ("none", "auto")


def shape_text(image: Image) -> str:
    """``YxXxC`` of ``image``'s level."""
    height, width, channels = image.shape
    return f"{height}x{width}x{channels}"


def level_scale(image: Image) -> tuple[float, float]:
    """Full-resolution pixels per pixel of ``image``'s level, (rows, columns)."""
    full, level = image.level_shapes[0], image.shape[:2]
    return full[0] / level[0], full[1] / level[1]


def image_labels(image: Image, model: SegmentationModel, mask: Any) -> da.Array:
    """Lazy (Y, X) labels of ``image``, 0 outside ``mask``: through a colour table when one applies
    (see :func:`pixseg.predict.table_applies`), else from each chunk's features, made band by band
    (:func:`pixseg.predict.build_chunk_labels`)."""
    if not table_applies(model, math.prod(image.shape[:2])):
        labels = build_chunk_labels(image.data, model, scale=level_scale(image))
    else:
        logger.info("labelling through a table of every colour's label")
        labels = build_table_labels(image.data, model)
    if mask is None:
        return labels
    return mask_labels(labels, upsample_mask(mask, image.shape[:2], labels.chunks))


def sample_source(image: Image, spec: FeatureSpec, mask: Any) -> SampleSource:
    """What to sample ``image`` for: its region reader, ``spec``'s features, and ``mask``."""
    return SampleSource(
        pixels=image.source,
        spec=spec,
        scale=level_scale(image),
        mask=mask,
        full_width_reads=image.native_chunks[1] >= image.shape[1],
    )


def check_mask_option(mask: str) -> None:
    """Refuse a ``mask`` that is neither a keyword nor an existing mask image, before any work."""
    if mask not in MASK_KEYWORDS and not os.path.exists(mask):
        raise ParameterError(f"--mask {mask!r} is neither auto, none nor an existing mask image")


def model_mask(image: Image, spec: FeatureSpec, *, mask: str | None, read: ReadOptions, progress: bool) -> Any:
    """The mask (see :func:`open_mask`) to apply with a saved model's spec: as asked, by default as the model."""
    if mask is None:
        if spec.mask == "file":
            raise ParameterError("the model was fitted with a mask file: pass --mask PATH again (or --mask none)")
        mask = spec.mask
    check_mask_option(mask)
    return open_mask(mask, image, read=read, progress=progress)


def open_mask(mask: str, image: Image, *, read: ReadOptions, progress: bool) -> Any:
    """``None``, the automatic tissue mask (computed here, on a small level) or a user mask file, lazily.

    The automatic mask reads the finest pyramid level of at most ``AUTO_MASK_EDGE`` pixels a side,
    or the coarsest level block-averaged chunk by chunk from its input dtype (one decode of it).
    Returns a 2-D bool dask array (True = keep) at its own resolution.
    """
    if mask == "none":
        return None
    if mask != "auto":
        mask_image = open_image(mask, chunk=read.chunk, max_tile_memory=read.max_tile_memory)
        if mask_image.shape[2] != 1:
            raise ParameterError(f"--mask {mask!r} has {mask_image.shape[2]} channels; a mask has one (0 = masked)")
        check_mask_shape(mask_image.shape[:2], image.level_shapes[0], source=mask)
        return mask_image.data[..., 0] != 0
    level, factor = choose_mask_level(image.level_shapes)
    low = image if level == image.level else open_input(image.path, read, level=level, nodata=image.nodata)
    pixels = compute(block_mean(low.data, factor, has_alpha=low.has_alpha), progress=progress)
    white = (float(np.iinfo(np.uint8).max),) * 3 if image.dtype == np.uint8 else None
    try:
        tissue = tissue_mask(pixels, white=white)
    except ParameterError as err:  # a bright background on an image that is not RGB: name the input
        raise ParameterError(f"{err} ({image.path!r})") from err
    logger.info(
        "auto mask from level %d averaged %dx: %dx%d, %.1f%% tissue", level, factor, *tissue.shape, 100 * tissue.mean()
    )
    if not tissue.any():
        raise InputError(f"--mask auto found no tissue in {image.path!r}; use --mask none or a mask file")
    return da.from_array(tissue, chunks=tissue.shape)
