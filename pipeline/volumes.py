"""Segmenting 3-D volumes: open -> sample -> fit -> label -> write, chunk by chunk.

The volume path reuses the 2-D pipeline's pieces: the feature spec and per-chunk kernels
(:func:`pixseg.features.compute_features` on (d, h, w, C) blocks), the channel scaling
(:mod:`pixseg.normalise`), the position-keyed sample (:mod:`pixseg.volume_sampling` over
:mod:`pixseg.sampling`'s keys), the dask-ml fit (:func:`pixseg.kmeans_fit.fit_model`) and the
nearest-centroid kernel (:func:`pixseg.predict.build_labels`). Volume features are the
voxel-wise (colour) groups, ``channels`` (intensity) by default.

Intensity scaling: ``window`` (``--window LOW,HIGH``, e.g. a CT window in Hounsfield units)
clips every voxel to [LOW, HIGH] and maps that range to [0, 1]; otherwise ``normalise`` applies
as in 2-D (``robust``: the 0.5 and 99.5 percentiles of the sample, as for MR; ``auto`` = robust
unless 8-bit; ``dtype``: the dtype's range).

The window is part of the feature spec (``FeatureSpec.window``), so a saved model labels a
volume as the run that fitted it (``apply``). With a mask (:mod:`pixseg.volume_mask`), masked
voxels are never sampled and get label 0. Runs and outputs: :mod:`pixseg.volume_runner`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
from dask.array.overlap import ensure_minimum_chunksize

from pixseg import feature_kernels as kernels
from pixseg.errors import InputError, ParameterError
from pixseg.feature_registry import FEATURE_REGISTRY
from pixseg.features import FeatureSpec, compute_features, dtype_range, make_feature_spec, robust_channel_ranges
from pixseg.fitting import fit_options_model
from pixseg.io.readers import is_pixel_dtype
from pixseg.io.readers.volume import DEFAULT_VOLUME_CHUNK
from pixseg.model import SegmentationModel
from pixseg.normalise import scaled_channels
from pixseg.options import DEFAULT_SIGMAS, FitOptions
from pixseg.predict import build_labels
from pixseg.volume_sampling import sample_voxels
from pixseg.volume_texture import VOLUME_TEXTURE_GROUPS, texture_column, texture_halo

logger = logging.getLogger(__name__)


def check_window(window: Sequence[float] | None) -> tuple[float, float] | None:
    """``--window`` as (low, high) with low < high, or None."""
    if window is None:
        return None
    values = tuple(float(v) for v in window)
    if len(values) != 2 or not values[0] < values[1]:
        raise ParameterError(f"--window must be LOW,HIGH with LOW < HIGH, got {values!r}")
    return values  # type: ignore[return-value]


def volume_spec(
    raw_sample: np.ndarray,
    *,
    dtype: np.dtype,
    features: Sequence[str],
    normalise: str,
    window: tuple[float, float] | None,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    mask: str = "none",
) -> FeatureSpec:
    """The feature spec of a volume of ``dtype`` whose sampled raw voxels are ``raw_sample`` (n, C),
    recording ``window`` and the ``mask`` mode (``none`` or ``auto``).

    Raises
    ------
    ParameterError
        For a feature group that is neither voxel-wise nor a 3-D texture group
        (:data:`~pixseg.volume_texture.VOLUME_TEXTURE_GROUPS`).
    """
    n_channels = raw_sample.shape[1]
    check_volume_features(features)
    groups = make_feature_spec(features, n_channels=n_channels, has_alpha=False, dtype=dtype).groups
    if window is not None:
        ranges: Sequence[tuple[float, float]] = [window] * n_channels
    elif normalise == "robust" or (normalise == "auto" and np.dtype(dtype) != np.uint8):
        ranges = robust_channel_ranges(raw_sample)
    else:
        ranges = [dtype_range(dtype)] * n_channels
    spec = make_feature_spec(
        groups, n_channels=n_channels, has_alpha=False, dtype=dtype, channel_ranges=ranges, sigmas=sigmas, mask=mask
    )
    return dataclasses.replace(spec, window=window)


def check_volume_features(features: Sequence[str]) -> None:
    """Refuse feature groups a volume does not have: neither voxel-wise nor 3-D texture
    (:data:`~pixseg.volume_texture.VOLUME_TEXTURE_GROUPS`); unknown names as ``--features`` does."""
    groups = make_feature_spec(features, n_channels=3, has_alpha=False, dtype=np.dtype(np.uint8)).groups
    other = [g for g in groups if FEATURE_REGISTRY[g].kind != "colour" and g not in VOLUME_TEXTURE_GROUPS]
    if other:
        choices = ", ".join(VOLUME_TEXTURE_GROUPS)
        raise ParameterError(
            f"--features {','.join(other)} is not available for volumes; use voxel-wise groups or {choices}"
        )


@dataclass(frozen=True)
class VoxelFeatures:
    """The features of a volume's voxels: ``spec``'s groups, after clipping to ``spec.window``, with
    texture sigmas in millimetres of voxels ``spacing`` (z, y, x) mm (picklable, called per block)."""

    spec: FeatureSpec
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def halo(self) -> tuple[int, int, int]:
        """Context voxels a block needs on each side along (z, y, x)."""
        return texture_halo(self.spec.sigmas if self.spec.texture_groups else (), self.spacing)

    def __call__(self, voxels: np.ndarray) -> np.ndarray:
        """Features of a block of raw voxels: (d, h, w, C) -> (d, h, w, F) float32, NaN for non-finite
        voxels (voxel-wise specs take any (..., C)). Texture is exact away from the block's faces
        (``halo`` voxels in) and at the volume's own faces. The input is not modified."""
        spec = self.spec
        if spec.window is not None:
            voxels = np.clip(voxels, *spec.window).astype(voxels.dtype, copy=False)
        if not spec.texture_groups:
            return compute_features(voxels, spec)
        colour_groups = tuple(g for g in spec.groups if g not in spec.texture_groups)
        colour = compute_features(voxels, dataclasses.replace(spec, groups=colour_groups or ("channels",), sigmas=()))
        invalid = np.isnan(colour[..., 0])
        intensity = np.where(invalid, 0.0, kernels.grey(scaled_channels(voxels, spec.channel_ranges))[..., 0]).astype(
            np.float64
        )
        columns = iter(np.moveaxis(colour, -1, 0)) if colour_groups else iter(())
        parts = []
        for group in spec.groups:
            if group in spec.texture_groups:
                parts += [texture_column(intensity, group, sigma, self.spacing) for sigma in spec.sigmas]
            else:
                parts += [next(columns) for _ in spec.column_groups if _ == group]
        features = np.stack(parts, axis=-1).astype(np.float32)
        features[invalid] = np.nan
        return features


def volume_features(data: da.Array, features: VoxelFeatures) -> da.Array:
    """Lazy (Z, Y, X, F) float32 features of a (Z, Y, X, C) volume, chunk by chunk, the same chunks.

    With texture, chunks overlap by ``features.halo`` voxels (none added at the volume's faces),
    so every voxel's features equal those of the whole volume.
    """
    n_columns = len(features.spec.columns)
    meta = np.empty((0, 0, 0, 0), dtype=np.float32)
    halo = features.halo
    if not any(halo):
        return data.map_blocks(
            features,  # type: ignore[arg-type, call-arg]  # dask's stubs type map_blocks' first argument as an Array
            chunks=(*data.chunks[:3], (n_columns,)),
            dtype=np.float32,
            meta=meta,
        )
    sizes = [_chunks_at_least(h, c) for h, c in zip(halo, data.chunks[:3], strict=True)]
    work = data.rechunk((*sizes, data.chunks[3]))
    depth = {axis: halo[axis] if len(work.chunks[axis]) > 1 else 0 for axis in range(3)}
    padded = da.overlap.overlap(work, depth={**depth, 3: 0}, boundary="none")
    featured = padded.map_blocks(
        _overlapped_features,  # type: ignore[arg-type]  # dask's stubs type map_blocks' first argument as an Array
        features,
        tuple(depth[axis] for axis in range(3)),
        work.numblocks[:3],
        chunks=(*work.chunks[:3], (n_columns,)),
        dtype=np.float32,
        meta=meta,
    )
    return featured.rechunk((*data.chunks[:3], (n_columns,)))


def _chunks_at_least(depth: int, chunks: tuple[int, ...]) -> tuple[int, ...]:
    """``chunks`` with none smaller than ``depth`` (dask's overlap needs depth <= chunk); one chunk
    when the axis is no longer than ``depth``."""
    if not depth or len(chunks) == 1:
        return chunks
    if sum(chunks) <= depth:
        return (sum(chunks),)
    return tuple(ensure_minimum_chunksize(depth, chunks))


def _overlapped_features(
    block: np.ndarray,
    features: VoxelFeatures,
    depth: tuple[int, int, int],
    numblocks: tuple[int, int, int],
    block_id: tuple[int, ...],
) -> np.ndarray:
    """Features of block ``block_id`` of an overlapped volume, cut to the block (no overlap at the faces)."""
    core = tuple(
        slice(depth[a] if block_id[a] > 0 else 0, block.shape[a] - (depth[a] if block_id[a] < numblocks[a] - 1 else 0))
        for a in range(3)
    )
    return features(block)[core]


@dataclass(frozen=True)
class VolumeMember:
    """One volume of a fit: its (Z, Y, X, C) data, spacing (mm), mask ((Z, Y, X) bool, True =
    keep, or None), sampling seed and the voxels it contributes to the sample."""

    data: da.Array
    spacing: tuple[float, float, float]
    mask: da.Array | None
    seed: int
    sample_size: int


def fit_volume(
    data: da.Array,
    fit: FitOptions,
    *,
    window: tuple[float, float] | None,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    mask: da.Array | None = None,
    progress: bool,
) -> SegmentationModel:
    """Sample a (Z, Y, X, C) volume and fit the model (computes the sample only); ``--clusters
    auto`` chooses K on the sample as in 2-D (:func:`pixseg.fitting.fit_options_model`).

    ``mask`` ((Z, Y, X) bool, True = keep; from :func:`pixseg.volume_mask.body_mask`) leaves the
    voxels it drops out of the sample, and the spec records ``mask="auto"``. See :func:`fit_volumes`.

    Raises
    ------
    ParameterError
        For a bad feature group, or a sample with fewer distinct vectors than clusters.
    """
    member = VolumeMember(data, spacing, mask, fit.seed, fit.sample_size)
    return fit_volumes([member], fit, window=window, progress=progress)


def fit_volumes(
    members: Sequence[VolumeMember], fit: FitOptions, *, window: tuple[float, float] | None, progress: bool
) -> SegmentationModel:
    """Fit one model on the samples of ``members`` pooled (computes the samples only).

    The pooled raw sample sets the channel ranges; voxel-wise features are computed from it,
    texture features from a second pass over each volume's cubes with their halo, in mm of that
    volume's spacing. The spec's dtype is the first member's.

    Raises
    ------
    ParameterError
        For a bad feature group, no valid voxel in any member, or a sample with fewer distinct
        vectors than clusters.
    """
    raws = [
        sample_voxels(m.data, sample_size=m.sample_size, seed=m.seed, mask=m.mask, progress=progress) for m in members
    ]
    if sum(len(raw) for raw in raws) == 0:
        raise ParameterError("the volume has no valid (finite, unmasked) voxels to sample")
    spec = volume_spec(
        np.concatenate(raws),
        dtype=members[0].data.dtype,
        features=fit.features,
        normalise=fit.normalise,
        window=window,
        sigmas=fit.sigmas,
        mask="none" if members[0].mask is None else "auto",
    )
    parts = []
    for member, raw in zip(members, raws, strict=True):
        features = VoxelFeatures(spec, member.spacing)
        if spec.texture_groups:
            parts.append(
                sample_voxels(
                    member.data,
                    sample_size=member.sample_size,
                    seed=member.seed,
                    mask=member.mask,
                    progress=progress,
                    featurise=features,
                    depth=features.halo,
                )
            )
        else:
            parts.append(features(raw.astype(member.data.dtype)[:, np.newaxis, :])[:, 0, :])
    return fit_options_model(np.concatenate(parts), spec, fit)


def volume_labels(
    data: da.Array, model: SegmentationModel, features: VoxelFeatures, mask: da.Array | None = None
) -> da.Array:
    """Lazy (Z, Y, X) labels 1..K of a (Z, Y, X, C) volume, the same chunks: 0 for non-finite
    voxels and where ``mask`` ((Z, Y, X) bool, the same chunks) is False."""
    labels = build_labels(volume_features(data, features), model)
    if mask is None:
        return labels
    return da.where(mask, labels, labels.dtype.type(0))


def volume_array(image: Any, *, chunk: int | None = None) -> da.Array:
    """A (Z, Y, X) or (Z, Y, X, C) numpy, dask or xarray array as a (Z, Y, X, C) dask volume.

    Dask input keeps its chunks unless ``chunk`` is given; numpy input gets cubic chunks of
    ``chunk`` (default ``DEFAULT_VOLUME_CHUNK``). Computes nothing.

    Raises
    ------
    InputError
        For another number of dimensions, or a dtype that is neither integer nor float.
    """
    data = getattr(image, "data", image) if type(image).__module__.startswith("xarray") else image
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=chunk or DEFAULT_VOLUME_CHUNK)
    elif chunk is not None:
        data = data.rechunk(chunk)
    if data.ndim == 3:
        data = data[..., np.newaxis]
    if data.ndim != 4:
        raise InputError(f"a volume array has shape (Z, Y, X) or (Z, Y, X, C), got shape {tuple(data.shape)!r}")
    if not is_pixel_dtype(np.dtype(data.dtype)):
        raise InputError(f"a volume array has an integer or float dtype, got {np.dtype(data.dtype).name!r}")
    return data.rechunk({3: -1})
