"""Per-pixel features: pure per-chunk numpy functions and the one place that builds them lazily.

A feature image has shape (Y, X, F), dtype float32. Pixels that carry no data (alpha == 0,
NaN or infinite input) hold NaN in every feature: that NaN is the validity mask the sampling
and prediction stages read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from pipeline.errors import ParameterError

#: Feature groups, in the order they are stacked.
FEATURE_GROUPS = ("channels", "grey", "lab")
#: Luminance weights of skimage.color.rgb2gray (ITU-R BT.709).
_GREY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
#: sRGB (linear) to CIE XYZ, and the D65 white point, as in skimage.color.
_RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])


@dataclass(frozen=True)
class FeatureSpec:
    """What features to compute from an image of a given layout.

    Attributes
    ----------
    groups : tuple of str
        Feature groups from ``FEATURE_GROUPS``, in stacking order.
    n_channels : int
        Colour channels of the input, alpha excluded.
    has_alpha : bool
        Whether the input carries a trailing alpha channel (alpha == 0 is masked).
    dtype : str
        The input dtype the spec was built for.
    value_range : tuple of float
        Input values mapped to 0 and 1 when scaling channels.
    """

    groups: tuple[str, ...]
    n_channels: int
    has_alpha: bool
    dtype: str
    value_range: tuple[float, float]

    @property
    def columns(self) -> tuple[str, ...]:
        """One name per feature column, e.g. ``("ch0", "ch1", "ch2", "grey")``."""
        names: list[str] = []
        for group in self.groups:
            if group == "channels":
                names += [f"ch{i}" for i in range(self.n_channels)]
            elif group == "grey":
                names.append("grey")
            else:
                names += ["L", "a", "b"]
        return tuple(names)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description."""
        return {
            "groups": list(self.groups),
            "n_channels": self.n_channels,
            "has_alpha": self.has_alpha,
            "dtype": self.dtype,
            "value_range": list(self.value_range),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`to_dict`; raises ``KeyError``/``TypeError``/``ValueError`` on malformed data."""
        return make_feature_spec(
            data["groups"],
            n_channels=int(data["n_channels"]) + int(bool(data["has_alpha"])),
            has_alpha=bool(data["has_alpha"]),
            dtype=np.dtype(str(data["dtype"])),
            value_range=(float(data["value_range"][0]), float(data["value_range"][1])),
        )


def make_feature_spec(
    groups: str | list[str] | tuple[str, ...],
    *,
    n_channels: int,
    has_alpha: bool,
    dtype: np.dtype,
    value_range: tuple[float, float] | None = None,
) -> FeatureSpec:
    """Validate feature group names against an input layout.

    Parameters
    ----------
    groups : str or sequence of str
        Group names, or one comma-separated string (``"channels,lab"``).
    n_channels : int
        Channels of the input including any alpha channel.
    has_alpha : bool
        Whether the last channel is alpha.
    dtype : numpy.dtype
        The input dtype.
    value_range : tuple of float, optional
        Values mapped to 0 and 1; by default the dtype's range (integers) or (0, 1) (floats).

    Raises
    ------
    ParameterError
        For an unknown or repeated group, or ``lab`` on an input that is not RGB.
    """
    names = tuple(g.strip() for g in groups.split(",")) if isinstance(groups, str) else tuple(groups)
    colour = n_channels - int(has_alpha)
    unknown = [g for g in names if g not in FEATURE_GROUPS]
    if unknown or not names:
        raise ParameterError(f"--features: unknown feature {unknown!r}; choose from {', '.join(FEATURE_GROUPS)}")
    if len(set(names)) != len(names):
        raise ParameterError(f"--features: repeated feature in {','.join(names)!r}")
    if "lab" in names and colour != 3:
        raise ParameterError(f"--features lab needs an RGB image; this one has {colour} colour channel(s)")
    if value_range is None:
        value_range = dtype_range(dtype)
    return FeatureSpec(
        groups=names,
        n_channels=colour,
        has_alpha=has_alpha,
        dtype=np.dtype(dtype).name,
        value_range=(float(value_range[0]), float(value_range[1])),
    )


def dtype_range(dtype: np.dtype) -> tuple[float, float]:
    """(low, high) mapped to (0, 1): the full range of an integer dtype, (0, 1) for floats."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return 0.0, 1.0


def compute_features(chunk: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Features of one chunk.

    Parameters
    ----------
    chunk : numpy.ndarray
        Shape (h, w, C) in the input dtype; C includes alpha when ``spec.has_alpha``.
    spec : FeatureSpec
        What to compute.

    Returns
    -------
    numpy.ndarray
        Shape (h, w, len(spec.columns)), float32; NaN in every column of an invalid pixel.
        The input is not modified.
    """
    colour = chunk[..., : spec.n_channels]
    low, high = spec.value_range
    scaled = (colour.astype(np.float32) - np.float32(low)) * np.float32(1.0 / (high - low))
    invalid = _invalid_pixels(chunk, scaled, spec)
    if invalid is not None:
        scaled[invalid] = 0.0
    parts: list[np.ndarray] = []
    for group in spec.groups:
        if group == "channels":
            parts.append(scaled)
        elif group == "grey":
            parts.append(_grey(scaled)[..., np.newaxis])
        else:
            parts.append(_lab(scaled))
    features = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
    if invalid is not None:
        features[invalid] = np.nan
    return features


def _invalid_pixels(chunk: np.ndarray, scaled: np.ndarray, spec: FeatureSpec) -> np.ndarray | None:
    invalid = None
    if spec.has_alpha:
        invalid = chunk[..., -1] == 0
    if np.issubdtype(chunk.dtype, np.floating):
        nonfinite = ~np.isfinite(scaled).all(axis=-1)
        invalid = nonfinite if invalid is None else invalid | nonfinite
    return invalid


def _grey(scaled: np.ndarray) -> np.ndarray:
    if scaled.shape[-1] == 3:
        return _mix(scaled, _GREY_WEIGHTS[np.newaxis])[..., 0]
    return scaled.mean(axis=-1, dtype=np.float32)


def _mix(pixels: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``pixels @ matrix.T`` as explicit sums: BLAS results vary with array size and alignment,
    which would make a pixel's features depend on the chunk it falls in."""
    return np.stack([sum(pixels[..., j] * row[j] for j in range(pixels.shape[-1])) for row in matrix], axis=-1)


def _lab(scaled: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65, 2 degree observer) of sRGB values in [0, 1], as ``skimage.color.rgb2lab``."""
    rgb = np.clip(scaled, 0.0, 1.0).astype(np.float64)
    linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = _mix(linear, _RGB_TO_XYZ) / _D65_WHITE
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    lightness = np.where(xyz[..., 1] > 0.008856, 116.0 * f[..., 1] - 16.0, 903.3 * xyz[..., 1])
    lab = np.stack([lightness, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], axis=-1)
    return lab.astype(np.float32)


def build_features(image: da.Array, spec: FeatureSpec) -> da.Array:
    """Lazily compute features chunk by chunk.

    Parameters
    ----------
    image : dask.array.Array
        Shape (Y, X, C), channels in one chunk.
    spec : FeatureSpec
        Features to compute; must match the image's channels.

    Returns
    -------
    dask.array.Array
        Shape (Y, X, F), float32, the same (Y, X) chunks as ``image``; computes nothing.
    """
    n_columns = len(spec.columns)
    return image.map_blocks(
        compute_features,
        spec,
        chunks=(image.chunks[0], image.chunks[1], (n_columns,)),
        dtype=np.float32,
        meta=np.empty((0, 0, 0), dtype=np.float32),
    )
