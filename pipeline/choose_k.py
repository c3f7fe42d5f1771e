"""``--clusters auto``: choose K on the sample, by the silhouette of a fixed subsample.

Every K of the range is fitted with the same dask-ml fit as the final model
(:func:`pixseg.kmeans_fit.fit_prepared`), on the first ``SCORE_ROWS`` rows of a seeded permutation of
the sample, with ``SCORE_RESTARTS`` k-means run (k-means++ seeded, converged to ``SCORE_TOL``); the
fits run side by side, one thread each (:mod:`pixseg.fit_threads`). Each fit is scored on that
subsample, standardised alike for every K: its inertia (squared, standardised), the
Calinski-Harabasz index, and
the mean silhouette of a fixed seeded subsample of ``SILHOUETTE_ROWS`` of those rows. The K of
highest silhouette is chosen (ties: the smaller K), then fitted on the whole sample as any fixed
K is.

Why the silhouette: on well-separated synthetic data of 3, 5 and 8 classes and on the test
fixtures, it found the true K where the knee of the inertia curve (:func:`knee_k`) chose too few
clusters and Calinski-Harabasz too many on the slides (``benchmarks/bench_auto_k.py``;
docs/presets.md has the table). Everything depends only on the
sample and the seed, so the choice is deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pixseg.features import FeatureSpec
from pixseg.fit_threads import map_fits
from pixseg.kmeans_fit import fit_prepared, nearest_centres, prepare_sample

logger = logging.getLogger(__name__)

#: Rows of the sample each candidate K is fitted and scored on.
SCORE_ROWS = 20_000
#: k-means runs of each candidate fit (the final fit uses ``--restarts``): one keeps the extra
#: time of ``auto:2-12`` near 2-3x a single fit, and found the true K in every benchmark case.
SCORE_RESTARTS = 1
#: Convergence threshold of each candidate fit (the final fit uses the stricter 1e-4, see
#: :mod:`pixseg.kmeans_fit`): most of ``auto``'s time is dask's graph work of each Lloyd iteration, and
#: 1e-3 needs 25-45% fewer of them with the same K chosen in every case of benchmarks/bench_auto_k.py
#: and silhouettes within 0.03.
SCORE_TOL = 1e-3
#: Rows the silhouette is computed on (its cost grows with their square).
SILHOUETTE_ROWS = 2_000
#: The criterion that chooses K (the others are shown for comparison).
CRITERION = "silhouette"
#: The columns of the criterion table, after ``k``.
SCORES = ("inertia", "silhouette", "calinski_harabasz")


@dataclass(frozen=True)
class KChoice:
    """How ``--clusters auto`` chose K: the criterion, the K chosen and the table of every K tried.

    Attributes
    ----------
    criterion : str
        The score that chose (``silhouette``).
    chosen : int
        The K chosen.
    table : tuple of dict
        One row per K tried, ascending: ``k`` and each of ``SCORES`` (floats).
    """

    criterion: str
    chosen: int
    table: tuple[dict[str, float], ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description."""
        return {"criterion": self.criterion, "chosen": self.chosen, "table": [dict(row) for row in self.table]}

    @classmethod
    def from_dict(cls, data: Any) -> KChoice:
        """Inverse of :meth:`to_dict`, checked.

        Raises
        ------
        ValueError
            If a field is missing or of the wrong type.
        """
        if not isinstance(data, dict) or not isinstance(data.get("criterion"), str):
            raise ValueError("must be an object with a 'criterion' string")
        table = data.get("table")
        if not isinstance(table, list) or not table or len(table) > 1024:
            raise ValueError("'table' must be a list of 1 to 1024 rows")
        rows = []
        for row in table:
            if not isinstance(row, dict) or type(row.get("k")) is not int:
                raise ValueError("each row of 'table' must be an object with an integer 'k'")
            if not all(type(row.get(name)) in (int, float) for name in SCORES):
                raise ValueError(f"each row of 'table' must hold the numbers {', '.join(SCORES)}")
            rows.append({"k": row["k"], **{name: float(row[name]) for name in SCORES}})
        chosen = data.get("chosen")
        if type(chosen) is not int or chosen not in [row["k"] for row in rows]:
            raise ValueError("'chosen' must be one of the K of 'table'")
        return cls(criterion=data["criterion"], chosen=chosen, table=tuple(rows))


def auto_range(clusters: int | str) -> tuple[int, int] | None:
    """The (low, high) K range of a ``clusters`` option ``"auto:LO-HI"``, or None for a fixed K."""
    if isinstance(clusters, int):
        return None
    low, high = clusters.removeprefix("auto:").split("-")
    return int(low), int(high)


def choose_clusters(
    sample: np.ndarray, spec: FeatureSpec, *, k_range: tuple[int, int], seed: int, workers: int | None = None
) -> KChoice:
    """Fit every K of ``k_range`` (inclusive) on a subsample of ``sample`` and choose one by silhouette.

    The subsample is prepared once (:func:`pixseg.kmeans_fit.prepare_sample`) and every K is scored in
    the same space, standardised as its winsorised rows are (the standardisation of every fit whose K
    they have enough distinct rows for), with the pairwise distances of the silhouette rows computed
    once. The candidate fits run side by side (:func:`pixseg.fit_threads.map_fits`, largest K first);
    the table is that of fitting them one after the other.

    Parameters
    ----------
    sample : numpy.ndarray
        Shape (n, F): the fit's sample (rows in a deterministic order). Not modified.
    spec : FeatureSpec
        The features the columns hold.
    k_range : (int, int)
        Smallest and largest K tried; K above the number of distinct rows is left out.
    seed : int
        Seeds the subsamples and the fits.
    workers : int, optional
        Most fits at once (default: the usable cores); does not change the result.

    Returns
    -------
    KChoice
        Computes ``high - low + 1`` fits on the synchronous scheduler.

    Raises
    ------
    ParameterError
        If the subsample holds fewer distinct rows than the smallest K.
    """
    from sklearn.metrics import euclidean_distances

    rows = np.random.default_rng([seed, 0x4B]).permutation(len(sample))[:SCORE_ROWS]
    prepared = prepare_sample(np.asarray(sample)[rows], spec, max_clusters=k_range[1])
    ks = [k for k in range(k_range[0], k_range[1] + 1) if k <= prepared.distinct] or [k_range[0]]
    space = prepared.winsorised
    silhouette_rows = np.random.default_rng([seed, 0x53]).permutation(len(space.vectors))[:SILHOUETTE_ROWS]
    distances = euclidean_distances(space.vectors[silhouette_rows])

    def score(k: int) -> dict[str, float]:
        model = fit_prepared(prepared, n_clusters=k, seed=seed, restarts=SCORE_RESTARTS, tol=SCORE_TOL)
        centres = (model.centroids - space.mean) / space.std
        scores = score_clustering(space.vectors, centres, silhouette_rows=silhouette_rows, distances=distances)
        return {"k": k, **scores}

    table = map_fits(score, ks[::-1], workers=workers)[::-1]  # the slowest (largest K) first
    for row in table:
        logger.info("K=%d: %s", row["k"], ", ".join(f"{name} {row[name]:.4g}" for name in SCORES))
    return KChoice(criterion=CRITERION, chosen=best_k(table, CRITERION), table=tuple(table))


def score_clustering(
    vectors: np.ndarray, centres: np.ndarray, *, silhouette_rows: np.ndarray, distances: np.ndarray | None = None
) -> dict[str, float]:
    """Inertia, Calinski-Harabasz index and mean silhouette (on ``silhouette_rows``) of ``vectors``
    (n, F) labelled by their nearest of ``centres`` (K, F). A score undefined for the labelling
    (a single non-empty cluster) is 0 for the silhouette and the index. ``distances``: the
    Euclidean distances between the silhouette rows, if already known."""
    from sklearn.metrics import calinski_harabasz_score, euclidean_distances

    labels, squared = nearest_centres(vectors, centres)
    few = labels[silhouette_rows]
    silhouette = 0.0
    if 1 < len(np.unique(few)) < len(few):
        among = euclidean_distances(vectors[silhouette_rows]) if distances is None else distances
        silhouette = mean_silhouette(among, few)
    harabasz = float(calinski_harabasz_score(vectors, labels)) if len(np.unique(labels)) > 1 else 0.0
    return {"inertia": float(squared.sum()), "silhouette": silhouette, "calinski_harabasz": harabasz}


def mean_silhouette(distances: np.ndarray, labels: np.ndarray) -> float:
    """The mean silhouette of ``labels`` (n,) given the (n, n) ``distances`` between their rows, as
    scikit-learn's ``silhouette_score(..., metric="precomputed")`` defines it (a row alone in its
    cluster scores 0), with the distance sums to each cluster taken as one matrix product."""
    _, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    members = np.zeros((len(labels), len(counts)))
    members[np.arange(len(labels)), codes] = 1.0
    sums = distances @ members  # (n, clusters): each row's summed distance to each cluster
    own = sums[np.arange(len(labels)), codes]
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = own / (counts[codes] - 1)
        means = sums / counts
        means[np.arange(len(labels)), codes] = np.inf
        nearest = means.min(axis=1)
        scores = (nearest - inside) / np.maximum(inside, nearest)
    return float(np.mean(np.nan_to_num(scores)))


def best_k(table: Sequence[dict[str, float]], criterion: str) -> int:
    """The K a criterion chooses from a table of :func:`choose_clusters`: the highest ``silhouette``
    or ``calinski_harabasz`` (ties: the smaller K), or the knee of ``inertia`` (:func:`knee_k`)."""
    ks = [int(row["k"]) for row in table]
    if criterion == "inertia":
        return knee_k(ks, [row["inertia"] for row in table])
    scores = [row[criterion] for row in table]
    return ks[int(np.argmax(scores))]


def knee_k(ks: Sequence[int], inertia: Sequence[float]) -> int:
    """The knee of a falling inertia curve: the K farthest below the straight line joining its ends,
    both axes scaled to [0, 1] (the "Kneedle" rule). With fewer than three K, the first."""
    if len(ks) < 3:
        return int(ks[0])
    x = (np.asarray(ks, float) - ks[0]) / (ks[-1] - ks[0])
    values = np.asarray(inertia, float)
    spread = values.max() - values.min()
    y = (values - values.min()) / spread if spread > 0 else np.zeros_like(values)
    return int(ks[int(np.argmax((1.0 - x) - y))])


def plot_k_choice(choice: KChoice, *, size: tuple[int, int] = (640, 360)) -> np.ndarray:
    """A line plot of the criterion table: inertia (blue) and silhouette (orange), each scaled to
    its own range, against K; the chosen K marked by a grey line. Drawn with Pillow.

    Returns
    -------
    numpy.ndarray
        (height, width, 3) uint8 RGB.
    """
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 60, 20, 30, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    ks = [int(row["k"]) for row in choice.table]
    span = max(ks[-1] - ks[0], 1)

    def x_of(k: int) -> float:
        return left + (k - ks[0]) / span * (width - left - right)

    draw.rectangle((left, top, width - right, height - bottom), outline="black")
    for k in ks:
        draw.line((x_of(k), height - bottom, x_of(k), height - bottom + 4), fill="black")
        draw.text((x_of(k) - 4, height - bottom + 6), str(k), fill="black")
    draw.text((width // 2 - 4, height - 16), "K", fill="black")
    chosen = x_of(choice.chosen)
    draw.line((chosen, top, chosen, height - bottom), fill=(150, 150, 150), width=2)
    for index, (name, colour) in enumerate((("inertia", (31, 119, 180)), ("silhouette", (255, 127, 14)))):
        values = np.array([row[name] for row in choice.table], dtype=np.float64)
        spread = values.max() - values.min()
        scaled = (values - values.min()) / spread if spread > 0 else np.full(len(values), 0.5)
        points = [(x_of(k), height - bottom - v * (height - top - bottom)) for k, v in zip(ks, scaled, strict=True)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        draw.text((left + 10 + 150 * index, 8), f"{name} (scaled)", fill=colour)
    draw.text((left + 310, 8), f"chosen K = {choice.chosen} ({choice.criterion})", fill="black")
    return np.asarray(image)
