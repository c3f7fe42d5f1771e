"""The fit of a :class:`~pixseg.model.SegmentationModel` on an in-memory sample (dask-ml KMeans).

Fitting standardises an in-memory sample, seeds each restart with scikit-learn's public
``kmeans_plusplus`` and runs dask-ml's KMeans (Lloyd iterations) from those centres, as one
chunk on the synchronous scheduler. It works around dask-ml's known traps (its own
``init="k-means++"`` fails with current scikit-learn, its k-means|| costs about 0.7 s a restart
on an in-memory sample, absolute ``tol``, unsquared ``inertia_``, integer centres) and its
sensitivity to outliers: the sample is winsorised per
column at the 0.1 and 99.9 percentiles before standardising and clustering, so a few extreme
pixels (e.g. stain densities of saturated or zero-valued pixels, a near-constant feature with
rare spikes) cannot capture a cluster. Centroids are stored in feature units, sorted so that label
1 is the darkest cluster (ascending mean of the centroid's features, ties broken by the
remaining coordinates in column order).

Rare but distinct values keep their cluster. The rule, in order:

1. Winsorising is skipped when the clipped sample would hold fewer than K distinct rows: clipping
   would then merge a class rarer than 0.1% of the pixels into its neighbour (a two-valued image
   with 0.05% bright pixels would give two identical centroids at K=2), and the sample is
   standardised and clustered unclipped.
2. A fit is *degenerate* when one of its clusters is the nearest of no row of the sample (two
   identical centroids leave one of them empty). Of the ``restarts`` fits, the non-degenerate
   one of lowest sample inertia is kept.
3. If every restart is degenerate, ``RESEED_TRIES`` more runs with fresh seeds are made
   on the unclipped sample, and the best of those is kept.
4. If they are all degenerate too, the fit with the fewest empty clusters (then the lowest
   inertia) is kept, one warning is logged and the model records why in ``degenerate``.

A sample with fewer than K distinct rows (a constant image and K >= 2) is refused before any fit
(:class:`~pixseg.errors.ParameterError`).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import dask.array as da
import numpy as np

from pixseg.errors import ParameterError
from pixseg.features import FeatureSpec
from pixseg.fit_threads import map_fits
from pixseg.kmeans_engine import load_kmeans
from pixseg.model import SegmentationModel
from pixseg.options import FIT_RESTARTS, MAX_CLUSTERS

logger = logging.getLogger(__name__)

#: Spacing of the seeds of a fit's restarts.
_RESTART_STRIDE = 0x9E3779B9
#: Convergence threshold on the squared shift of the standardised centres. dask-ml's ``tol`` is
#: absolute; on standardised features (unit variance) 1e-4 is scikit-learn's default relative tol.
_FIT_TOL = 1e-4
#: Percentiles each column of the sample is clipped to before standardising and clustering.
WINSOR_PERCENTILES = (0.1, 99.9)
#: Further runs, with fresh seeds on the unclipped sample, when every restart is degenerate.
RESEED_TRIES = 3


def preload_fitting() -> None:
    """Start importing dask-ml in a background thread (it imports scikit-learn, scipy.stats and
    pandas), for callers whose process idles while workers sample.

    :func:`fit_model`'s own import then finds it done, or waits for it. Under the threaded
    scheduler the import would contend with the sampling threads for the GIL (no gain, see
    docs/performance.md), so the runner calls this only when a distributed scheduler does the sampling.
    """
    if "dask_ml.cluster" not in sys.modules:
        threading.Thread(target=_load_kmeans_quietly, name="pixseg-import-dask-ml", daemon=True).start()


def _load_kmeans_quietly() -> None:
    with contextlib.suppress(Exception):  # fit_model's own import reports any failure
        load_kmeans()


def fit_model(
    sample: np.ndarray,
    spec: FeatureSpec,
    *,
    n_clusters: int,
    seed: int,
    restarts: int = FIT_RESTARTS,
    workers: int | None = None,
) -> SegmentationModel:
    """Fit k-means on an in-memory sample of feature vectors.

    Each column is clipped to its ``WINSOR_PERCENTILES`` (unless that leaves fewer than
    ``n_clusters`` distinct rows: see the module docstring), centred and scaled (see
    :func:`feature_spread`): the channels together, as they share units, so for channels alone
    the fit minimises the same inertia as k-means on the raw pixels; every derived column on
    its own, so each stain, colour coordinate or texture measure weighs alike. dask-ml's
    KMeans runs ``restarts`` times from k-means++ centres (:func:`seed_centres`) with seeds
    derived from ``seed`` (restart 0 uses ``seed``);
    the non-degenerate fit with the lowest sample inertia is kept (a single init sometimes lands
    in a poor local optimum: docs/performance.md shows how often, and what each restart costs).
    When every restart is degenerate, ``RESEED_TRIES`` more runs are made on the unclipped sample.
    The restarts run side by side (:func:`pixseg.fit_threads.map_fits`); the result is that of
    running them one after the other.

    Parameters
    ----------
    sample : numpy.ndarray
        Shape (n, F), float; rows in a deterministic order. Not modified.
    spec : FeatureSpec
        The features the columns hold.
    n_clusters : int
        K, 2 <= K <= the number of distinct rows of ``sample``.
    seed : int
        Seeds the k-means++ centres of every restart.
    restarts : int
        Fits from different k-means++ centres; the lowest sample inertia wins.
    workers : int, optional
        Most restarts fitted at once (default: the usable cores); does not change the result.

    Returns
    -------
    SegmentationModel
        Centroids ordered by ascending brightness; ``degenerate`` set (and one warning logged)
        when even the re-seeded fits leave a cluster empty. Computes on the synchronous scheduler
        (the sample is in memory, one chunk), whatever scheduler is active.

    Raises
    ------
    ParameterError
        If ``n_clusters`` is out of range for the sample.
    """
    if not 2 <= n_clusters <= MAX_CLUSTERS:
        raise ParameterError(f"--clusters must be between 2 and {MAX_CLUSTERS}, got {n_clusters!r}")
    prepared = prepare_sample(sample, spec, max_clusters=n_clusters)
    return fit_prepared(prepared, n_clusters=n_clusters, seed=seed, restarts=restarts, workers=workers)


@dataclass(frozen=True)
class Scaling:
    """The standardisation of a fit and the rows it applies to.

    Attributes
    ----------
    mean, std : numpy.ndarray
        Shape (F,): the sample is standardised as ``(x - mean) / std``.
    fit_rows : numpy.ndarray
        Shape (n, F): the rows k-means runs on (the winsorised rows, or all rows), standardised.
    vectors : numpy.ndarray
        Shape (n, F): every row of the sample, standardised; fits are judged on these.
    """

    mean: np.ndarray
    std: np.ndarray
    fit_rows: np.ndarray
    vectors: np.ndarray


@dataclass(frozen=True)
class PreparedSample:
    """A sample made ready once for fits at any K up to ``max_clusters`` (see :func:`prepare_sample`).

    Attributes
    ----------
    vectors : numpy.ndarray
        Shape (n, F), float64: the sample.
    spec : FeatureSpec
        The features its columns hold.
    max_clusters : int
        The largest K it may be fitted with.
    distinct, clipped_distinct : int
        Distinct rows of the sample and of its winsorised rows; exact when below ``max_clusters``.
    winsorised : Scaling
        Standardised by the winsorised rows' statistics, fitting on the winsorised rows.
    """

    vectors: np.ndarray
    spec: FeatureSpec
    max_clusters: int
    distinct: int
    clipped_distinct: int
    winsorised: Scaling

    def scaling(self, n_clusters: int) -> Scaling:
        """The standardisation a fit at ``n_clusters`` uses: the winsorised one, unless the winsorised
        rows hold fewer than ``n_clusters`` distinct values (then :meth:`unclipped`)."""
        return self.winsorised if self.clipped_distinct >= n_clusters else self.unclipped()

    def unclipped(self) -> Scaling:
        """Standardised by the whole sample's statistics, fitting on every row (computed on each call)."""
        return _scale(self.vectors, self.vectors, self.spec)


def prepare_sample(sample: np.ndarray, spec: FeatureSpec, *, max_clusters: int) -> PreparedSample:
    """What every fit of ``sample`` at a K up to ``max_clusters`` shares: the float64 rows, their
    distinct counts, the winsorised rows and their standardisation.

    Parameters
    ----------
    sample : numpy.ndarray
        Shape (n, F), float; not modified.
    spec : FeatureSpec
        The features the columns hold.
    max_clusters : int
        The largest K that will be fitted.

    Returns
    -------
    PreparedSample
    """
    vectors = np.asarray(sample, dtype=np.float64)
    low, high = np.percentile(vectors, WINSOR_PERCENTILES, axis=0)
    clipped = np.clip(vectors, low, high)
    return PreparedSample(
        vectors=vectors,
        spec=spec,
        max_clusters=max_clusters,
        distinct=count_distinct_rows(vectors, stop_at=max_clusters),
        clipped_distinct=count_distinct_rows(clipped, stop_at=max_clusters),
        winsorised=_scale(vectors, clipped, spec),
    )


def fit_prepared(
    prepared: PreparedSample,
    *,
    n_clusters: int,
    seed: int,
    restarts: int = FIT_RESTARTS,
    tol: float = _FIT_TOL,
    workers: int | None = None,
) -> SegmentationModel:
    """:func:`fit_model` of a :func:`prepare_sample` result; ``tol``: the convergence threshold on the
    squared shift of the standardised centres.

    Raises
    ------
    ParameterError
        If the sample holds fewer than ``n_clusters`` distinct rows.
    ValueError
        If ``n_clusters`` is above the ``max_clusters`` the sample was prepared for.
    """
    if n_clusters > prepared.max_clusters:
        raise ValueError(f"n_clusters {n_clusters} is above the {prepared.max_clusters} the sample was prepared for")
    if prepared.distinct < n_clusters:
        raise ParameterError(
            f"--clusters {n_clusters} is more than the {prepared.distinct} distinct feature vector(s) in the "
            f"sample of {len(prepared.vectors)} pixels; lower --clusters"
        )
    fit = _best_fit(prepared.scaling(n_clusters), n_clusters, seed, range(restarts), tol=tol, workers=workers)
    if fit.empty:
        reseeds = range(restarts, restarts + RESEED_TRIES)
        fit = _best_fit(prepared.unclipped(), n_clusters, seed, reseeds, tol=tol, workers=workers)
    note = None
    if fit.empty:
        note = (
            f"k-means left {fit.empty} of {n_clusters} clusters without any sampled pixel after "
            f"{restarts + RESEED_TRIES} fits; their labels stay unused"
        )
        logger.warning("degenerate fit: %s; lower --clusters for a sound model", note)
    return SegmentationModel(
        feature_spec=prepared.spec,
        centroids=order_centroids(fit.centres * fit.scaling.std + fit.scaling.mean),
        feature_mean=fit.scaling.mean,
        feature_std=fit.scaling.std,
        seed=seed,
        sample_size=len(prepared.vectors),
        sample_inertia=fit.inertia,  # the order of the centroids does not change it
        n_iter=fit.n_iter,
        degenerate=note,
    )


@dataclass(frozen=True)
class _Fit:
    """One k-means run: standardised centres, the standardisation, and how it fits the sample."""

    centres: np.ndarray
    scaling: Scaling
    n_iter: int
    inertia: float
    empty: int


def _scale(vectors: np.ndarray, clipped: np.ndarray, spec: FeatureSpec) -> Scaling:
    """Standardise ``vectors`` with ``clipped``'s statistics (:func:`feature_spread`); fit on ``clipped``."""
    mean = clipped.mean(axis=0)
    std = feature_spread(clipped.var(axis=0), spec.column_groups)
    standardised = (vectors - mean) / std
    fit_rows = standardised if clipped is vectors else (clipped - mean) / std
    return Scaling(mean=mean, std=std, fit_rows=fit_rows, vectors=standardised)


def _best_fit(
    scaling: Scaling, n_clusters: int, seed: int, restarts: Sequence[int], *, tol: float, workers: int | None
) -> _Fit:
    """Fit ``scaling.fit_rows`` once per restart index (side by side), and keep the fit with the fewest
    empty clusters, then the lowest inertia, both measured on ``scaling.vectors``; ties: the earlier restart."""

    def fit(restart: int) -> _Fit:
        centres, n_iter = _fit_kmeans(scaling.fit_rows, n_clusters, seed=seed, restart=restart, tol=tol)
        inertia, counts = nearest_counts(scaling.vectors, centres)
        return _Fit(centres, scaling, n_iter, inertia, empty=int(np.count_nonzero(counts == 0)))

    return min(map_fits(fit, restarts, workers=workers), key=lambda fit: (fit.empty, fit.inertia))


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


def _fit_kmeans(
    scaled: np.ndarray, n_clusters: int, *, seed: int, restart: int, tol: float = _FIT_TOL
) -> tuple[np.ndarray, int]:
    """dask-ml KMeans on ``scaled`` rows from :func:`seed_centres`; returns (centres, iterations).

    Restart 0 uses ``seed`` itself. The sample is in memory, so it is one chunk, named at random
    (hashing the rows would cost more than a Lloyd iteration), computed on the synchronous
    scheduler that :func:`~pixseg.fit_threads.map_fits` sets: each Lloyd iteration is one numpy
    pass instead of a threaded graph (0.08-0.2 s per restart at 200,000 rows against 0.65-0.85 s
    for k-means||: benchmarks/RESULTS.md, 2026-11-29).
    """
    kmeans_class = load_kmeans()
    random_state = (seed + restart * _RESTART_STRIDE) % 2**32
    estimator = kmeans_class(
        n_clusters=n_clusters,
        init=seed_centres(scaled, n_clusters, random_state=random_state),
        random_state=random_state,
        tol=tol,
        max_iter=300,
    )
    estimator.fit(da.from_array(scaled, chunks=scaled.shape, name=False))
    return np.asarray(estimator.cluster_centers_, dtype=np.float64), int(estimator.n_iter_)


def seed_centres(scaled: np.ndarray, n_clusters: int, *, random_state: int) -> np.ndarray:
    """k-means++ starting centres, through scikit-learn's public :func:`sklearn.cluster.kmeans_plusplus`.

    This is what dask-ml's ``init="k-means++"`` intends; dask-ml 2025.1 calls a private
    scikit-learn function whose signature has changed (``TypeError: _kmeans_plusplus() missing 1
    required positional argument: 'sample_weight'``).

    Parameters
    ----------
    scaled : numpy.ndarray
        Shape (n, F), float64, in memory; not modified.
    n_clusters : int
        K, at most the number of distinct rows.
    random_state : int
        Seeds the choice.

    Returns
    -------
    numpy.ndarray
        Shape (K, F), float64: K rows of ``scaled``.
    """
    from sklearn.cluster import kmeans_plusplus

    centres, _ = kmeans_plusplus(scaled, n_clusters, random_state=random_state)
    return np.asarray(centres, dtype=np.float64)


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
    return nearest_counts(vectors, centroids)[0]


def nearest_counts(vectors: np.ndarray, centroids: np.ndarray) -> tuple[float, np.ndarray]:
    """The squared inertia of ``vectors`` (n, F) and how many of them each of ``centroids`` (K, F) is
    nearest to: shape (K,), int64, a tie going to the lower index (two equal centroids: the second gets 0)."""
    labels, squared = nearest_centres(vectors, centroids)
    return float(squared.sum()), np.bincount(labels, minlength=len(centroids))


def nearest_centres(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The nearest of ``centroids`` (K, F) to each row of ``vectors`` (n, F), a tie going to the lower
    index, and the squared distance to it.

    Squared distances are summed column by column in column order, on contiguous columns of up to
    ``2**22 // K`` rows (a (K, rows) float64 buffer of 32 MiB at most): at 200,000 rows and K = 8,
    2-3x (3 columns) to 9x (11 columns) faster than reducing a (rows, K, F) difference along its short
    last axis.

    Returns
    -------
    labels : numpy.ndarray
        Shape (n,), int64.
    squared : numpy.ndarray
        Shape (n,), float64.
    """
    labels = np.empty(len(vectors), dtype=np.int64)
    squared = np.empty(len(vectors), dtype=np.float64)
    centres = np.asarray(centroids, dtype=np.float64)
    rows = max(1, 2**22 // len(centres))
    for start in range(0, len(vectors), rows):
        columns = np.ascontiguousarray(np.asarray(vectors[start : start + rows], dtype=np.float64).T)
        distances = np.empty((len(centres), columns.shape[1]))
        for distance, centre in zip(distances, centres, strict=True):
            np.square(columns[0] - centre[0], out=distance)
            for column, value in zip(columns[1:], centre[1:], strict=True):
                distance += (column - value) ** 2
        nearest = distances.argmin(axis=0)
        labels[start : start + rows] = nearest
        squared[start : start + rows] = np.take_along_axis(distances, nearest[np.newaxis], axis=0)[0]
    return labels, squared
