"""The feature registry: one :class:`FeatureGroup` entry per feature group.

Each entry holds the group's column names, its per-chunk numpy kernel (in
:mod:`pixseg.feature_kernels`), what that kernel reads (the pixel's colour, its position, or
Gaussian filterings of the intensity image), whether it needs an RGB input and which shorthand
names include it. Adding a group means adding one entry here and its kernel; everything else
(group lists, columns, validation, halos, :attr:`pixseg.features.FeatureSpec.pointwise`) is
derived from the registry by :mod:`pixseg.features`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pixseg import feature_kernels as kernels
from pixseg.feature_kernels import TRUNCATE, GaussianFilter


@dataclass(frozen=True)
class FeatureGroup:
    """One feature group: its columns, its per-chunk kernel and what the kernel reads.

    Attributes
    ----------
    name : str
        The name users give (``--features``) and model files record.
    kind : {"colour", "position", "texture"}
        What ``kernel`` reads, which fixes how it is called:

        - ``"colour"``: ``kernel(colour)`` with the scaled colour channels of the returned
          region, (h, w, C) float32, returns (h, w, k) float32;
        - ``"position"``: ``kernel(shape, origin, image_shape)`` with the region's (h, w), its
          first pixel's (row, column) in the image and the image's (Y, X), returns (h, w, k)
          float32;
        - ``"texture"``: once per sigma, ``kernel(*filtered)`` with one (h, w) float32 array per
          entry of ``filters`` (filtered on the chunk with its halo, cut to the returned region),
          returns k (h, w) arrays, pointwise in its inputs.
    kernel : callable
        The pure numpy function that computes the group's columns of one chunk.
    columns : tuple of str, or callable
        The column names, or a function of the number of colour channels that returns them. A
        texture group has one column per name and sigma, ``f"{name}_s{sigma:g}"``, sigma first.
    filters : tuple of GaussianFilter
        The filterings of the intensity image a texture kernel reads, in argument order; empty
        for other kinds.
    needs_rgb : bool
        Whether the group needs exactly three colour channels.
    aliases : tuple of str
        Shorthand names (e.g. ``texture``) that expand to, among others, this group.
    tables : callable or None
        For a colour group whose kernel mixes per-channel terms of RGB: ``tables(levels)`` maps the
        scaled value of every level of each channel, (C, N) float32, to the kernel as lookup tables
        and a lower bound (see :mod:`pixseg.colour_tables`), or to None where they do not apply.
        8- and 16-bit inputs are then featurised from the tables, with the kernel's exact results.
    """

    name: str
    kind: Literal["colour", "position", "texture"]
    kernel: Callable[..., Any]
    columns: tuple[str, ...] | Callable[[int], tuple[str, ...]]
    filters: tuple[GaussianFilter, ...] = ()
    needs_rgb: bool = False
    aliases: tuple[str, ...] = ()
    tables: Callable[[Any], tuple[Any, float] | None] | None = None

    def __post_init__(self) -> None:
        if (self.kind == "texture") != bool(self.filters):
            raise ValueError(f"feature group {self.name!r}: filters {self.filters!r} are for texture groups only")

    @property
    def texture(self) -> bool:
        """Whether the group filters the intensity image at every sigma (and so needs sigmas and a halo)."""
        return self.kind == "texture"

    @property
    def pointwise(self) -> bool:
        """Whether the group's features of a pixel depend on that pixel's own colour only."""
        return self.kind == "colour"

    def column_names(self, n_channels: int, sigmas: Sequence[float]) -> tuple[str, ...]:
        """The group's column names for an input of ``n_channels`` colour channels and texture scales ``sigmas``."""
        names = self.columns(n_channels) if callable(self.columns) else self.columns
        if not self.texture:
            return names
        return tuple(f"{name}_s{sigma:g}" for sigma in sigmas for name in names)

    def halo(self, sigmas: Sequence[float], scale: tuple[float, float]) -> tuple[int, int]:
        """Context pixels each chunk needs on each side, (rows, columns), at a level downsampled ``scale``.

        ``ceil(TRUNCATE * sigma / scale)`` for the largest sigma for a texture group, else (0, 0).
        """
        if not self.texture:
            return 0, 0
        return (
            max(math.ceil(TRUNCATE * sigma / scale[0]) for sigma in sigmas),
            max(math.ceil(TRUNCATE * sigma / scale[1]) for sigma in sigmas),
        )


#: Every feature group by name; specs stack them in the order the user gives.
FEATURE_REGISTRY: dict[str, FeatureGroup] = {
    group.name: group
    for group in (
        FeatureGroup("channels", "colour", kernels.channels, lambda n: tuple(f"ch{i}" for i in range(n))),
        FeatureGroup("grey", "colour", kernels.grey, ("grey",), tables=kernels.grey_tables),
        FeatureGroup("lab", "colour", kernels.rgb_to_lab, ("L", "a", "b"), needs_rgb=True),
        FeatureGroup("hsv", "colour", kernels.rgb_to_hsv, ("hue", "saturation", "value"), needs_rgb=True),
        FeatureGroup(
            "hed",
            "colour",
            kernels.rgb_to_hed,
            ("haematoxylin", "eosin", "dab"),
            needs_rgb=True,
            tables=kernels.hed_tables,
        ),
        FeatureGroup("smooth", "texture", kernels.smooth, ("smooth",), (kernels.MEAN,), aliases=("texture",)),
        FeatureGroup(
            "std",
            "texture",
            kernels.local_std,
            ("std",),
            (kernels.MEAN, kernels.MEAN_OF_SQUARES),
            aliases=("texture",),
        ),
        FeatureGroup(
            "gradient",
            "texture",
            kernels.gradient_magnitude,
            ("gradient",),
            (kernels.D_ROW, kernels.D_COL),
            aliases=("texture",),
        ),
        FeatureGroup(
            "log",
            "texture",
            kernels.laplacian,
            ("log",),
            (kernels.D_ROW_ROW, kernels.D_COL_COL),
            aliases=("texture",),
        ),
        FeatureGroup(
            "hessian",
            "texture",
            kernels.hessian_eigenvalues,
            ("hessian1", "hessian2"),
            (kernels.D_ROW_ROW, kernels.D_COL_COL, kernels.D_ROW_COL),
        ),
        FeatureGroup("coordinates", "position", kernels.coordinates, ("row", "column")),
    )
}


def aliases_of(registry: Mapping[str, FeatureGroup]) -> dict[str, tuple[str, ...]]:
    """Each shorthand name of ``registry``'s groups, with the groups it expands to in registry order."""
    aliases: dict[str, tuple[str, ...]] = {}
    for group in registry.values():
        for alias in group.aliases:
            aliases[alias] = (*aliases.get(alias, ()), group.name)
    return aliases


#: Every feature group name, in registry order.
FEATURE_GROUPS = tuple(FEATURE_REGISTRY)
#: Per-pixel colour feature groups.
COLOUR_GROUPS = tuple(name for name, group in FEATURE_REGISTRY.items() if group.kind == "colour")
#: Texture feature groups, computed on the intensity (``grey``) image at every sigma.
TEXTURE_GROUPS = tuple(name for name, group in FEATURE_REGISTRY.items() if group.texture)
#: Shorthand names that expand to several groups.
FEATURE_ALIASES = aliases_of(FEATURE_REGISTRY)
