"""Segmenting 3-D volumes: open -> sample -> fit -> label -> write, chunk by chunk.

The volume path reuses the 2-D pipeline's pieces: the feature spec and per-chunk kernels
(:func:`pixseg.features.compute_features` on (d, h, w, C) blocks), the channel scaling
(:mod:`pixseg.normalise`), the position-keyed sample (:mod:`pixseg.volume_sampling` over
:mod:`pixseg.sampling`'s keys), the dask-ml fit (:func:`pixseg.model.fit_model`) and the
nearest-centroid kernel (:func:`pixseg.predict.build_labels`). Volume features are the
voxel-wise (colour) groups, ``channels`` (intensity) by default.

Intensity scaling: ``window`` (``--window LOW,HIGH``, e.g. a CT window in Hounsfield units)
clips every voxel to [LOW, HIGH] and maps that range to [0, 1]; otherwise ``normalise`` applies
as in 2-D (``robust``: the 0.5 and 99.5 percentiles of the sample, as for MR; ``auto`` = robust
unless 8-bit; ``dtype``: the dtype's range).

Outputs: ``.zarr`` (an OME-Zarr label multiscale, :func:`pixseg.io.label_volume.pyramid_factors`)
or ``.nii`` / ``.nii.gz`` (a NIfTI label volume with the input's affine). Statistics: voxels,
fraction and volume in mm³ per label.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
from dask.array.overlap import ensure_minimum_chunksize

from pixseg import feature_kernels as kernels
from pixseg.colours import label_colours
from pixseg.compute import compute
from pixseg.errors import InputError, OutputError, OutputExistsError, ParameterError
from pixseg.feature_registry import FEATURE_REGISTRY
from pixseg.features import FeatureSpec, compute_features, dtype_range, make_feature_spec, robust_channel_ranges
from pixseg.io.label_groups import read_label_zarr_status, remove_output
from pixseg.io.label_volume import (
    create_nifti_labels,
    create_volume_label_zarr,
    finish_nifti,
    finish_volume_label_zarr,
    is_label_nifti,
    pyramid_factors,
    reduce_level,
    store_counting,
)
from pixseg.io.model_file import save_model
from pixseg.io.readers import is_pixel_dtype
from pixseg.io.readers.volume import DEFAULT_VOLUME_CHUNK, Volume, is_nifti, open_volume
from pixseg.model import SegmentationModel, fit_model
from pixseg.normalise import scaled_channels
from pixseg.options import DEFAULT_SIGMAS, FitOptions, OutputOptions, ReadOptions
from pixseg.plan import check_model_path
from pixseg.predict import build_labels
from pixseg.volume_sampling import sample_voxels
from pixseg.volume_texture import VOLUME_TEXTURE_GROUPS, texture_column, texture_halo

logger = logging.getLogger(__name__)

#: Output suffixes of a volume's labels.
VOLUME_OUTPUTS = (".zarr", ".nii", ".nii.gz")


@dataclass(frozen=True)
class VolumeResult:
    """What a volume ``segment`` produced.

    ``statistics`` has one row per label: ``label``, ``voxels``, ``fraction`` (of labelled
    voxels), ``volume_mm3`` and ``colour_rgba``.
    """

    output: str
    model: SegmentationModel
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    n_chunks: int
    seconds: float
    levels: list[tuple[int, ...]]
    statistics: list[dict[str, Any]]

    def summary(self) -> str:
        """The end-of-run lines: what was written, how fast, and the label table."""
        depth, height, width = self.shape
        rate = depth * height * width / 1e6 / max(self.seconds, 1e-9)
        lines = [
            f"wrote {self.output}: {depth}x{height}x{width} voxels of {'x'.join(f'{s:g}' for s in self.spacing)} mm, "
            f"labels 1..{self.model.n_clusters} in {self.seconds:.1f} s ({rate:.3g} Mvox/s, {self.n_chunks} chunks, "
            f"{len(self.levels)} levels)",
            f"{'label':>5} {'voxels':>14} {'%':>7} {'volume mm^3':>14}",
        ]
        lines += [
            f"{r['label']:>5} {r['voxels']:>14} {100 * r['fraction']:>7.2f} {r['volume_mm3']:>14.6g}"
            for r in self.statistics
        ]
        return "\n".join(lines)


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
) -> FeatureSpec:
    """The feature spec of a volume of ``dtype`` whose sampled raw voxels are ``raw_sample`` (n, C).

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
    return make_feature_spec(
        groups, n_channels=n_channels, has_alpha=False, dtype=dtype, channel_ranges=ranges, sigmas=sigmas
    )


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
    """The features of a volume's voxels: ``spec``'s groups, after clipping to ``window``, with
    texture sigmas in millimetres of voxels ``spacing`` (z, y, x) mm (picklable, called per block)."""

    spec: FeatureSpec
    window: tuple[float, float] | None = None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def halo(self) -> tuple[int, int, int]:
        """Context voxels a block needs on each side along (z, y, x)."""
        return texture_halo(self.spec.sigmas if self.spec.texture_groups else (), self.spacing)

    def __call__(self, voxels: np.ndarray) -> np.ndarray:
        """Features of a block of raw voxels: (d, h, w, C) -> (d, h, w, F) float32, NaN for non-finite
        voxels (voxel-wise specs take any (..., C)). Texture is exact away from the block's faces
        (``halo`` voxels in) and at the volume's own faces. The input is not modified."""
        if self.window is not None:
            voxels = np.clip(voxels, *self.window).astype(voxels.dtype, copy=False)
        spec = self.spec
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


def fit_volume(
    data: da.Array,
    fit: FitOptions,
    *,
    window: tuple[float, float] | None,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    progress: bool,
) -> SegmentationModel:
    """Sample a (Z, Y, X, C) volume and fit the model (computes the sample only).

    The raw sample sets the channel ranges; voxel-wise features are computed from it, texture
    features from a second pass over the same cubes with their halo.

    Raises
    ------
    ParameterError
        For ``--clusters auto``, a bad feature group, or a sample with fewer distinct vectors than clusters.
    """
    n_clusters = _given_clusters(fit)
    raw = sample_voxels(data, sample_size=fit.sample_size, seed=fit.seed, progress=progress)
    if len(raw) == 0:
        raise ParameterError("the volume has no valid (finite) voxels to sample")
    spec = volume_spec(
        raw, dtype=data.dtype, features=fit.features, normalise=fit.normalise, window=window, sigmas=fit.sigmas
    )
    features = VoxelFeatures(spec, window, spacing)
    if spec.texture_groups:
        vectors = sample_voxels(
            data, sample_size=fit.sample_size, seed=fit.seed, progress=progress, featurise=features, depth=features.halo
        )
    else:
        vectors = features(raw.astype(data.dtype)[:, np.newaxis, :])[:, 0, :]
    return fit_model(vectors, spec, n_clusters=n_clusters, seed=fit.seed, restarts=fit.restarts)


def _given_clusters(fit: FitOptions) -> int:
    if not isinstance(fit.clusters, int):
        raise ParameterError("--clusters auto is not available for volumes yet; give K")
    return fit.clusters


def volume_labels(data: da.Array, model: SegmentationModel, features: VoxelFeatures) -> da.Array:
    """Lazy (Z, Y, X) labels 1..K of a (Z, Y, X, C) volume (0 for non-finite voxels), the same chunks."""
    return build_labels(volume_features(data, features), model)


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


def check_volume_options(read: ReadOptions, fit: FitOptions, output: OutputOptions, *, resume: bool) -> None:
    """Refuse, before any work, the options the volume path does not implement yet (one line each).

    Raises
    ------
    ParameterError
        Naming the first such option given.
    """
    given = {
        "--level": read.level != 0,
        "--series": read.series is not None,
        "--plane": read.plane is not None,
        "--channels": read.channels is not None,
        "--nodata": read.nodata is not None,
        "--mask": fit.mask != "none",
        "--fit-level": fit.fit_level is not None,
        "--with-image": output.with_image,
        "--regions": output.regions is not None,
        "--pixel-size": output.pixel_size is not None,
        "--resume": resume,
    }
    refused = [flag for flag, present in given.items() if present]
    if refused:
        raise ParameterError(f"{refused[0]} is not available for volumes yet (see docs/volumes.md)")


def segment_volume(
    input_path: str,
    output_path: str,
    *,
    read: ReadOptions | None = None,
    fit: FitOptions | None = None,
    model_path: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> VolumeResult:
    """Segment a volume (NIfTI, DICOM series, 3-D OME-Zarr) into a NIfTI or OME-Zarr label volume.

    Parameters
    ----------
    input_path : str
        See :func:`pixseg.io.readers.volume.open_volume`. Never modified; a ``.nii.gz`` is
        converted once into ``read.workdir`` (default: the output's directory) and the copy
        removed after the run unless ``read.keep_workdir``.
    output_path : str
        ``.zarr``, ``.nii`` or ``.nii.gz``.
    read, fit : ReadOptions, FitOptions, optional
        ``chunk``, ``series_uid``, ``workdir``; ``clusters``, ``seed``, ``features``,
        ``sample_size``, ``restarts``, ``normalise``, ``window``.
    model_path : str, optional
        Also save the fitted model there (JSON, as ``--save-model``).
    overwrite : bool
        Replace an existing output (and model file).
    progress : bool
        Progress on stderr.

    Raises
    ------
    PipelineError
        For every user mistake: a bad input, an output that exists or has another suffix, a bad option.
    """
    started = time.perf_counter()
    read, fit = read or ReadOptions(), fit or FitOptions()
    window = check_window(fit.window)
    _given_clusters(fit)
    check_volume_features(fit.features)
    kind = _output_kind(output_path)
    _check_output(output_path, input_path, kind, overwrite=overwrite)
    if model_path is not None:
        check_model_path(model_path, overwrite=overwrite)
    workdir = read.workdir or os.path.dirname(os.path.abspath(output_path))
    volume = open_volume(input_path, chunk=read.chunk, series_uid=read.series_uid, workdir=workdir)
    shape_text = "x".join(map(str, volume.shape))
    logger.info("volume %s: %s %s, spacing %s mm", volume.path, shape_text, volume.dtype.name, volume.spacing)
    model = fit_volume(volume.data, fit, window=window, spacing=volume.spacing, progress=progress)
    if model_path is not None:
        save_model(model, model_path, provenance={"input": os.path.abspath(input_path), "window": window})
    labels = volume_labels(volume.data, model, VoxelFeatures(model.feature_spec, window, volume.spacing))
    if kind == ".zarr" and os.path.lexists(output_path):
        remove_output(output_path)  # a NIfTI output is replaced by a rename
    writer = _write_zarr if kind == ".zarr" else _write_nifti
    counts, levels = writer(labels, output_path, volume, model, progress=progress)
    if not read.keep_workdir:  # after an error the copy is kept for the rerun
        _drop_copy(volume, workdir)
    rows = volume_statistics(counts, volume.voxel_volume)
    if kind == ".zarr":
        factors = pyramid_factors(volume.shape[:3], volume.spacing)
        extra = {"statistics": rows, "model": model.to_dict(), "input": os.path.abspath(input_path)}
        finish_volume_label_zarr(output_path, spacing=volume.spacing, factors=factors, rows=rows, extra=extra)
    return VolumeResult(
        output=output_path,
        model=model,
        shape=volume.shape[:3],  # type: ignore[arg-type]
        spacing=volume.spacing,
        n_chunks=int(np.prod(labels.numblocks)),
        seconds=time.perf_counter() - started,
        levels=levels,
        statistics=rows,
    )


def _check_output(path: str, input_path: str, kind: str, *, overwrite: bool) -> None:
    """Refuse an output at or inside the input, and an existing one without ``overwrite`` or that
    pixseg did not write."""
    output, source = os.path.realpath(path), os.path.realpath(input_path)
    if output == source or output.startswith(source.rstrip(os.sep) + os.sep):
        raise OutputError(f"output {path!r} would overwrite the input {input_path!r}")
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise OutputExistsError(f"output {path!r} exists; pass --overwrite to replace it")
    ours = read_label_zarr_status(path) is not None if kind == ".zarr" else is_label_nifti(path)
    if os.path.islink(path) or not ours:
        raise OutputError(f"refusing to replace {path!r}: it is not a pixseg label volume")


def _output_kind(path: str) -> str:
    lowered = path.lower().rstrip("/")
    for suffix in sorted(VOLUME_OUTPUTS, key=len, reverse=True):
        if lowered.endswith(suffix):
            return suffix
    raise ParameterError(f"output {path!r}: a volume's labels are written as {', '.join(VOLUME_OUTPUTS)}")


def _write_zarr(
    labels: da.Array, path: str, volume: Volume, model: SegmentationModel, *, progress: bool
) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Level 0 (counting), then each coarser level from the stored one above; metadata is the caller's."""
    chunks = tuple(int(c[0]) for c in labels.chunks)
    labels = labels.rechunk(chunks)  # regular chunks, so each zarr chunk is one dask chunk
    shapes: list[tuple[int, ...]] = [volume.shape[:3]]
    shape_factors = pyramid_factors(volume.shape[:3], volume.spacing)
    for factor in shape_factors:
        shapes.append(tuple(-(-n // f) for n, f in zip(shapes[-1], factor, strict=True)))
    arrays = create_volume_label_zarr(path, shapes=shapes, chunks=chunks, dtype=model.label_dtype)  # type: ignore[arg-type]
    counts = compute(store_counting(labels, arrays[0], model.n_clusters + 1), progress=progress)
    for above, below, factor in zip(arrays[:-1], arrays[1:], shape_factors, strict=True):
        reduce_level(above, below, factor)
    return counts, shapes


def _write_nifti(
    labels: da.Array, path: str, volume: Volume, model: SegmentationModel, *, progress: bool
) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """The labels into a temporary ``.nii`` beside ``path`` (one chunk at a time), then moved or compressed there."""
    handle, written = tempfile.mkstemp(prefix=".pixseg-", suffix=".nii", dir=os.path.dirname(os.path.abspath(path)))
    os.close(handle)
    try:
        voxels = create_nifti_labels(written, shape=volume.shape[:3], dtype=model.label_dtype, affine=volume.affine)  # type: ignore[arg-type]
        counts = compute(store_counting(labels, voxels, model.n_clusters + 1), progress=progress)
        finish_nifti(written, path)
    finally:
        if os.path.exists(written):
            os.remove(written)
    return counts, [volume.shape[:3]]


def volume_statistics(counts: np.ndarray, voxel_volume: float) -> list[dict[str, Any]]:
    """One row per label 1..K from ``counts`` (index 0 = no data): voxels, fraction, mm³, display colour."""
    labelled = max(1, int(counts[1:].sum()))
    colours = label_colours(len(counts) - 1)
    return [
        {
            "label": label,
            "voxels": int(counts[label]),
            "fraction": int(counts[label]) / labelled,
            "volume_mm3": int(counts[label]) * voxel_volume,
            "colour_rgba": list(colours[label - 1]),
        }
        for label in range(1, len(counts))
    ]


def _drop_copy(volume: Volume, workdir: str) -> None:
    """Remove the copy in ``workdir`` a ``.nii.gz`` input was converted into, if any."""
    if not (is_nifti(volume.path) and volume.path.lower().endswith(".gz")):
        return
    from pixseg.io.readers.nifti import nifti_copy_path

    copy = nifti_copy_path(volume.path, workdir)
    if os.path.isdir(copy):
        remove_output(copy)
