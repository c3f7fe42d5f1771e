"""The deterministic sample of a volume: stratified 3-D blocks, voxels picked by position-keyed hashes.

The 3-D counterpart of :mod:`pixseg.sampling`, with its keys and candidates: the volume is cut
into cubes of ``VOLUME_SAMPLE_BLOCK`` voxels, grouped into strata of ``stride**3`` cubes, and one
cube per stratum is read (the one with the smallest block key). Every voxel gets the key of
:func:`pixseg.sampling.pixel_keys` of its linear position ``(z * Y + y) * X + x`` and the seed,
divided by its cube's weight (voxels of the stratum per voxel of the cube); the sample is the
valid voxels with the smallest weighted keys. It depends only on the seed, the shape and the
voxels: never on the chunking or the scheduler.

The sample holds the raw voxel values (all channels), so the channel ranges (robust
percentiles) are measured on it and its features computed from it: every volume feature is a
function of the voxel's own values.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import dask
import numpy as np

from pixseg.compute import compute
from pixseg.sampling import (
    MIN_SAMPLE_BLOCKS,
    READ_PER_SAMPLED,
    Candidates,
    candidate_threshold,
    chunk_candidates,
    derived_seed,
    merge_candidates,
    pixel_keys,
    take_sample,
)

#: Edge of a sampling cube, in voxels.
VOLUME_SAMPLE_BLOCK = 32


def volume_stride(shape: tuple[int, int, int], sample_size: int, *, block: int = VOLUME_SAMPLE_BLOCK) -> int:
    """Stratum edge in cubes: as coarse as keeps ``MIN_SAMPLE_BLOCKS`` cubes and
    ``READ_PER_SAMPLED * sample_size`` voxels read (1 for small volumes)."""
    n_blocks = math.prod(math.ceil(n / block) for n in shape)
    wanted = max(MIN_SAMPLE_BLOCKS, math.ceil(READ_PER_SAMPLED * sample_size / block**3))
    stride = max(1, round((n_blocks // wanted) ** (1 / 3)))
    while stride > 1 and stride**3 > n_blocks // wanted:
        stride -= 1
    return stride


def plan_volume_blocks(
    shape: tuple[int, int, int], *, stride: int, seed: int, block: int = VOLUME_SAMPLE_BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """The cube of each stratum with the smallest block key.

    Returns
    -------
    regions : numpy.ndarray
        Shape (n, 6), int64: (z0, y0, x0, z1, y1, x1) of each cube read, in (z, y, x) order.
    weights : numpy.ndarray
        Shape (n,), float64: voxels of the cube's stratum per voxel of the cube (>= 1).
    """
    counts = [math.ceil(n / block) for n in shape]
    index = np.arange(math.prod(counts))
    keys = pixel_keys(index // counts[2], index % counts[2], width=counts[2], seed=derived_seed(seed, 0))
    strata = [math.ceil(n / stride) for n in counts]
    padded = np.full([s * stride for s in strata], np.inf)
    padded[: counts[0], : counts[1], : counts[2]] = keys.reshape(counts)
    within = padded.reshape(strata[0], stride, strata[1], stride, strata[2], stride).transpose(0, 2, 4, 1, 3, 5)
    choice = np.unravel_index(np.argmin(within.reshape(*strata, -1), axis=-1), (stride,) * 3)
    grid = np.meshgrid(*[np.arange(s) for s in strata], indexing="ij")
    chosen = [(grid[a] * stride + choice[a]).ravel() for a in range(3)]
    sizes = [np.minimum(block, n - np.arange(0, n, block)).astype(np.float64) for n in shape]
    cube_voxels = sizes[0][chosen[0]] * sizes[1][chosen[1]] * sizes[2][chosen[2]]
    stratum_voxels = math.prod(
        np.add.reduceat(sizes[a], np.arange(0, counts[a], stride))[grid[a].ravel()] for a in range(3)
    )
    starts = [c * block for c in chosen]
    stops = [np.minimum(s + block, n) for s, n in zip(starts, shape, strict=True)]
    regions = np.stack([*starts, *stops], axis=1).astype(np.int64)
    return regions, stratum_voxels / cube_voxels


def cube_candidates(
    voxels: np.ndarray,
    *,
    origin: tuple[int, int, int],
    shape: tuple[int, int, int],
    seed: int,
    threshold: float,
    weight: float,
    keep: np.ndarray | None = None,
) -> Candidates:
    """Candidates of one cube of raw voxels (d, h, w, C): the valid ones whose weighted key is below ``threshold``.

    A voxel is valid when all its channels are finite (and ``keep``, a (d, h, w) bool mask, holds
    it). Each z-slice of the cube is a block of
    :func:`pixseg.sampling.chunk_candidates` whose rows are the volume's ``z * Y + y``, so keys and
    positions are the linear ``(z * Y + y) * X + x``. ``vectors`` holds the raw values as float64.
    """
    values = voxels.astype(np.float64)
    values[..., 0][~np.isfinite(values).all(axis=-1)] = np.nan
    if keep is not None:
        values[..., 0][~keep] = np.nan
    top = (origin[0] + np.arange(voxels.shape[0])) * shape[1] + origin[1]
    return merge_candidates(
        [
            chunk_candidates(
                plane, origin=(int(row), origin[2]), width=shape[2], seed=seed, threshold=threshold, weight=weight
            )
            for plane, row in zip(values, top, strict=True)
        ]
    )


def sample_voxels(
    data: Any,
    *,
    sample_size: int,
    seed: int,
    progress: bool,
    featurise: Callable[[np.ndarray], np.ndarray] | None = None,
    depth: tuple[int, int, int] = (0, 0, 0),
    mask: Any = None,
) -> np.ndarray:
    """The deterministic sample of a (Z, Y, X, C) dask volume (computes; reads only the planned cubes).

    Parameters
    ----------
    data : dask.array.Array
        Shape (Z, Y, X, C).
    sample_size : int
        Voxels wanted.
    seed : int
        The run's seed.
    progress : bool
        Progress on stderr.
    featurise : callable, optional
        Maps a block of raw voxels (d, h, w, C) to its features (d, h, w, F), NaN marking invalid
        voxels; each cube is read with ``depth`` voxels of context on each side (fewer at the
        volume's edges) and its features cut to the cube. By default the raw voxels are sampled.
    depth : (int, int, int)
        Context ``featurise`` needs along (z, y, x); cubes are at least four times its largest
        entry a side (``VOLUME_SAMPLE_BLOCK`` otherwise), so the context costs at most about as
        much as the cube.
    mask : dask.array.Array, optional
        Shape (Z, Y, X), bool: voxels where it is False are never sampled.

    Returns
    -------
    numpy.ndarray
        (n, C) raw values or (n, F) features, float64: ``n`` is ``sample_size``, or every valid
        voxel of the cubes when fewer. A second pass with a higher threshold runs when invalid
        voxels left too few candidates.
    """
    shape = tuple(int(n) for n in data.shape[:3])
    block = max(VOLUME_SAMPLE_BLOCK, 4 * max(depth))  # the halo read around a cube costs at most ~2x its voxels
    stride = volume_stride(shape, sample_size, block=block)  # type: ignore[arg-type]
    regions, weights = plan_volume_blocks(shape, stride=stride, seed=seed, block=block)  # type: ignore[arg-type]
    threshold = candidate_threshold(sample_size, float(math.prod(shape)))
    pass_ = functools.partial(
        _candidates, data, regions, weights, featurise=featurise, depth=depth, seed=seed, mask=mask
    )
    candidates = pass_(threshold=threshold, progress=progress)
    if len(candidates.keys) < sample_size and threshold < 1.0 and candidates.valid_estimate > 0:
        candidates = pass_(threshold=candidate_threshold(sample_size, candidates.valid_estimate) * 2, progress=progress)
    return take_sample(candidates, sample_size)


def _candidates(
    data: Any,
    regions: np.ndarray,
    weights: np.ndarray,
    *,
    featurise: Callable[[np.ndarray], np.ndarray] | None,
    depth: tuple[int, int, int],
    seed: int,
    threshold: float,
    progress: bool,
    mask: Any,
) -> Candidates:
    shape = tuple(int(n) for n in data.shape[:3])
    pick = dask.delayed(_cube_candidates, pure=True)
    parts = []
    for region, weight in zip(regions, weights, strict=True):
        starts, stops = region[:3], region[3:]
        lows = [max(0, int(a) - d) for a, d in zip(starts, depth, strict=True)]
        highs = [min(n, int(b) + d) for b, d, n in zip(stops, depth, shape, strict=True)]
        cube = tuple(slice(int(a) - lo, int(b) - lo) for a, b, lo in zip(starts, stops, lows, strict=True))
        block = data[lows[0] : highs[0], lows[1] : highs[1], lows[2] : highs[2]]
        origin = (int(starts[0]), int(starts[1]), int(starts[2]))
        keep = None if mask is None else mask[tuple(slice(int(a), int(b)) for a, b in zip(starts, stops, strict=True))]
        parts.append(
            pick(
                block,
                featurise,
                cube,
                origin=origin,
                shape=shape,
                seed=seed,
                threshold=threshold,
                weight=float(weight),
                keep=keep,
            )
        )
    return compute(dask.delayed(merge_candidates, pure=True)(parts), progress=progress)  # type: ignore[no-any-return]


def _cube_candidates(
    block: np.ndarray, featurise: Callable[[np.ndarray], np.ndarray] | None, cube: tuple[slice, ...], **kwargs: Any
) -> Candidates:
    values = block if featurise is None else featurise(block)
    return cube_candidates(values[cube], **kwargs)
