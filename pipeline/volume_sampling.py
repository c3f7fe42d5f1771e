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

import math
from typing import Any

import dask
import numpy as np

from pixseg.compute import compute
from pixseg.sampling import (
    MIN_SAMPLE_BLOCKS,
    READ_PER_SAMPLED,
    Candidates,
    candidate_threshold,
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
) -> Candidates:
    """Candidates of one cube of raw voxels (d, h, w, C): the valid ones whose weighted key is below ``threshold``.

    A voxel is valid when all its channels are finite. ``vectors`` holds the raw values as float64.
    """
    values = voxels.reshape(-1, voxels.shape[-1]).astype(np.float64)
    z, y, x = (a.ravel() for a in np.indices(voxels.shape[:3]))
    rows = (z + origin[0]) * shape[1] + y + origin[1]
    cols = x + origin[2]
    valid = np.isfinite(values).all(axis=1)
    keys = pixel_keys(rows, cols, width=shape[2], seed=seed) / weight
    picked = valid & (keys < threshold)
    return Candidates(
        keys=keys[picked],
        positions=rows[picked] * shape[2] + cols[picked],
        vectors=values[picked],
        n_valid=int(valid.sum()),
        valid_estimate=float(valid.sum()) * weight,
    )


def sample_voxels(data: Any, *, sample_size: int, seed: int, progress: bool) -> np.ndarray:
    """The deterministic sample of a (Z, Y, X, C) dask volume: raw voxel values, (n, C) float64.

    Reads only the planned cubes (computes). ``n`` is ``sample_size``, or every valid voxel of the
    cubes when fewer; a second pass with a higher threshold runs when invalid voxels left too
    few candidates.
    """
    shape = tuple(int(n) for n in data.shape[:3])
    regions, weights = plan_volume_blocks(shape, stride=volume_stride(shape, sample_size), seed=seed)  # type: ignore[arg-type]
    threshold = candidate_threshold(sample_size, float(math.prod(shape)))
    candidates = _candidates(data, regions, weights, shape, seed=seed, threshold=threshold, progress=progress)
    if len(candidates.keys) < sample_size and threshold < 1.0 and candidates.valid_estimate > 0:
        threshold = candidate_threshold(sample_size, candidates.valid_estimate) * 2
        candidates = _candidates(data, regions, weights, shape, seed=seed, threshold=threshold, progress=progress)
    return take_sample(candidates, sample_size)


def _candidates(
    data: Any,
    regions: np.ndarray,
    weights: np.ndarray,
    shape: tuple[int, ...],
    *,
    seed: int,
    threshold: float,
    progress: bool,
) -> Candidates:
    pick = dask.delayed(cube_candidates, pure=True)
    parts = [
        pick(
            data[z0:z1, y0:y1, x0:x1],
            origin=(int(z0), int(y0), int(x0)),
            shape=shape,
            seed=seed,
            threshold=threshold,
            weight=float(weight),
        )
        for (z0, y0, x0, z1, y1, x1), weight in zip(regions, weights, strict=True)
    ]
    return compute(dask.delayed(merge_candidates, pure=True)(parts), progress=progress)  # type: ignore[no-any-return]
