"""The fitted segmentation model: feature spec, standardisation, ordered centroids.

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

Model documents (:meth:`SegmentationModel.from_dict`) are checked field by field: shapes,
finiteness, ranges and JSON types, with messages that name the field and show at most a short
excerpt of a bad value.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import reprlib
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np

from pixseg.classes import ClassTable
from pixseg.errors import ParameterError
from pixseg.features import FeatureSpec
from pixseg.options import FIT_RESTARTS, MAX_CLUSTERS

if TYPE_CHECKING:
    from pixseg.choose_k import KChoice

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
#: Longest excerpt of a bad value an error message shows.
_EXCERPT_CHARS = 60
#: Longest ``degenerate`` note a model document may hold.
_MAX_NOTE_CHARS = 1000


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
    degenerate : str or None
        Why the fit is degenerate (a cluster no sampled pixel is nearest to), or None for a sound
        fit; see the module docstring.
    classes : ClassTable or None
        Named and merged classes of the clusters (see :mod:`pixseg.classes`); None: the labels
        are the cluster ids, as a fitted model gives them.
    preset : str or None
        The ``--preset`` the fit options came from (:mod:`pixseg.presets`).
    k_choice : KChoice or None
        How ``--clusters auto`` chose K (:mod:`pixseg.choose_k`); None for a K given.
    """

    feature_spec: FeatureSpec
    centroids: np.ndarray
    feature_mean: np.ndarray
    feature_std: np.ndarray
    seed: int
    sample_size: int
    sample_inertia: float
    n_iter: int
    degenerate: str | None = None
    classes: ClassTable | None = None
    preset: str | None = None
    k_choice: KChoice | None = None

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
            **({"degenerate": self.degenerate} if self.degenerate is not None else {}),
            **({"classes": self.classes.to_dict()} if self.classes is not None else {}),
            **({"preset": self.preset} if self.preset is not None else {}),
            **({"k_choice": self.k_choice.to_dict()} if self.k_choice is not None else {}),
        }

    def reading_alpha(self, has_alpha: bool) -> SegmentationModel:
        """This model for an input with (or without) a trailing alpha channel: the same clusters,
        with alpha == 0 read as "no data" (label 0)."""
        if has_alpha == self.feature_spec.has_alpha:
            return self
        return replace(self, feature_spec=replace(self.feature_spec, has_alpha=has_alpha))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SegmentationModel:
        """Inverse of :meth:`to_dict`, checking every field before it is used.

        ``features`` must be a valid feature spec (:meth:`FeatureSpec.from_dict`); ``centroids``
        a (K, F) list of finite numbers with 2 <= K <= ``MAX_CLUSTERS`` and F the spec's columns
        (``feature_columns``, when present, must name them); ``feature_mean`` and ``feature_std``
        F finite numbers, every std > 0; ``seed`` an integer in [0, 2**63); ``sample_size`` an
        integer >= K; ``n_iter`` an integer >= 0; ``sample_inertia`` a finite number >= 0;
        ``degenerate``, when present, a short string; ``classes``, when present, a class table
        of the K clusters (:meth:`ClassTable.from_dict`).

        Raises
        ------
        ValueError
            Naming the first bad field and showing at most a short excerpt of its value.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"expected a JSON object, got {_excerpt(data)}")
        try:
            spec = FeatureSpec.from_dict(_field(data, "features"))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"field 'features': {err}") from err
        columns = list(spec.columns)
        if "feature_columns" in data and data["feature_columns"] != columns:
            raise ValueError(
                f"field 'feature_columns' is {_excerpt(data['feature_columns'])}; the features give {_excerpt(columns)}"
            )
        centroids = _finite_array(data, "centroids", width=len(columns), matrix=True)
        if not 2 <= len(centroids) <= MAX_CLUSTERS:
            raise ValueError(f"field 'centroids' has {len(centroids)} rows; expected 2 to {MAX_CLUSTERS} clusters")
        mean = _finite_array(data, "feature_mean", width=len(columns))
        std = _finite_array(data, "feature_std", width=len(columns))
        if not np.all(std > 0):
            raise ValueError(f"field 'feature_std' holds {_excerpt(float(std[std <= 0][0]))}; every std must be > 0")
        degenerate = data.get("degenerate")
        if degenerate is not None and (not isinstance(degenerate, str) or len(degenerate) > _MAX_NOTE_CHARS):
            raise ValueError(f"field 'degenerate' must be a note of at most {_MAX_NOTE_CHARS} characters")
        preset = data.get("preset")
        if preset is not None and (not isinstance(preset, str) or len(preset) > _MAX_NOTE_CHARS):
            raise ValueError(f"field 'preset' must be a name of at most {_MAX_NOTE_CHARS} characters")
        k_choice = None
        if data.get("k_choice") is not None:
            from pixseg.choose_k import KChoice  # it imports this module

            try:
                k_choice = KChoice.from_dict(data["k_choice"])
            except ValueError as err:
                raise ValueError(f"field 'k_choice' {err}") from err
        return cls(
            feature_spec=spec,
            centroids=centroids,
            feature_mean=mean,
            feature_std=std,
            seed=_integer(data, "seed", low=0, high=2**63 - 1),
            sample_size=_integer(data, "sample_size", low=len(centroids)),
            sample_inertia=_inertia(data),
            n_iter=_integer(data, "n_iter", low=0),
            degenerate=degenerate,
            preset=preset,
            k_choice=k_choice,
            classes=None
            if data.get("classes") is None
            else ClassTable.from_dict(data["classes"], n_clusters=len(centroids)),
        )


def _excerpt(value: Any) -> str:
    """A repr of ``value`` of at most ``_EXCERPT_CHARS`` characters, cheap however large or deep it is."""
    text = reprlib.repr(value)
    return text if len(text) <= _EXCERPT_CHARS else text[: _EXCERPT_CHARS - 3] + "..."


def _field(data: Mapping[str, Any], name: str) -> Any:
    if name not in data:
        raise ValueError(f"field {name!r} is missing")
    return data[name]


def _is_number(value: Any) -> bool:
    """A JSON number: an int or a float, not a bool."""
    return type(value) in (int, float)


def _finite_array(data: Mapping[str, Any], name: str, *, width: int, matrix: bool = False) -> np.ndarray:
    """Field ``name`` as float64: ``width`` finite numbers, or rows of them when ``matrix``."""
    value = _field(data, name)
    expected = f"a list of lists of {width} numbers" if matrix else f"a list of {width} numbers"
    rows = value if matrix else [value]
    if not isinstance(value, list) or not all(isinstance(row, list) and len(row) == width for row in rows):
        raise ValueError(f"field {name!r} must be {expected}, got {_excerpt(value)}")
    bad = next((item for row in rows for item in row if not _is_number(item)), None)
    if bad is not None:
        raise ValueError(f"field {name!r} holds {_excerpt(bad)}; expected {expected}")
    try:
        array = np.array(rows, dtype=np.float64)
    except OverflowError as err:
        raise ValueError(f"field {name!r} holds a number too large for a float64") from err
    if matrix and len(array) == 0:
        raise ValueError(f"field {name!r} is empty; expected {expected}")
    nonfinite = np.argwhere(~np.isfinite(array))
    if len(nonfinite):
        where = tuple(int(i) for i in nonfinite[0])
        position = where if matrix else where[1:]
        value = float(array[where])
        raise ValueError(f"field {name!r} holds {value!r} at {list(position)}; every value must be finite")
    return array if matrix else array[0]


def _integer(data: Mapping[str, Any], name: str, *, low: int, high: int | None = None) -> int:
    value = _field(data, name)
    if type(value) is not int or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ValueError(f"field {name!r} must be an integer {bounds}, got {_excerpt(value)}")
    return value


def _inertia(data: Mapping[str, Any]) -> float:
    value = _field(data, "sample_inertia")
    if not _is_number(value) or not 0 <= float(value) < float("inf"):
        raise ValueError(f"field 'sample_inertia' must be a finite number >= 0, got {_excerpt(value)}")
    return float(value)


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
    vectors = np.asarray(sample, dtype=np.float64)
    distinct = count_distinct_rows(vectors, stop_at=n_clusters)
    if distinct < n_clusters:
        raise ParameterError(
            f"--clusters {n_clusters} is more than the {distinct} distinct feature vector(s) in the sample "
            f"of {len(vectors)} pixels; lower --clusters"
        )
    fit = _best_fit(vectors, _winsorise(vectors, n_clusters), spec, n_clusters, seed=seed, restarts=range(restarts))
    if fit.empty:
        reseeds = range(restarts, restarts + RESEED_TRIES)
        fit = _best_fit(vectors, vectors, spec, n_clusters, seed=seed, restarts=reseeds)
    note = None
    if fit.empty:
        note = (
            f"k-means left {fit.empty} of {n_clusters} clusters without any sampled pixel after "
            f"{restarts + RESEED_TRIES} fits; their labels stay unused"
        )
        logger.warning("degenerate fit: %s; lower --clusters for a sound model", note)
    return SegmentationModel(
        feature_spec=spec,
        centroids=order_centroids(fit.centres * fit.std + fit.mean),
        feature_mean=fit.mean,
        feature_std=fit.std,
        seed=seed,
        sample_size=len(vectors),
        sample_inertia=fit.inertia,  # the order of the centroids does not change it
        n_iter=fit.n_iter,
        degenerate=note,
    )


@dataclass(frozen=True)
class _Fit:
    """One k-means run: standardised centres, the standardisation, and how it fits the sample."""

    centres: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    n_iter: int
    inertia: float
    empty: int


def _winsorise(vectors: np.ndarray, n_clusters: int) -> np.ndarray:
    """``vectors`` clipped per column to ``WINSOR_PERCENTILES``, or ``vectors`` itself when the
    clipped rows would hold fewer than ``n_clusters`` distinct values."""
    low, high = np.percentile(vectors, WINSOR_PERCENTILES, axis=0)
    clipped = np.clip(vectors, low, high)
    return clipped if count_distinct_rows(clipped, stop_at=n_clusters) >= n_clusters else vectors


def _best_fit(
    vectors: np.ndarray,
    clipped: np.ndarray,
    spec: FeatureSpec,
    n_clusters: int,
    *,
    seed: int,
    restarts: Sequence[int],
) -> _Fit:
    """Standardise with ``clipped``'s statistics, fit on ``clipped`` once per restart index, and keep
    the fit with the fewest empty clusters, then the lowest inertia, both measured on ``vectors``."""
    mean = clipped.mean(axis=0)
    std = feature_spread(clipped.var(axis=0), spec.column_groups)
    standardised = (vectors - mean) / std
    scaled = standardised if clipped is vectors else (clipped - mean) / std
    best: _Fit | None = None
    for restart in restarts:
        centres, n_iter = _fit_kmeans(scaled, n_clusters, seed=seed, restart=restart)
        inertia, counts = nearest_counts(standardised, centres)
        fit = _Fit(centres, mean, std, n_iter, inertia, empty=int(np.count_nonzero(counts == 0)))
        if best is None or (fit.empty, fit.inertia) < (best.empty, best.inertia):
            best = fit
    assert best is not None, "at least one restart"
    return best


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
    """dask-ml KMeans on ``scaled`` rows from :func:`seed_centres`; returns (centres, iterations).

    Restart 0 uses ``seed`` itself. The sample is in memory, so it is one chunk on the synchronous
    scheduler: the fit does not depend on the core count, and each Lloyd iteration is one numpy
    pass instead of a threaded graph (0.08-0.2 s per restart at 200,000 rows against 0.65-0.85 s
    for k-means||: benchmarks/RESULTS.md, 2026-11-29).
    """
    from dask_ml.cluster import KMeans

    random_state = (seed + restart * _RESTART_STRIDE) % 2**32
    estimator = KMeans(
        n_clusters=n_clusters,
        init=seed_centres(scaled, n_clusters, random_state=random_state),
        random_state=random_state,
        tol=_FIT_TOL,
        max_iter=300,
    )
    with dask.config.set(scheduler="synchronous"):
        estimator.fit(da.from_array(scaled, chunks=scaled.shape))
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
    total = 0.0
    counts = np.zeros(len(centroids), dtype=np.int64)
    rows = max(1, 2**22 // centroids.size)  # bounds the (rows, K, F) temporary to 32 MiB
    for start in range(0, len(vectors), rows):
        block = vectors[start : start + rows]
        distances = ((block[:, np.newaxis, :] - centroids[np.newaxis, :, :]) ** 2).sum(axis=-1)
        nearest = distances.argmin(axis=1)
        total += float(distances[np.arange(len(block)), nearest].sum())
        counts += np.bincount(nearest, minlength=len(centroids))
    return total, counts
