"""The fitted segmentation model: feature spec, standardisation, ordered centroids, class table.

Centroids are stored in feature units, sorted so that label 1 is the darkest cluster (ascending
mean of the centroid's features, ties broken by the remaining coordinates in column order); the
fit that makes them is :mod:`pixseg.kmeans_fit`.

Model documents (:meth:`SegmentationModel.from_dict`) are checked field by field: shapes,
finiteness, ranges and JSON types, with messages that name the field and show at most a short
excerpt of a bad value.
"""

from __future__ import annotations

import logging
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from pixseg.classes import ClassTable
from pixseg.features import FeatureSpec
from pixseg.options import MAX_CLUSTERS

if TYPE_CHECKING:
    from pixseg.choose_k import KChoice

logger = logging.getLogger(__name__)

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
