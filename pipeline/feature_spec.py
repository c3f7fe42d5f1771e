"""What features to compute: :class:`FeatureSpec`, the validated, serialisable description a model
stores, and :func:`make_feature_spec`, which checks a user's feature options against an input's layout.

Everything about a group (its columns, its halo, whether it is pointwise) is read from
:data:`~pixseg.feature_registry.FEATURE_REGISTRY`; :mod:`pixseg.features` computes what a spec describes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pixseg.errors import ParameterError
from pixseg.feature_kernels import TRUNCATE
from pixseg.feature_registry import FEATURE_REGISTRY, aliases_of
from pixseg.normalise import dtype_range
from pixseg.options import DEFAULT_SIGMAS, MAX_SIGMA

#: Mask modes a spec records: no mask, the automatic tissue mask, or a user's mask file.
MASK_MODES = ("none", "auto", "file")


@dataclass(frozen=True)
class FeatureSpec:
    """What features to compute from an image of a given layout.

    Attributes
    ----------
    groups : tuple of str
        Names of ``FEATURE_REGISTRY`` groups, in stacking order.
    n_channels : int
        Colour channels of the input, alpha excluded.
    has_alpha : bool
        Whether the input carries a trailing alpha channel (alpha == 0 is masked).
    dtype : str
        The input dtype the spec was built for.
    channel_ranges : tuple of (float, float)
        Per colour channel, the input values mapped to 0 and 1 when scaling channels.
    sigmas : tuple of float
        Texture scales in full-resolution pixels; empty when no texture group is chosen.
    mask : str
        How pixels were masked when the model was fitted: one of ``MASK_MODES``.
    window : (float, float) or None
        Volumes' ``--window LOW,HIGH``: raw values are clipped to it before any feature (see
        :class:`pixseg.volumes.VoxelFeatures`); None (no clipping) for images.
    """

    groups: tuple[str, ...]
    n_channels: int
    has_alpha: bool
    dtype: str
    channel_ranges: tuple[tuple[float, float], ...]
    sigmas: tuple[float, ...] = ()
    mask: str = "none"
    window: tuple[float, float] | None = None

    @functools.cached_property
    def texture_groups(self) -> tuple[str, ...]:
        """The texture groups of ``groups``, in stacking order."""
        return tuple(g for g in self.groups if FEATURE_REGISTRY[g].texture)

    @functools.cached_property
    def pointwise(self) -> bool:
        """Whether every feature of a pixel depends on that pixel's own colour only (no texture, no coordinates)."""
        return all(FEATURE_REGISTRY[g].pointwise for g in self.groups)

    @functools.cached_property
    def columns(self) -> tuple[str, ...]:
        """One name per feature column, e.g. ``("ch0", "ch1", "ch2", "grey", "smooth_s1")``."""
        return tuple(name for group in self.groups for name in self._group_columns(group))

    @functools.cached_property
    def column_groups(self) -> tuple[str, ...]:
        """The group of each feature column, e.g. ``("channels", "channels", "channels", "grey")``."""
        return tuple(group for group in self.groups for _ in self._group_columns(group))

    def _group_columns(self, group: str) -> tuple[str, ...]:
        return FEATURE_REGISTRY[group].column_names(self.n_channels, self.sigmas)

    def halo(self, scale: tuple[float, float] = (1.0, 1.0)) -> tuple[int, int]:
        """Pixels of context each chunk needs on each side, (rows, columns), at a level downsampled ``scale``.

        ``ceil(truncate * sigma / scale)`` for the largest sigma when a texture group is chosen, else (0, 0).
        """
        halos = [FEATURE_REGISTRY[g].halo(self.sigmas, scale) for g in self.groups]
        return max(rows for rows, _ in halos), max(cols for _, cols in halos)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description."""
        return {
            "groups": list(self.groups),
            "n_channels": self.n_channels,
            "has_alpha": self.has_alpha,
            "dtype": self.dtype,
            "channel_ranges": [list(r) for r in self.channel_ranges],
            "sigmas": list(self.sigmas),
            "truncate": TRUNCATE,
            "mask": self.mask,
            **({"window": list(self.window)} if self.window is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`to_dict`; also reads schema-1 specs (one ``value_range``, no texture).

        Every field is checked before it is used: ``groups`` a list of distinct ``FEATURE_REGISTRY``
        names (RGB groups only with 3 colour channels); ``n_channels`` an integer from 1 to 65,536
        (colour channels, alpha excluded); ``has_alpha`` a boolean; ``dtype`` the name of an integer
        or float numpy dtype; ``channel_ranges`` (or schema 1's ``value_range``) one pair of finite
        numbers ``[low, high]`` with low < high per colour channel; ``sigmas`` distinct numbers in
        (0, ``MAX_SIGMA``]; ``truncate`` equal to ``TRUNCATE``; ``mask`` one of ``MASK_MODES``;
        ``window``, when present, a pair ``[low, high]`` with low < high.

        Raises
        ------
        ValueError
            Naming the first bad field, with at most a short excerpt of its value.
        """

        def bad(name: str, expected: str, value: Any) -> ValueError:
            shown = f"{value!r:.60}" if isinstance(value, str | int | float) else type(value).__name__
            return ValueError(f"field {name!r} must be {expected}, got {shown}")

        def field(name: str) -> Any:
            if name not in data:
                raise ValueError(f"field {name!r} is missing")
            return data[name]

        def is_number(value: Any) -> bool:
            return type(value) in (int, float) and math.isfinite(value)

        def pair(name: str, value: Any) -> tuple[float, float]:
            if not (isinstance(value, list) and len(value) == 2 and all(is_number(v) for v in value)):
                raise bad(name, "a pair of finite numbers [low, high]", value)
            if not value[0] < value[1]:
                raise bad(name, "a pair [low, high] with low < high", f"{value[0]!r:.25}, {value[1]!r:.25}")
            return float(value[0]), float(value[1])

        if not isinstance(data, dict):
            raise bad("features", "a JSON object", data)
        truncate = data.get("truncate", TRUNCATE)
        if not is_number(truncate) or float(truncate) != TRUNCATE:
            raise bad("truncate", str(TRUNCATE), truncate)
        groups = field("groups")
        if not isinstance(groups, list) or not groups or not all(isinstance(g, str) for g in groups):
            raise bad("groups", "a non-empty list of feature group names", groups)
        unknown = next((g for g in groups if g not in FEATURE_REGISTRY), None)
        if unknown is not None:
            raise bad("groups", f"names among {', '.join(FEATURE_REGISTRY)}", unknown)
        if len(set(groups)) != len(groups):
            raise bad("groups", "distinct names", ",".join(groups))
        has_alpha = field("has_alpha")
        if not isinstance(has_alpha, bool):
            raise bad("has_alpha", "true or false", has_alpha)
        n_colour = field("n_channels")
        if type(n_colour) is not int or not 1 <= n_colour <= 65_536:
            raise bad("n_channels", "an integer from 1 to 65536", n_colour)
        rgb_group = next((g for g in groups if FEATURE_REGISTRY[g].needs_rgb), None)
        if rgb_group is not None and n_colour != 3:
            raise bad("n_channels", f"3 for the RGB feature group {rgb_group!r}", n_colour)
        dtype_name = field("dtype")
        try:
            dtype = np.dtype(dtype_name) if isinstance(dtype_name, str) else None
        except (TypeError, ValueError):
            dtype = None
        if dtype is None or dtype.kind not in "iuf":
            raise bad("dtype", "the name of an integer or float numpy dtype", dtype_name)
        if "channel_ranges" in data:
            ranges = data["channel_ranges"]
            if not isinstance(ranges, list) or len(ranges) != n_colour:
                raise bad("channel_ranges", f"a list of {n_colour} [low, high] pairs", ranges)
            channel_ranges = [pair("channel_ranges", item) for item in ranges]
        else:
            channel_ranges = [pair("value_range", field("value_range"))] * n_colour
        sigmas = data.get("sigmas", [])
        if not isinstance(sigmas, list) or not all(is_number(s) and 0 < s <= MAX_SIGMA for s in sigmas):
            raise bad("sigmas", f"a list of numbers in (0, {MAX_SIGMA:g}]", sigmas)
        if len(set(sigmas)) != len(sigmas):
            raise bad("sigmas", "distinct numbers", sigmas)
        mask = data.get("mask", "none")
        if mask not in MASK_MODES:
            raise bad("mask", f"one of {', '.join(MASK_MODES)}", mask)
        spec = make_feature_spec(
            groups,
            n_channels=n_colour + int(has_alpha),
            has_alpha=has_alpha,
            dtype=dtype,
            channel_ranges=channel_ranges,
            sigmas=[float(s) for s in sigmas] or DEFAULT_SIGMAS,
            mask=mask,
        )
        window = data.get("window")
        return spec if window is None else replace(spec, window=pair("window", window))


def make_feature_spec(
    groups: str | Sequence[str],
    *,
    n_channels: int,
    has_alpha: bool,
    dtype: np.dtype,
    value_range: tuple[float, float] | None = None,
    channel_ranges: Sequence[tuple[float, float]] | None = None,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    mask: str = "none",
) -> FeatureSpec:
    """Validate feature group names and texture scales against an input layout.

    Parameters
    ----------
    groups : str or sequence of str
        Names of ``FEATURE_REGISTRY`` groups or of their aliases, or one comma-separated string
        (``"hed,texture"``); an alias expands to its groups (``texture`` to ``smooth,std,gradient,log``).
    n_channels : int
        Channels of the input including any alpha channel.
    has_alpha : bool
        Whether the last channel is alpha.
    dtype : numpy.dtype
        The input dtype.
    value_range : tuple of float, optional
        Values mapped to 0 and 1 in every channel; by default the dtype's range (integers) or (0, 1) (floats).
    channel_ranges : sequence of (float, float), optional
        One range per colour channel (e.g. robust percentiles); overrides ``value_range``.
    sigmas : sequence of float
        Texture scales in full-resolution pixels, each in (0, ``MAX_SIGMA``]; kept only when a texture
        group is chosen.
    mask : str
        The mask mode, one of ``MASK_MODES``.

    Raises
    ------
    ParameterError
        For an unknown or repeated group, a colour conversion on an input that is not RGB, a bad
        sigma, a channel range that is empty or of the wrong length, or an unknown mask mode.
    """
    given = tuple(g.strip() for g in groups.split(",")) if isinstance(groups, str) else tuple(groups)
    aliases = aliases_of(FEATURE_REGISTRY)
    names = tuple(name for g in given for name in aliases.get(g, (g,)))
    colour = n_channels - int(has_alpha)
    unknown = [g for g in names if g not in FEATURE_REGISTRY]
    if unknown or not names:
        choices = ", ".join((*FEATURE_REGISTRY, *aliases))
        raise ParameterError(f"--features: unknown feature {unknown!r}; choose from {choices}")
    if len(set(names)) != len(names):
        raise ParameterError(f"--features: repeated feature in {','.join(given)!r}")
    for group in FEATURE_REGISTRY.values():
        if group.needs_rgb and group.name in names and colour != 3:
            raise ParameterError(f"--features {group.name} needs an RGB image; this one has {colour} colour channel(s)")
    if mask not in MASK_MODES:
        raise ParameterError(f"mask mode must be one of {', '.join(MASK_MODES)}, got {mask!r}")
    if channel_ranges is None:
        channel_ranges = [value_range if value_range is not None else dtype_range(dtype)] * colour
    ranges = tuple((float(lo), float(hi)) for lo, hi in channel_ranges)
    if len(ranges) != colour or not all(math.isfinite(lo) and math.isfinite(hi) and hi > lo for lo, hi in ranges):
        raise ParameterError(f"channel ranges {ranges!r}: expected {colour} finite (low, high) pairs with low < high")
    kept_sigmas: tuple[float, ...] = ()
    if any(FEATURE_REGISTRY[g].texture for g in names):
        kept_sigmas = tuple(float(s) for s in sigmas)
        if not kept_sigmas or not all(math.isfinite(s) and 0 < s <= MAX_SIGMA for s in kept_sigmas):
            raise ParameterError(f"--sigmas must be one or more numbers in (0, {MAX_SIGMA:g}], got {tuple(sigmas)!r}")
        if len(set(kept_sigmas)) != len(kept_sigmas):
            raise ParameterError(f"--sigmas: repeated sigma in {kept_sigmas!r}")
    return FeatureSpec(
        groups=names,
        n_channels=colour,
        has_alpha=has_alpha,
        dtype=np.dtype(dtype).name,
        channel_ranges=ranges,
        sigmas=kept_sigmas,
        mask=mask,
    )
