"""The fitted segmentation model: feature spec, standardisation, ordered centroids.

Fitting standardises an in-memory sample and runs dask-ml's k-means|| KMeans on it, working
around dask-ml's known traps (first-row bias of k-means||, absolute ``tol``, unsquared
``inertia_``, integer centres) and its sensitivity to outliers: the sample is winsorised per
column at the 0.1 and 99.9 percentiles before standardising and clustering, so a few extreme
pixels (e.g. stain densities of saturated or zero-valued pixels, a near-constant feature with
rare spikes) cannot capture a cluster. Centroids are stored in feature units, sorted so that label
1 is the darkest cluster (ascending mean of the centroid's features, ties broken by the
remaining coordinates in column order).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np

from pixseg.errors import ParameterError
from pixseg.features import FeatureSpec
from pixseg.options import FIT_RESTARTS, MAX_CLUSTERS

#: Rows per chunk of the sample handed to dask-ml: fixed, so the fit does not depend on
#: the machine's core count (dask-ml otherwise splits numpy input by ``cpu_count()``).
_FIT_CHUNK_ROWS = 100_000
#: Spacing of the seeds of a fit's k-means|| restarts.
_RESTART_STRIDE = 0x9E3779B9
#: Convergence threshold on the squared shift of the standardised centres. dask-ml's ``tol`` is
#: absolute; on standardised features (unit variance) 1e-4 is scikit-learn's default relative tol.
_FIT_TOL = 1e-4
#: Percentiles each column of the sample is clipped to before standardising and clustering.
WINSOR_PERCENTILES = (0.1, 99.9)


@dataclass(frozen=True)
class SegmentationModel:
    """A fitted model.

    Attributes
    ----------
    feature_spec : FeatureSpec
        The features the model was fitted on.
    centroids : numpy.ndarray
        Shape (K, F), float64, in feature units; row ``i`` is label ``i + 1``.
    feature_mean, feature_std : numpy.ndarray
        Shape (F,), float64: the standardisation fitted on the sample.
    seed : int
        The seed of the fit.
    sample_size : int
        Vectors the model was fitted on.
    sample_inertia : float
        Sum of squared standardised distances of the sample to its nearest centroid.
    n_iter : int
        Lloyd iterations dask-ml ran.
    """

    feature_spec: FeatureSpec
    centroids: np.ndarray
    feature_mean: np.ndarray
    feature_std: np.ndarray
    seed: int
    sample_size: int
    sample_inertia: float
    n_iter: int

    @property
    def n_clusters(self) -> int:
        """K, the number of labels."""
        return int(self.centroids.shape[0])

    @property
    def label_dtype(self) -> np.dtype:
        """uint8 for K <= 255, uint16 above."""
        return np.dtype(np.uint8 if self.n_clusters <= 255 else np.uint16)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description (floats round-trip exactly)."""
        return {
            "features": self.feature_spec.to_dict(),
            "feature_columns": list(self.feature_spec.columns),
            "centroids": self.centroids.tolist(),
            "feature_mean": self.feature_mean.tolist(),
            "feature_std": self.feature_std.tolist(),
            "seed": self.seed,
            "sample_size": self.sample_size,
            "sample_inertia": self.sample_inertia,
            "n_iter": self.n_iter,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentationModel:
        """Inverse of :meth:`to_dict`; raises ``KeyError``/``TypeError``/``ValueError`` on malformed data."""
        spec = FeatureSpec.from_dict(data["features"])
        centroids = np.asarray(data["centroids"], dtype=np.float64)
        mean = np.asarray(data["feature_mean"], dtype=np.float64)
        std = np.asarray(data["feature_std"], dtype=np.float64)
        n_columns = len(spec.columns)
        if centroids.ndim != 2 or centroids.shape[1] != n_columns or not 2 <= centroids.shape[0] <= MAX_CLUSTERS:
            raise ValueError(f"centroids of shape {centroids.shape!r} do not match {n_columns} feature columns")
        if mean.shape != (n_columns,) or std.shape != (n_columns,) or not np.all(std > 0):
            raise ValueError("feature_mean/feature_std do not match the feature columns")
        return cls(
            feature_spec=spec,
            centroids=centroids,
            feature_mean=mean,
            feature_std=std,
            seed=int(data["seed"]),
            sample_size=int(data["sample_size"]),
            sample_inertia=float(data["sample_inertia"]),
            n_iter=int(data["n_iter"]),
        )


def preload_fitting() -> None:
    """Start importing dask-ml in a background thread (it imports scikit-learn, scipy.stats and
    pandas), for callers whose process idles while workers sample.

    :func:`fit_model`'s own import then finds it done, or waits for it. Under the threaded
    scheduler the import would contend with the sampling threads for the GIL (no gain, see
    docs/performance.md), so the runner calls this only when a distributed scheduler does the sampling.
    """
    if "dask_ml.cluster" not in sys.modules:
        threading.Thread(target=_import_dask_ml, name="pixseg-import-dask-ml", daemon=True).start()


def _import_dask_ml() -> None:
    with contextlib.suppress(Exception):  # fit_model's own import reports any failure
        importlib.import_module("dask_ml.cluster")


def fit_model(
    sample: np.ndarray, spec: FeatureSpec, *, n_clusters: int, seed: int, restarts: int = FIT_RESTARTS
) -> SegmentationModel:
    """Fit k-means on an in-memory sample of feature vectors.

    Each column is clipped to its ``WINSOR_PERCENTILES``, centred and scaled (see
    :func:`feature_spread`): the channels together, as they share units, so for channels alone
    the fit minimises the same inertia as k-means on the raw pixels; every derived column on
    its own, so each stain, colour coordinate or texture measure weighs alike. dask-ml's
    k-means|| runs ``restarts`` times with seeds derived from ``seed`` (restart 0 uses ``seed``);
    the fit with the lowest sample inertia is kept (a single init sometimes lands in a poor local
    optimum: docs/performance.md shows how often, and what each restart costs).

    Parameters
    ----------
    sample : numpy.ndarray
        Shape (n, F), float; rows in a deterministic order (they are shuffled with ``seed``). Not modified.
    spec : FeatureSpec
        The features the columns hold.
    n_clusters : int
        K, 2 <= K <= the number of distinct rows of ``sample``.
    seed : int
        Seeds the shuffles and dask-ml's ``random_state``.
    restarts : int
        k-means|| runs; the lowest sample inertia wins.

    Returns
    -------
    SegmentationModel
        Centroids ordered by ascending brightness. Computes on the threaded scheduler
        (the sample is in memory), whatever scheduler is active.

    Raises
    ------
    ParameterError
        If ``n_clusters`` is out of range for the sample.
    """
    if not 2 <= n_clusters <= MAX_CLUSTERS:
        raise ParameterError(f"--clusters must be between 2 and {MAX_CLUSTERS}, got {n_clusters!r}")
    vectors = np.asarray(sample, dtype=np.float64)
    distinct = count_distinct_rows(vectors, stop_at=n_clusters)
    if distinct < n_clusters:
        raise ParameterError(
            f"--clusters {n_clusters} is more than the {distinct} distinct feature vector(s) in the sample "
            f"of {len(vectors)} pixels; lower --clusters"
        )
    low, high = np.percentile(vectors, WINSOR_PERCENTILES, axis=0)
    clipped = np.clip(vectors, low, high)
    mean = clipped.mean(axis=0)
    std = feature_spread(clipped.var(axis=0), spec.column_groups)
    standardised = (vectors - mean) / std
    scaled = (clipped - mean) / std
    fits = [_fit_kmeans(scaled, n_clusters, seed=seed, restart=i) for i in range(restarts)]
    inertias = [squared_inertia(standardised, centres) for centres, _ in fits]
    best = int(np.argmin(inertias))
    centres, n_iter = fits[best]
    centroids = order_centroids(centres * std + mean)
    return SegmentationModel(
        feature_spec=spec,
        centroids=centroids,
        feature_mean=mean,
        feature_std=std,
        seed=seed,
        sample_size=len(vectors),
        sample_inertia=inertias[best],  # the order of the centroids does not change it
        n_iter=n_iter,
    )


def feature_spread(variances: np.ndarray, groups: tuple[str, ...]) -> np.ndarray:
    """The divisor of each feature column: the root mean variance of all ``channels`` columns for
    those (the input's channels share units), each other column's own standard deviation (derived
    features: stain densities, colour coordinates, texture, each weighted alike); 1 where it is 0.

    Returns
    -------
    numpy.ndarray
        Shape (F,), float64, > 0.
    """
    spread = np.sqrt(np.asarray(variances, dtype=np.float64))
    channels = np.asarray(groups) == "channels"
    if channels.any():
        spread[channels] = np.sqrt(np.mean(variances[channels]))
    spread[spread == 0] = 1.0
    return spread


def _fit_kmeans(scaled: np.ndarray, n_clusters: int, *, seed: int, restart: int) -> tuple[np.ndarray, int]:
    """dask-ml k-means|| on ``scaled`` rows; returns (centres, iterations). Restart 0 uses ``seed`` itself."""
    from dask_ml.cluster import KMeans

    random_state = (seed + restart * _RESTART_STRIDE) % 2**32
    # dask-ml's k-means|| always takes row 0 as its first candidate: shuffle first
    shuffled = scaled[np.random.default_rng([seed, restart]).permutation(len(scaled))]
    estimator = KMeans(
        n_clusters=n_clusters,
        init="k-means||",
        random_state=random_state,
        tol=_FIT_TOL,
        max_iter=300,
    )
    with dask.config.set(scheduler="threads"):
        estimator.fit(da.from_array(shuffled, chunks=(_FIT_CHUNK_ROWS, shuffled.shape[1])))
    return np.asarray(estimator.cluster_centers_, dtype=np.float64), int(estimator.n_iter_)


def count_distinct_rows(vectors: np.ndarray, *, stop_at: int) -> int:
    """Number of distinct rows of ``vectors``, exact when below ``stop_at`` (cheap otherwise)."""
    head = vectors[: max(stop_at * 1000, 10_000)]
    distinct = len(np.unique(head, axis=0))
    if distinct >= stop_at:
        return distinct
    return len(np.unique(vectors, axis=0))


def order_centroids(centroids: np.ndarray) -> np.ndarray:
    """Sort centroids by ascending mean over features, ties by the coordinates in column order.

    Parameters
    ----------
    centroids : numpy.ndarray
        Shape (K, F).

    Returns
    -------
    numpy.ndarray
        The same rows, reordered; row ``i`` becomes label ``i + 1``.
    """
    keys = [centroids[:, j] for j in reversed(range(centroids.shape[1]))]
    keys.append(centroids.mean(axis=1))
    return centroids[np.lexsort(keys)]


def squared_inertia(vectors: np.ndarray, centroids: np.ndarray) -> float:
    """Sum over ``vectors`` (n, F) of the squared distance to the nearest of ``centroids`` (K, F)."""
    total = 0.0
    rows = max(1, 2**22 // centroids.size)  # bounds the (rows, K, F) temporary to 32 MiB
    for start in range(0, len(vectors), rows):
        block = vectors[start : start + rows]
        distances = ((block[:, np.newaxis, :] - centroids[np.newaxis, :, :]) ** 2).sum(axis=-1)
        total += float(distances.min(axis=1).sum())
    return total
