"""``PixelKMeans``: pixseg's fit and labels as a scikit-learn estimator over arrays in memory or dask.

The estimator runs exactly what ``pixseg segment`` runs on a file: the same features, the same
deterministic stratified sample, the same dask-ml fit and the same per-chunk labels, so for one
image and one set of options it gives the CLI's labels. ``predict`` stays lazy: it returns a dask
array of labels (1..K, 0 where masked or invalid) that computes chunk by chunk.
"""

from __future__ import annotations

import os
from typing import Any

import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils.validation import check_is_fitted

from pixseg.errors import InputError
from pixseg.fitting import sample_and_fit
from pixseg.graphs import image_labels, model_mask
from pixseg.io.model_file import load_model, save_model
from pixseg.io.readers import DEFAULT_CHUNK, Image, is_pixel_dtype
from pixseg.model import SegmentationModel
from pixseg.options import DEFAULT_SIGMAS, FIT_RESTARTS, FitOptions, ReadOptions


class PixelKMeans(ClusterMixin, BaseEstimator):  # type: ignore[misc]
    """Pixel clustering of one image, out of core: a stratified sample fitted by dask-ml's KMeans.

    Parameters
    ----------
    n_clusters : int
        K, the number of clusters (labels 1..K).
    features : sequence of str or str
        Feature groups (``"channels"``, ``"lab"``, ``"hed"``, ``"texture"``...; see ``pixseg segment --help``).
    seed : int
        Seeds the sample and the fit: the same seed gives the same labels on any scheduler.
    sample_size : int
        Pixels sampled for the fit.
    restarts : int
        k-means fits from different k-means++ seeds; the lowest sample inertia wins.
    sigmas : sequence of float
        Texture scales in pixels.
    mask : str
        ``"none"``, ``"auto"`` (tissue versus glass on RGB brightfield, or versus a dark
        background on fluorescence) or a mask image path.
    normalise : str
        ``"auto"``, ``"dtype"`` or ``"robust"`` channel scaling.
    chunk : int, optional
        Processing chunk edge for numpy input and for dask input whose chunks are not square
        tiles (default: about 1024; dask input keeps its own chunks otherwise).
    volume : bool
        Images are volumes, (Z, Y, X) or (Z, Y, X, C), segmented by voxel-wise features (see
        :mod:`pixseg.volumes`); numpy input gets cubic chunks of ``chunk`` (default 128).
    window : (float, float), optional
        Volumes: clip intensities to (low, high) and scale that range (a CT window).

    Attributes
    ----------
    model_ : SegmentationModel
        The fitted model (what :meth:`save` writes).
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        Centroids in feature units, ordered as the labels (label ``i`` is row ``i - 1``).
    feature_names_out_ : tuple of str
        The feature columns.
    n_iter_ : int
        Lloyd iterations of the winning k-means run.
    n_features_in_ : int
        Channels of the image fitted.

    Notes
    -----
    Images are arrays of shape (Y, X) or (Y, X, C): numpy, dask or an xarray ``DataArray`` (its
    ``.data``). Validation happens in :meth:`fit`, never in ``__init__``.
    """

    def __init__(
        self,
        n_clusters: int = 4,
        *,
        features: Any = ("channels",),
        seed: int = 0,
        sample_size: int = 200_000,
        restarts: int = FIT_RESTARTS,
        sigmas: Any = DEFAULT_SIGMAS,
        mask: str = "none",
        normalise: str = "auto",
        chunk: int | None = None,
        volume: bool = False,
        window: Any = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.features = features
        self.seed = seed
        self.sample_size = sample_size
        self.restarts = restarts
        self.sigmas = sigmas
        self.mask = mask
        self.normalise = normalise
        self.chunk = chunk
        self.volume = volume
        self.window = window

    def fit(self, image: Any, y: Any = None) -> PixelKMeans:
        """Sample ``image`` and fit the model (computes the sample, not the whole image).

        Parameters
        ----------
        image : array-like
            Shape (Y, X) or (Y, X, C); numpy, dask or xarray.
        y : ignored

        Returns
        -------
        PixelKMeans
            ``self``, fitted.

        Raises
        ------
        PipelineError
            For a bad parameter (:class:`~pixseg.options.OptionError` names it) or image.
        """
        fit = FitOptions(
            clusters=self.n_clusters,
            seed=self.seed,
            features=self.features,
            restarts=self.restarts,
            sample_size=self.sample_size,
            sigmas=self.sigmas,
            mask=self.mask,
            normalise=self.normalise,
            window=self.window,
        )
        if self.volume:
            from pixseg.volumes import check_window, fit_volume, volume_array

            voxels = volume_array(image, chunk=self.chunk)
            self._set_model(fit_volume(voxels, fit, window=check_window(self.window), progress=False))
            return self
        read = ReadOptions(chunk=self.chunk)
        pixels = image_from_array(image, chunk=self.chunk)
        model, _ = sample_and_fit(pixels, fit, read=read, progress=False)
        self._set_model(model)
        return self

    def predict(self, image: Any) -> da.Array:
        """Lazy labels of ``image``: a (Y, X) (volumes: (Z, Y, X)) dask array, 1..K, 0 where masked or invalid.

        Nothing is computed, except the small automatic tissue mask with ``mask="auto"``.

        Raises
        ------
        ModelError
            If ``image`` has other channels or dtype than the image fitted.
        """
        check_is_fitted(self, "model_")
        if self.volume:
            from pixseg.volumes import VoxelFeatures, volume_array, volume_labels

            features = VoxelFeatures(self.model_.feature_spec)  # the window is the spec's
            return volume_labels(volume_array(image, chunk=self.chunk), self.model_, features)
        from pixseg.plan import check_model_fits

        pixels = image_from_array(image, chunk=self.chunk)
        check_model_fits(self.model_.feature_spec, pixels, "the fitted PixelKMeans")
        labels_mask = model_mask(
            pixels, self.model_.feature_spec, mask=None, read=ReadOptions(chunk=self.chunk), progress=False
        )
        return image_labels(pixels, self.model_, labels_mask)

    def fit_predict(self, image: Any, y: Any = None) -> da.Array:
        """:meth:`fit`, then the lazy labels of the same image (see :meth:`predict`)."""
        return self.fit(image).predict(image)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save the fitted model as JSON (the format of ``pixseg segment --save-model``).

        Raises
        ------
        OutputError
            If the file cannot be written.
        """
        check_is_fitted(self, "model_")
        save_model(self.model_, os.fspath(path), provenance={"input": None, "estimator": repr(self)})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PixelKMeans:
        """A fitted estimator from a JSON model file (saved by :meth:`save` or ``pixseg segment --save-model``).

        Parameters not stored in the model (seed, sample size, restarts) keep their defaults.

        Raises
        ------
        ModelError
            If the file is missing or not a pixseg model.
        """
        model = load_model(os.fspath(path))
        spec = model.feature_spec
        estimator = cls(
            n_clusters=model.n_clusters,
            features=tuple(spec.groups),
            sigmas=tuple(spec.sigmas) or DEFAULT_SIGMAS,
            mask=spec.mask if spec.mask in ("none", "auto") else "none",
        )
        estimator._set_model(model)
        return estimator

    def _set_model(self, model: SegmentationModel) -> None:
        self.model_ = model
        self.cluster_centers_ = np.asarray(model.centroids)
        self.feature_names_out_ = tuple(model.feature_spec.columns)
        self.n_iter_ = model.n_iter
        self.n_features_in_ = model.feature_spec.n_channels


def image_from_array(image: Any, *, chunk: int | None = None) -> Image:
    """An in-memory or dask array as an :class:`~pixseg.io.readers.Image` of one level.

    Parameters
    ----------
    image : array-like
        Shape (Y, X) or (Y, X, C): numpy, dask, or an xarray ``DataArray`` (its ``.data``).
    chunk : int, optional
        Square processing chunk edge; by default dask input keeps its chunks and numpy input gets
        chunks of ``DEFAULT_CHUNK``.

    Returns
    -------
    Image
        Computes nothing.

    Raises
    ------
    InputError
        For another number of dimensions, or a dtype that is neither integer nor float.
    """
    data = getattr(image, "data", image) if type(image).__module__.startswith("xarray") else image
    lazy = isinstance(data, da.Array)
    if not lazy:
        data = np.asarray(data)
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise InputError(f"an image array has shape (Y, X) or (Y, X, C), got shape {tuple(data.shape)!r}")
    dtype = np.dtype(data.dtype)
    if not is_pixel_dtype(dtype):
        raise InputError(f"an image array has an integer or float dtype, got {dtype.name!r}")
    height, width, channels = (int(n) for n in data.shape)
    if lazy:
        edge = chunk
        chunks = (edge, edge, channels) if edge else (data.chunks[0], data.chunks[1], channels)
        pixels = data.rechunk(chunks)
        source: Any = _DaskRegions(pixels)
    else:
        edge = chunk or DEFAULT_CHUNK
        pixels = da.from_array(data, chunks=(edge, edge, channels))
        source = data
    return Image(
        path="<array>",
        kind="array",
        data=pixels,
        source=source,
        native_chunks=(int(pixels.chunksize[0]), int(pixels.chunksize[1])),
        level=0,
        level_shapes=((height, width),),
        has_alpha=False,
        pixel_size=None,
    )


class _DaskRegions:
    """A dask array read region by region inside a task, as :class:`~pixseg.sampling.SampleSource` reads.

    Each read computes its region on the synchronous scheduler, within the task that asked.
    """

    def __init__(self, array: da.Array) -> None:
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.array[key].compute(scheduler="sync"))
