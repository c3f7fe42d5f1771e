"""Per-chunk nearest-centroid labels, and the lazy graph that applies them to a feature image.

The kernel is a numba loop over pixels: no pixels x K x F temporary, NaN-aware, no thread
pool of its own (dask's threads run chunks in parallel), unlike scikit-learn's ``KMeans.predict``
whose OpenMP pool, fixed at fit time, oversubscribes under dask threads (throughput of each:
docs/performance.md). Distances are standardised ones, computed in float32 as
``sum_f w_f (x_f - c_f)^2`` with ``w_f = 1 / std_f^2``; ties go to the lower label.

The label pass can also label each chunk straight from its pixels (:func:`build_chunk_labels`):
its features are made band by band and each band labelled at once, so no chunk-sized feature
array is held; the labels are the same.

Colour tables: when every feature is a function of one pixel's colour (no texture, no
coordinates) and the input has at most three 8-bit colour channels, a pixel's label depends
only on its colour. The labels of all ``256**channels`` colours are then computed once, with
the same feature and kernel code, into a table (16 MiB for RGB), and a chunk is labelled by
one table lookup per pixel: no float features, no distances. The table is used when the image
has at least ``TABLE_PIXELS_PER_ENTRY`` pixels per entry, where building it pays; the labels
are those of the kernel path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import dask
import dask.array as da
import numba
import numpy as np

from pixseg.features import FeatureSpec, compute_features, feature_bands, map_featurised
from pixseg.model import SegmentationModel

#: Use a colour table when the image has at least this many pixels per table entry.
TABLE_PIXELS_PER_ENTRY = 4
#: Colours featurised and labelled per step while building a table.
_TABLE_STEP = 2**20


#: Pixels whose distances :func:`_nearest_labels` computes at once (vectorised across them).
_PIXEL_BLOCK = 256


# fast-math without "nnan"/"ninf": the NaN test that marks invalid pixels must survive
@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "arcp", "nsz"})
def _nearest_labels(
    pixels: np.ndarray, centroids: np.ndarray, weights: np.ndarray, labels: np.ndarray
) -> None:  # pragma: no cover - compiled
    # a block of pixels is copied feature-major, so that each distance sum runs across pixels in
    # SIMD; every pixel's sum still adds its features in order
    n_clusters, n_features = centroids.shape
    block = np.empty((n_features, _PIXEL_BLOCK), dtype=np.float32)
    distance = np.empty(_PIXEL_BLOCK, dtype=np.float32)
    best = np.empty(_PIXEL_BLOCK, dtype=np.float32)
    best_k = np.empty(_PIXEL_BLOCK, dtype=np.int64)
    for start in range(0, pixels.shape[0], _PIXEL_BLOCK):
        size = min(_PIXEL_BLOCK, pixels.shape[0] - start)
        for p in range(size):
            for f in range(n_features):
                block[f, p] = pixels[start + p, f]
        best[:] = np.inf
        best_k[:] = 0
        for k in range(n_clusters):
            distance[:] = 0.0
            for f in range(n_features):
                centre, weight, values = centroids[k, f], weights[f], block[f]
                for p in range(_PIXEL_BLOCK):
                    diff = values[p] - centre
                    distance[p] += weight * diff * diff
            for p in range(_PIXEL_BLOCK):
                if distance[p] < best[p]:  # ties go to the lower label
                    best[p] = distance[p]
                    best_k[p] = k
        for p in range(size):
            labels[start + p] = 0 if np.isnan(block[0, p]) else best_k[p] + 1


def predict_chunk(
    features: np.ndarray, centroids: np.ndarray, weights: np.ndarray, label_dtype: np.dtype
) -> np.ndarray:
    """Label every pixel of a chunk with its nearest centroid.

    Parameters
    ----------
    features : numpy.ndarray
        Shape (h, w, F) (or any (..., F): a (d, h, w, F) block of a volume), float32; NaN in
        column 0 marks an invalid pixel.
    centroids : numpy.ndarray
        Shape (K, F), float32, in feature units, row ``i`` for label ``i + 1``.
    weights : numpy.ndarray
        Shape (F,), float32: per-feature weight ``1 / std**2`` of the standardisation.
    label_dtype : numpy.dtype
        uint8 or uint16.

    Returns
    -------
    numpy.ndarray
        Shape ``features.shape[:-1]``, ``label_dtype``: 1..K, 0 for invalid pixels.
    """
    pixels = np.ascontiguousarray(features, dtype=np.float32).reshape(-1, features.shape[-1])
    labels = np.empty(pixels.shape[0], dtype=label_dtype)
    _nearest_labels(pixels, centroids, weights, labels)
    return labels.reshape(features.shape[:-1])


def label_chunk(
    chunk: np.ndarray,
    spec: FeatureSpec,
    *,
    model: SegmentationModel,
    halo: tuple[tuple[int, int], tuple[int, int]],
    scale: tuple[float, float],
    origin: tuple[int, int],
    image_shape: tuple[int, int],
) -> np.ndarray:
    """:func:`predict_chunk` of :func:`pixseg.features.compute_features`, band by band.

    Each band of features (:func:`pixseg.features.feature_bands`) is labelled while it is in the
    processor's cache, so no array of the chunk's features is made: about 45 MB fewer per
    1024^2 chunk with 11 features, and no pass that writes and reads them back. The labels
    equal :func:`predict_chunk`'s of the chunk's features.

    Parameters
    ----------
    chunk, spec, halo, scale, origin, image_shape
        As for :func:`pixseg.features.compute_features`; ``spec`` is ``model.feature_spec``.
    model : SegmentationModel
        The fitted model.

    Returns
    -------
    numpy.ndarray
        Shape (h, w, 1) for the region without the halo, ``model.label_dtype``: 1..K, 0 for
        invalid pixels.
    """
    centroids, weights = _kernel_arguments(model)
    bands = feature_bands(chunk, spec, halo=halo, scale=scale, origin=origin, image_shape=image_shape)
    labels = np.empty((chunk.shape[0] - sum(halo[0]), chunk.shape[1] - sum(halo[1]), 1), dtype=model.label_dtype)
    for rows, band in bands:
        labels[rows, :, 0] = predict_chunk(band, centroids, weights, model.label_dtype)
    return labels


def build_chunk_labels(
    image: da.Array, model: SegmentationModel, *, scale: tuple[float, float] = (1.0, 1.0)
) -> da.Array:
    """Lazily label an image from its pixels, each chunk's features made and used band by band.

    The same labels as ``build_labels(build_features(image, spec, scale=scale), model)`` (see
    :func:`label_chunk`), with one task per chunk that holds no chunk-sized feature array.

    Parameters
    ----------
    image : dask.array.Array
        Shape (Y, X, C), C in one chunk, the layout ``model.feature_spec`` describes.
    model : SegmentationModel
        The fitted model.
    scale : (float, float)
        Full-resolution pixels per pixel of ``image``, (rows, columns).

    Returns
    -------
    dask.array.Array
        Shape (Y, X), ``model.label_dtype``, the same (Y, X) chunks; computes nothing. Masks are
        applied by the caller (:func:`pixseg.mask_apply.mask_labels`).
    """
    labels = map_featurised(
        image,
        model.feature_spec,
        functools.partial(label_chunk, model=model),
        scale=scale,
        columns=1,
        dtype=model.label_dtype,
    )
    return labels[..., 0]


def _kernel_arguments(model: SegmentationModel) -> tuple[np.ndarray, np.ndarray]:
    centroids = np.ascontiguousarray(model.centroids, dtype=np.float32)
    weights = (1.0 / model.feature_std**2).astype(np.float32)
    return centroids, weights


def table_applies(model: SegmentationModel, n_pixels: int) -> bool:
    """Whether labelling ``n_pixels`` pixels through a colour table is exact and pays.

    Exact when every feature is a function of the pixel's own colour (no texture, no
    coordinates) and the input has 8-bit samples and at most three colour channels; it pays when
    there are at least ``TABLE_PIXELS_PER_ENTRY`` pixels per table entry.
    """
    spec = model.feature_spec
    pointwise = spec.pointwise
    if not pointwise or np.dtype(spec.dtype) != np.uint8 or spec.n_channels > 3:
        return False
    return n_pixels >= TABLE_PIXELS_PER_ENTRY * 256**spec.n_channels


def colour_table_part(model: SegmentationModel, start: int, stop: int) -> np.ndarray:
    """Entries ``start:stop`` of the colour table: the label of every colour of an 8-bit input.

    Entry ``sum_c v_c * 256**(n - 1 - c)`` holds the label of the colour (v_0, ..., v_{n-1}),
    computed by :func:`pixseg.features.compute_features` and the nearest-centroid kernel, as
    for a pixel of that colour in an image (alpha, when the model has it, taken as opaque).

    Returns
    -------
    numpy.ndarray
        Shape (stop - start,), ``model.label_dtype``.
    """
    spec = model.feature_spec
    index = np.arange(start, stop, dtype=np.int64)
    colours = np.full((len(index), 1, spec.n_channels + int(spec.has_alpha)), 255, dtype=np.uint8)
    for channel in range(spec.n_channels):
        colours[:, 0, channel] = (index >> (8 * (spec.n_channels - 1 - channel))) & 255
    centroids, weights = _kernel_arguments(model)
    return predict_chunk(compute_features(colours, spec), centroids, weights, model.label_dtype)[:, 0]


@numba.njit(nogil=True, cache=True)
def _lookup(
    pixels: np.ndarray, table: np.ndarray, n_colour: int, alpha: int, labels: np.ndarray
) -> None:  # pragma: no cover
    height, width, _ = pixels.shape
    for r in range(height):
        for c in range(width):
            if alpha >= 0 and pixels[r, c, alpha] == 0:
                labels[r, c] = 0
                continue
            index = 0
            for channel in range(n_colour):
                index = index * 256 + pixels[r, c, channel]
            labels[r, c] = table[index]


def lookup_labels(pixels: np.ndarray, table: np.ndarray, *, n_colour: int, has_alpha: bool) -> np.ndarray:
    """Label a chunk of 8-bit pixels through a colour table.

    Parameters
    ----------
    pixels : numpy.ndarray
        Shape (h, w, C), uint8; C = ``n_colour`` (+ 1 for a trailing alpha channel).
    table : numpy.ndarray
        Shape (256**n_colour,), the labels of every colour (see :func:`colour_table_part`).
    n_colour : int
        Colour channels (at most 3).
    has_alpha : bool
        Whether the last channel is alpha (alpha == 0 is labelled 0).

    Returns
    -------
    numpy.ndarray
        Shape (h, w), ``table.dtype``.
    """
    labels = np.empty(pixels.shape[:2], dtype=table.dtype)
    _lookup(np.ascontiguousarray(pixels), table, n_colour, pixels.shape[2] - 1 if has_alpha else -1, labels)
    return labels


def build_table_labels(pixels: da.Array, model: SegmentationModel) -> da.Array:
    """Lazily label an 8-bit image through a colour table (see :func:`table_applies`).

    Parameters
    ----------
    pixels : dask.array.Array
        Shape (Y, X, C), uint8, C in one chunk, the layout ``model.feature_spec`` describes.
    model : SegmentationModel
        The fitted model.

    Returns
    -------
    dask.array.Array
        Shape (Y, X), ``model.label_dtype``, the same (Y, X) chunks; computes nothing. The table
        is built by a few tasks of ``_TABLE_STEP`` colours and enters the graph as one key, shared
        by every chunk's lookup. Masks are applied by the caller.
    """
    spec = model.feature_spec
    n_entries = 256**spec.n_channels
    part = dask.delayed(colour_table_part, pure=True)
    parts = [part(model, start, min(start + _TABLE_STEP, n_entries)) for start in range(0, n_entries, _TABLE_STEP)]
    table = dask.delayed(np.concatenate, pure=True)(parts)
    return map_pixels(
        pixels, lookup_labels, table, n_colour=spec.n_channels, has_alpha=spec.has_alpha, dtype=model.label_dtype
    )


def build_labels(features: da.Array, model: SegmentationModel) -> da.Array:
    """Lazily label a feature image.

    Parameters
    ----------
    features : dask.array.Array
        Shape (Y, X, F) (or (Z, Y, X, F)), float32, F in one chunk, columns as
        ``model.feature_spec.columns``.
    model : SegmentationModel
        The fitted model.

    Returns
    -------
    dask.array.Array
        Shape (Y, X) (or (Z, Y, X)), ``model.label_dtype``, the same chunks; computes nothing.
    """
    centroids, weights = _kernel_arguments(model)
    return map_pixels(features, predict_chunk, centroids, weights, model.label_dtype, dtype=model.label_dtype)


def map_pixels(values: da.Array, func: Callable[..., np.ndarray], *args: Any, dtype: Any, **kwargs: Any) -> da.Array:
    """Lazily apply ``func(chunk, *args, **kwargs)``, (..., C) -> (...), to every chunk of ``values``.

    ``map_blocks(drop_axis=2)`` would hand each task a copy of its chunk: dask concatenates the
    dropped axis' blocks, even a single one, into a new array (a measurable share of the label
    pass: docs/performance.md). Here the channel axis is kept, with
    one output column, and sliced away.

    Parameters
    ----------
    values : dask.array.Array
        Shape (Y, X, C) (or (Z, Y, X, C)), C in one chunk.
    func : callable
        Maps one chunk and ``args`` (dask collections among them are computed first) to its values
        without the last axis.
    dtype : numpy dtype
        Of ``func``'s result.

    Returns
    -------
    dask.array.Array
        ``values``' shape and chunks without the last axis; computes nothing.
    """
    columns = values.map_blocks(
        _as_column,  # type: ignore[arg-type]  # dask's stubs type map_blocks' first argument as an Array
        func,
        *args,
        chunks=(*values.chunks[:-1], (1,)),
        dtype=dtype,
        meta=np.empty((0,) * values.ndim, dtype=dtype),
        **kwargs,
    )
    return columns[..., 0]


def _as_column(chunk: np.ndarray, func: Callable[..., np.ndarray], *args: Any, **kwargs: Any) -> np.ndarray:
    return func(chunk, *args, **kwargs)[..., np.newaxis]
