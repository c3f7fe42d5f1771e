"""``--clusters auto``: choose K on the sample, by the silhouette of a fixed subsample.

Every K of the range is fitted with the same dask-ml fit as the final model
(:func:`pixseg.kmeans_fit.fit_model`), on the first ``SCORE_ROWS`` rows of a seeded permutation of the
sample, with ``SCORE_RESTARTS`` k-means run (k-means++ seeded), single-threaded. Each fit is
scored on that subsample: its inertia (squared, standardised), the Calinski-Harabasz index, and
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

import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from pixseg.features import FeatureSpec
from pixseg.kmeans_fit import fit_model, nearest_counts

logger = logging.getLogger(__name__)

#: Rows of the sample each candidate K is fitted and scored on.
SCORE_ROWS = 20_000
#: k-means runs of each candidate fit (the final fit uses ``--restarts``): one keeps the extra
#: time of ``auto:2-12`` near 2-3x a single fit, and found the true K in every benchmark case.
SCORE_RESTARTS = 1
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


def choose_clusters(sample: np.ndarray, spec: FeatureSpec, *, k_range: tuple[int, int], seed: int) -> KChoice:
    """Fit every K of ``k_range`` (inclusive) on a subsample of ``sample`` and choose one by silhouette.

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

    Returns
    -------
    KChoice
        Computes ``high - low + 1`` fits on the threaded scheduler.
    """
    rows = np.random.default_rng([seed, 0x4B]).permutation(len(sample))[:SCORE_ROWS]
    subsample = np.asarray(sample, dtype=np.float64)[rows]
    n_distinct = len(np.unique(subsample, axis=0))
    ks = [k for k in range(k_range[0], k_range[1] + 1) if k <= n_distinct] or [k_range[0]]
    silhouette_rows = np.random.default_rng([seed, 0x53]).permutation(len(subsample))[:SILHOUETTE_ROWS]
    table = []
    # one thread (OpenMP, BLAS): at this size the threads of scikit-learn and numpy cost more than they save (4x slower
    # on a busy 2-core machine, benchmarks/RESULTS.md); the result does not depend on it
    importlib.import_module("dask_ml.cluster")  # loads scikit-learn's OpenMP library, so the limit reaches it
    with threadpool_limits(limits=1):
        for k in ks:
            model = fit_model(subsample, spec, n_clusters=k, seed=seed, restarts=SCORE_RESTARTS)
            standardised = (subsample - model.feature_mean) / model.feature_std
            centres = (model.centroids - model.feature_mean) / model.feature_std
            table.append({"k": k, **score_clustering(standardised, centres, silhouette_rows=silhouette_rows)})
            logger.info("K=%d: %s", k, ", ".join(f"{name} {table[-1][name]:.4g}" for name in SCORES))
    return KChoice(criterion=CRITERION, chosen=best_k(table, CRITERION), table=tuple(table))


def score_clustering(vectors: np.ndarray, centres: np.ndarray, *, silhouette_rows: np.ndarray) -> dict[str, float]:
    """Inertia, Calinski-Harabasz index and mean silhouette (on ``silhouette_rows``) of ``vectors``
    (n, F) labelled by their nearest of ``centres`` (K, F). A score undefined for the labelling
    (a single non-empty cluster) is 0 for the silhouette and the index."""
    from sklearn.metrics import calinski_harabasz_score, silhouette_score

    inertia, _ = nearest_counts(vectors, centres)
    labels = nearest_labels(vectors, centres)
    few = labels[silhouette_rows]
    silhouette = float(silhouette_score(vectors[silhouette_rows], few)) if 1 < len(np.unique(few)) < len(few) else 0.0
    harabasz = float(calinski_harabasz_score(vectors, labels)) if len(np.unique(labels)) > 1 else 0.0
    return {"inertia": float(inertia), "silhouette": silhouette, "calinski_harabasz": harabasz}


def nearest_labels(vectors: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest of ``centres`` (K, F) for each row of ``vectors`` (n, F); int64."""
    labels = np.empty(len(vectors), dtype=np.int64)
    rows = max(1, 2**22 // centres.size)
    for start in range(0, len(vectors), rows):
        block = vectors[start : start + rows]
        labels[start : start + rows] = ((block[:, None, :] - centres[None]) ** 2).sum(axis=-1).argmin(axis=1)
    return labels


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
