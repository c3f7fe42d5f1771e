"""Per-pixel features: one registry entry per feature group, and the one place that builds them lazily.

Every feature group is one :class:`~pixseg.feature_registry.FeatureGroup` in
:data:`~pixseg.feature_registry.FEATURE_REGISTRY` (its columns, kernel, what the kernel reads,
whether it needs RGB, its shorthand names). Group lists, column names, validation, the
halo and :attr:`FeatureSpec.pointwise` are all derived from the registry, so adding a group
means adding one entry and its kernel.

A feature image has shape (Y, X, F), dtype float32. Pixels that carry no data (alpha == 0,
NaN or infinite input, outside a mask) hold NaN in every feature: that NaN is the validity
mask the sampling and prediction stages read.

Colour features are per pixel. Texture features (Gaussian-smoothed intensity, local standard
deviation, gradient magnitude, Laplacian of Gaussian, Hessian eigenvalues) filter the
intensity image with scipy.ndimage's Gaussians (``mode="reflect"``, ``truncate`` 4), run in
float32 through OpenCV (:func:`~pixseg.feature_kernels.gaussian_filters`), at each scale
``sigma``; the lazy builder gives every chunk a halo of ``ceil(sigma * truncate)`` pixels
(dask-image's rule) and no padding at the image edges, so the reflecting border applies there
and a pixel's features do not depend on the chunking (bit for bit). Sigmas are in
full-resolution pixels: on a pyramid level downsampled ``f`` times the filters use
``sigma / f`` and derivatives are expressed per full-resolution pixel, so features of a
level approximate those of the full-resolution image.

A chunk is featurised band by band of rows (:func:`feature_bands`), so that every step works in
the processor's cache; 8- and 16-bit RGB is scaled and mixed (``grey``, ``hed``) through lookup
tables (:mod:`pixseg.colour_tables`), with the kernels' results bit for bit.

The spec (:class:`FeatureSpec`, :func:`make_feature_spec`) lives in :mod:`pixseg.feature_spec` and
the groups in :mod:`pixseg.feature_registry`; this module re-exports both as the features API.

Importing this module does not import dask (the CLI lists feature groups from it cheaply):
:func:`build_features` imports ``dask.array`` when it builds a graph.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pixseg import feature_kernels as kernels
from pixseg.feature_kernels import GaussianFilter, gaussian_filters
from pixseg.feature_registry import (
    COLOUR_GROUPS,
    FEATURE_ALIASES,
    FEATURE_GROUPS,
    FEATURE_REGISTRY,
    TEXTURE_GROUPS,
    FeatureGroup,
)
from pixseg.feature_spec import MASK_MODES, FeatureSpec, make_feature_spec
from pixseg.normalise import channel_levels, dtype_range, robust_channel_ranges, scaled_channels
from pixseg.options import DEFAULT_SIGMAS, MAX_SIGMA

__all__ = [
    "COLOUR_GROUPS",
    "DEFAULT_SIGMAS",
    "FEATURE_ALIASES",
    "FEATURE_GROUPS",
    "FEATURE_REGISTRY",
    "MASK_MODES",
    "MAX_SIGMA",
    "TEXTURE_GROUPS",
    "FeatureGroup",
    "FeatureSpec",
    "build_features",
    "compute_features",
    "dtype_range",
    "feature_bands",
    "make_feature_spec",
    "map_featurised",
    "robust_channel_ranges",
]

if TYPE_CHECKING:
    import dask.array as da

#: Pixels of a chunk whose features are computed at once, in whole rows (see :func:`feature_bands`):
#: 64 rows of 1024 columns, a few MB of filterings and features that stay in the processor's cache.
_BAND_PIXELS = 64 * 1024


def compute_features(
    chunk: np.ndarray,
    spec: FeatureSpec,
    *,
    halo: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0)),
    scale: tuple[float, float] = (1.0, 1.0),
    origin: tuple[int, int] = (0, 0),
    image_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Features of one chunk (or of a whole in-memory image, with the defaults).

    Parameters
    ----------
    chunk : numpy.ndarray
        Shape (h, w, C) in the input dtype; C includes alpha when ``spec.has_alpha``. Includes
        the ``halo`` context pixels around the region whose features are returned.
    spec : FeatureSpec
        What to compute.
    halo : ((int, int), (int, int))
        Context rows above and below, and columns left and right, of the returned region. Texture
        features are exact when each side is at least ``spec.halo(scale)`` or lies on the image edge.
    scale : (float, float)
        How many full-resolution pixels one pixel of this level spans, (rows, columns).
    origin : (int, int)
        (row, column) in the image of the first returned pixel (for ``coordinates``).
    image_shape : (int, int), optional
        (Y, X) of the image at this level (for ``coordinates``); by default the returned region's.

    Returns
    -------
    numpy.ndarray
        Shape (h - top - bottom, w - left - right, len(spec.columns)), float32; NaN in every
        column of an invalid pixel. The input is not modified.

    Raises
    ------
    InputError
        If a finite value of a float input, once scaled, lies beyond float32's range (a nodata
        sentinel the reader was not told about, or values far outside the channel ranges).
    """
    (top, bottom), (left, right) = halo
    region = chunk[top : chunk.shape[0] - bottom, left : chunk.shape[1] - right].shape[:-1]  # any leading axes
    features = np.empty((*region, len(spec.columns)), dtype=np.float32)
    for rows, band in feature_bands(chunk, spec, halo=halo, scale=scale, origin=origin, image_shape=image_shape):
        features[rows] = band
    return features


def feature_bands(
    chunk: np.ndarray,
    spec: FeatureSpec,
    *,
    halo: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0)),
    scale: tuple[float, float] = (1.0, 1.0),
    origin: tuple[int, int] = (0, 0),
    image_shape: tuple[int, int] | None = None,
) -> Iterator[tuple[slice, np.ndarray]]:
    """:func:`compute_features` band by band of rows (``_BAND_PIXELS`` pixels), for callers that use each band at once.

    Every step, filterings, kernels' temporaries and the band itself, works on a band that fits
    in the processor's cache, and no array of the whole chunk's features is made: the label pass
    labels each band as it comes (:func:`pixseg.predict.label_chunk`). Parameters and errors as
    for :func:`compute_features`; the bands' values are its values (it is built from them).

    Yields
    ------
    (slice, numpy.ndarray)
        The band's rows among the returned region's, and its features, shape (rows, w - left -
        right, len(spec.columns)), float32: a buffer that the next band overwrites. Volumes'
        (d, h, w, C) blocks (no texture) come as one band.
    """
    (top, bottom), (left, right) = halo
    inner = (slice(top, chunk.shape[0] - bottom), slice(left, chunk.shape[1] - right))
    tables = _colour_tables(spec) if chunk.ndim == 3 else {}  # volumes' (d, h, w, C) blocks use the kernels
    scaled = None
    if not tables.keys() >= _colour_groups_read(spec):
        scaled = scaled_channels(chunk[..., : spec.n_channels], spec.channel_ranges)
    invalid = _invalid_pixels(chunk, scaled, spec)
    if invalid is not None and scaled is not None:
        scaled[invalid] = 0.0
    region = chunk[inner].shape[:-1]
    band_rows = max(1, _BAND_PIXELS // max(1, region[1]) if chunk.ndim == 3 else region[0])
    filtered = None
    if spec.texture_groups:
        filtered = _texture_filterings(chunk, scaled, invalid, spec, tables, inner=inner, scale=scale, rows=band_rows)
    buffer = np.empty((min(band_rows, region[0]), *region[1:], len(spec.columns)), dtype=np.float32)
    for first in range(0, region[0], band_rows):
        rows = slice(first, min(first + band_rows, region[0]))
        pixels = (slice(inner[0].start + rows.start, inner[0].start + rows.stop), inner[1])
        band = buffer[: rows.stop - rows.start]
        for name in spec.groups:
            group = FEATURE_REGISTRY[name]
            columns = band[..., _column_slice(spec, name)]
            if name in tables:
                _mix_rgb_tables(chunk[pixels], *tables[name], out=columns)
            elif group.kind == "colour":
                assert scaled is not None
                columns[...] = group.kernel(scaled[pixels])
            elif group.kind == "position":
                start = (origin[0] + rows.start, origin[1])
                columns[...] = group.kernel(band.shape[:2], start, image_shape or region[:2])
        if filtered is not None:
            _write_texture(band, filtered, spec, rows=pixels[0], cols=inner[1])
        if invalid is not None:
            band[invalid[pixels]] = np.nan
        yield rows, band


def _texture_filterings(
    chunk: np.ndarray,
    scaled: np.ndarray | None,
    invalid: np.ndarray | None,
    spec: FeatureSpec,
    tables: dict[str, tuple[np.ndarray, float]],
    *,
    inner: tuple[slice, slice],
    scale: tuple[float, float],
    rows: int,
) -> Iterator[tuple[slice, int, dict[GaussianFilter, np.ndarray]]]:
    """The Gaussian filterings the spec's texture groups read, of the chunk's intensity (``grey``),
    band by band of ``rows`` of the returned region's rows (see :func:`~pixseg.feature_kernels.gaussian_filters`)."""
    if "grey" in tables:
        intensity = np.empty((*chunk.shape[:2], 1), dtype=np.float32)
        _mix_rgb_tables(chunk, *tables["grey"], out=intensity)
        if invalid is not None:
            intensity[invalid] = 0.0  # the grey of scaled zeros, as the kernel path gives
    else:
        assert scaled is not None
        intensity = kernels.grey(scaled)
    needed = tuple(
        dict.fromkeys(gaussian for name in spec.texture_groups for gaussian in FEATURE_REGISTRY[name].filters)
    )
    return gaussian_filters(intensity[..., 0], spec.sigmas, needed, scale=scale, rows=inner[0], band_rows=rows)


def _colour_groups_read(spec: FeatureSpec) -> set[str]:
    """The colour groups ``spec`` computes: its own, and ``grey`` (the texture groups' intensity)."""
    read = (*spec.groups, "grey") if spec.texture_groups else spec.groups
    return {name for name in read if FEATURE_REGISTRY[name].kind == "colour"}


@functools.cache
def _colour_tables(spec: FeatureSpec) -> dict[str, tuple[np.ndarray, float]]:
    """Lookup tables (see :mod:`pixseg.colour_tables`) of every registry group that has them and whose
    tables apply to ``spec``'s input: 8- or 16-bit unsigned RGB. Empty for other inputs."""
    if spec.dtype not in ("uint8", "uint16") or spec.n_channels != 3:
        return {}
    levels = channel_levels(np.dtype(spec.dtype), spec.channel_ranges)
    built = {name: group.tables(levels) for name, group in FEATURE_REGISTRY.items() if group.tables is not None}
    return {name: made for name, made in built.items() if made is not None}


def _mix_rgb_tables(pixels: np.ndarray, tables: np.ndarray, lower: float, *, out: np.ndarray) -> None:
    from pixseg.colour_tables import mix_rgb_tables  # imports numba: only when tables are used

    mix_rgb_tables(pixels, tables, lower, out)


def _invalid_pixels(chunk: np.ndarray, scaled: np.ndarray | None, spec: FeatureSpec) -> np.ndarray | None:
    """Pixels without data: alpha == 0, or a non-finite scaled value of a float input (``scaled`` given)."""
    invalid = None
    if spec.has_alpha:
        invalid = chunk[..., -1] == 0
    if np.issubdtype(chunk.dtype, np.floating):
        assert scaled is not None
        nonfinite = ~np.isfinite(scaled).all(axis=-1)
        invalid = nonfinite if invalid is None else invalid | nonfinite
    return invalid


def _write_texture(
    band: np.ndarray,
    filtered: Iterator[tuple[slice, int, dict[GaussianFilter, np.ndarray]]],
    spec: FeatureSpec,
    *,
    rows: slice,
    cols: slice,
) -> None:
    """Write the spec's texture columns of one band into ``band``, from the next filterings of
    ``filtered``: those of the intensity's rows ``rows``, one sigma after the other.

    Every Gaussian filtering the texture groups read is computed once per sigma and shared by the
    groups; the pointwise group kernels read the band's filterings while they are in cache.
    """
    for _ in spec.sigmas:
        filtered_rows, index, filterings = next(filtered)
        if filtered_rows != rows:
            raise AssertionError(f"filterings of rows {filtered_rows!r} for the band of rows {rows!r}")
        for name in spec.texture_groups:
            group = FEATURE_REGISTRY[name]
            outputs = group.kernel(*(filterings[gaussian][:, cols] for gaussian in group.filters))
            first = _column_slice(spec, name).start + index * len(outputs)  # a group's columns are sigma-major
            for offset, values in enumerate(outputs):
                band[..., first + offset] = values


def _column_slice(spec: FeatureSpec, name: str) -> slice:
    """Where group ``name``'s columns lie among ``spec.columns``."""
    groups = spec.column_groups
    first = groups.index(name)
    return slice(first, first + groups.count(name))


def build_features(image: da.Array, spec: FeatureSpec, *, scale: tuple[float, float] = (1.0, 1.0)) -> da.Array:
    """Lazily compute features chunk by chunk, with the halo texture features need.

    Parameters
    ----------
    image : dask.array.Array
        Shape (Y, X, C), channels in one chunk.
    spec : FeatureSpec
        Features to compute; must match the image's channels.
    scale : (float, float)
        How many full-resolution pixels one pixel of ``image`` spans, (rows, columns): sigmas are
        divided by it.

    Returns
    -------
    dask.array.Array
        Shape (Y, X, F), float32, the same (Y, X) chunks as ``image``; computes nothing. With a halo,
        chunks are first overlapped by ``spec.halo(scale)`` pixels (none added at the image edges,
        chunks smaller than the halo merged with a neighbour), so every pixel's features equal those
        of :func:`compute_features` on the whole image.
    """
    return map_featurised(image, spec, compute_features, scale=scale, columns=len(spec.columns), dtype=np.float32)


class ChunkFunction(Protocol):
    """What :func:`map_featurised` applies: :func:`compute_features`' signature, any (h, w, k) result."""

    def __call__(
        self,
        chunk: np.ndarray,
        spec: FeatureSpec,
        *,
        halo: tuple[tuple[int, int], tuple[int, int]],
        scale: tuple[float, float],
        origin: tuple[int, int],
        image_shape: tuple[int, int],
    ) -> np.ndarray: ...


def map_featurised(
    image: da.Array,
    spec: FeatureSpec,
    func: ChunkFunction,
    *,
    scale: tuple[float, float],
    columns: int,
    dtype: Any,
) -> da.Array:
    """Lazily apply ``func``, a function of a chunk's features such as :func:`compute_features`, to every
    chunk of ``image`` with the halo ``spec``'s features need (see :func:`build_features`).

    Parameters
    ----------
    image : dask.array.Array
        Shape (Y, X, C), channels in one chunk.
    spec : FeatureSpec
        Passed to ``func``; its halo is given to every chunk.
    func : ChunkFunction
        Called as :func:`compute_features` is, returns (h, w, ``columns``) of ``dtype`` for the region
        without the halo.
    scale : (float, float)
        Full-resolution pixels per pixel of ``image``, (rows, columns).
    columns : int
        The length of ``func``'s last axis.
    dtype : numpy dtype
        Of ``func``'s result.

    Returns
    -------
    dask.array.Array
        Shape (Y, X, columns), the same (Y, X) chunks as ``image``; computes nothing.
    """
    import dask.array as da

    halo = spec.halo(scale)
    work = image
    if any(halo):
        work = image.rechunk(
            (
                _merge_small_chunks(image.chunks[0], halo[0]),
                _merge_small_chunks(image.chunks[1], halo[1]),
                image.chunks[2],
            )
        )
        # an axis left in one chunk (an image thinner than the halo) has no neighbours to overlap
        depth = {axis: halo[axis] if len(work.chunks[axis]) > 1 else 0 for axis in (0, 1)}
        padded = da.overlap.overlap(work, depth={**depth, 2: 0}, boundary="none")
    else:
        padded = work
    result = padded.map_blocks(
        _apply_to_block,
        func,
        spec,
        halo=halo,
        scale=scale,
        chunks_yx=work.chunks[:2],
        image_shape=(int(image.shape[0]), int(image.shape[1])),
        chunks=(work.chunks[0], work.chunks[1], (columns,)),
        dtype=dtype,
        meta=np.empty((0, 0, 0), dtype=dtype),
    )
    if result.chunks[:2] != image.chunks[:2]:
        result = result.rechunk((image.chunks[0], image.chunks[1], (columns,)))
    return result


def _apply_to_block(
    block: np.ndarray,
    func: ChunkFunction,
    spec: FeatureSpec,
    *,
    halo: tuple[int, int],
    scale: tuple[float, float],
    chunks_yx: tuple[tuple[int, ...], tuple[int, ...]],
    image_shape: tuple[int, int],
    block_id: tuple[int, ...],
) -> np.ndarray:
    """``func`` of block ``block_id`` of the overlapped image (no overlap at the image edges)."""
    sides = []
    origin = []
    for axis in (0, 1):
        index, sizes = block_id[axis], chunks_yx[axis]
        sides.append((halo[axis] if index > 0 else 0, halo[axis] if index < len(sizes) - 1 else 0))
        origin.append(int(sum(sizes[:index])))
    expected = tuple(chunks_yx[axis][block_id[axis]] + sum(sides[axis]) for axis in (0, 1))
    if block.shape[:2] != expected:
        raise AssertionError(f"block {block_id!r} has shape {block.shape!r}; expected {expected!r} with halo {sides!r}")
    return func(
        block,
        spec,
        halo=(sides[0], sides[1]),
        scale=scale,
        origin=(origin[0], origin[1]),
        image_shape=image_shape,
    )


def _merge_small_chunks(chunks: tuple[int, ...], minimum: int) -> tuple[int, ...]:
    """Merge chunks smaller than ``minimum`` into a neighbour (dask's overlap needs depth <= chunk)."""
    merged: list[int] = []
    for size in chunks:
        if merged and (size < minimum or merged[-1] < minimum):
            merged[-1] += size
        else:
            merged.append(size)
    return tuple(merged)
