"""The lazy sample pass: the dask graph that reads a sample's blocks and returns their candidates.

One task per shared read (:mod:`pixseg.sample_reads` plans them), one per window of neighbouring
blocks (:func:`window_candidates`, pure numpy: assemble, featurise, mask, thin) and one that merges
them. Which pixels are sampled, and their values, are :mod:`pixseg.sampling`'s: nothing here
changes them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from dask.task_spec import DataNode, List, Task, TaskRef

from pixseg.features import FeatureSpec, compute_features
from pixseg.mask_apply import mask_region
from pixseg.sample_reads import (
    Region,
    assemble,
    bounds,
    featurise_together,
    group_blocks,
    grow,
    plan_reads,
    read_region,
    read_unit,
)
from pixseg.sampling import BlockPlan, Candidates, SampleSource, chunk_candidates, merge_candidates


def window_candidates(
    pieces: Sequence[np.ndarray],
    mask: np.ndarray | None,
    *,
    piece_regions: Sequence[Region],
    window: Region,
    regions: np.ndarray,
    weights: np.ndarray,
    whole: bool,
    spec: FeatureSpec,
    scale: tuple[float, float],
    image_shape: tuple[int, int],
    seed: int,
    threshold: float,
) -> Candidates:
    """The candidates of the blocks inside one window, put together from the pixels read for it.

    Parameters
    ----------
    pieces : sequence of numpy.ndarray
        Pixels (h, w, C) of ``piece_regions``, which together cover every block and its halo
        (see :func:`pixseg.sample_reads.assemble`).
    mask : numpy.ndarray or None
        Shape of the blocks' bounding box (the window less the halo), bool (True = keep), or None.
    piece_regions : sequence of (int, int, int, int)
        (top, left, bottom, right) of each piece in the image.
    window : (int, int, int, int)
        The blocks' bounding box plus the texture halo, clipped to the image.
    regions, weights : numpy.ndarray
        (n, 4) blocks inside the window and their weights (see :class:`BlockPlan`).
    whole : bool
        Featurise the blocks' bounding box at once and cut each block from it (the blocks must
        cover it), instead of each block with its own halo: the same values, as halos are exact.
    spec, scale, image_shape
        As for :func:`pixseg.features.compute_features`.
    seed, threshold
        As for :func:`chunk_candidates`.
    """
    read = assemble(pieces, piece_regions, window)
    top, left = bounds(regions)[:2]
    blocks: list[Region] = [(int(t), int(lf), int(bt), int(rt)) for t, lf, bt, rt in regions]
    masks = [None if mask is None else mask[t - top : b - top, lf - left : r - left] for t, lf, b, r in blocks]
    kept = [i for i, block_mask in enumerate(masks) if block_mask is None or block_mask.any()]
    spans = [(bounds(regions), kept)] if whole and len(kept) == len(blocks) else [(blocks[i], [i]) for i in kept]
    parts = [_no_candidates(len(spec.columns))]  # wholly masked blocks are not featurised
    for span, members in spans:
        features = _span_features(read, window, span, spec=spec, scale=scale, image_shape=image_shape)
        for i in members:
            b_top, b_left, b_bottom, b_right = blocks[i]
            parts.append(
                chunk_candidates(
                    features[b_top - span[0] : b_bottom - span[0], b_left - span[1] : b_right - span[1]],
                    origin=(b_top, b_left),
                    width=image_shape[1],
                    seed=seed,
                    threshold=threshold,
                    weight=float(weights[i]),
                    mask=masks[i],
                )
            )
    return merge_candidates(parts)


def _span_features(
    read: np.ndarray,
    window: Region,
    span: Region,
    *,
    spec: FeatureSpec,
    scale: tuple[float, float],
    image_shape: tuple[int, int],
) -> np.ndarray:
    """Features of pixels ``span`` from ``read``, the pixels of ``window`` (which holds the span's halo)."""
    top, left = window[:2]
    y0, x0, y1, x1 = grow(span, spec.halo(scale), image_shape)
    s_top, s_left, s_bottom, s_right = span
    return compute_features(
        read[y0 - top : y1 - top, x0 - left : x1 - left],
        spec,
        halo=((s_top - y0, y1 - s_bottom), (s_left - x0, x1 - s_right)),
        scale=scale,
        origin=(s_top, s_left),
        image_shape=image_shape,
    )


def _no_candidates(n_columns: int) -> Candidates:
    return Candidates(
        keys=np.empty(0),
        positions=np.empty(0, dtype=np.int64),
        vectors=np.empty((0, n_columns), dtype=np.float32),
        n_valid=0,
        valid_estimate=0.0,
    )


def build_candidates(source: SampleSource, plan: BlockPlan, *, threshold: float, seed: int) -> Delayed:
    """Lazily gather the candidates of every block of ``plan``.

    Neighbouring blocks are read together, through one window with the halo their texture
    features need (see :mod:`pixseg.sample_reads`; a striped source's blocks of one block row
    as one band); a window whose blocks cover it is featurised at once. File tiles that several
    windows touch are read once. Each block is then masked and thinned to the pixels whose
    weighted key is below ``threshold``. None of this changes the candidates.

    Parameters
    ----------
    source : SampleSource
        What to sample.
    plan : BlockPlan
        Blocks to read (from :func:`plan_blocks` on ``source.shape``).
    threshold : float
        Weighted-key threshold (see :func:`candidate_threshold`).
    seed : int
        The run's seed (>= 0).

    Returns
    -------
    dask.delayed.Delayed
        Computes to one :class:`Candidates`; nothing is computed here.
    """
    shape = source.shape
    halo = source.spec.halo(source.scale)
    name = "sample-candidates-" + tokenize(source.pixels, source.spec, source.scale, source.mask, plan, threshold, seed)
    featurise = functools.partial(
        window_candidates, spec=source.spec, scale=source.scale, image_shape=shape, seed=seed, threshold=threshold
    )
    full_width = source.full_width_reads
    unit = read_unit(None if full_width else getattr(source.pixels, "native_chunks", None), plan.block)
    pixels = (name, "pixels")  # in the graph once, however many reads
    layer: dict[Any, Any] = {pixels: DataNode(pixels, source.pixels)}  # built directly: microseconds a task
    groups = group_blocks(plan.regions, block=plan.block, full_width=full_width)
    reads, uses = plan_reads([plan.regions[group] for group in groups], halo=halo, unit=unit, shape=shape)
    for i, region in enumerate(reads):
        layer[(name, "read", i)] = Task((name, "read", i), read_region, TaskRef(pixels), region)
    masks, windows = [], []
    for index, (group, used) in enumerate(zip(groups, uses, strict=True)):
        regions = plan.regions[group]
        box = bounds(regions)
        mask = None
        if source.mask is not None:  # over the blocks only, never their halos
            masks.append(mask_region(source.mask, shape, rows=(box[0], box[2]), cols=(box[1], box[3])))
            mask = TaskRef((masks[-1].name, 0, 0))
        key = (name, "window", index)
        layer[key] = Task(
            key,
            featurise,
            List(*(TaskRef((name, "read", i)) for i in used)),
            mask,
            piece_regions=[reads[i] for i in used],
            window=grow(box, halo, shape),
            regions=regions,
            weights=plan.weights[group],
            whole=featurise_together(regions, block=plan.block),
        )
        windows.append(TaskRef(key))
    layer[name] = Task(name, merge_candidates, List(*windows))
    return Delayed(name, HighLevelGraph.from_collections(name, layer, dependencies=masks))  # type: ignore[arg-type]
