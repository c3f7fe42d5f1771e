"""3-D texture of a volume's intensity: Gaussian filterings with sigmas in millimetres.

The volume counterparts of the 2-D texture groups ``smooth``, ``std``, ``gradient`` and ``log``
(same names and columns, ``{name}_s{sigma:g}``): ``scipy.ndimage.gaussian_filter`` with
``mode="reflect"`` and ``truncate`` :data:`~pixseg.feature_kernels.TRUNCATE`, a sigma of
``sigma / spacing`` voxels on each axis (anisotropic voxels get anisotropic kernels, so a
structure's texture does not depend on the slice thickness), derivatives per millimetre. A chunk
needs ``ceil(TRUNCATE * sigma / spacing)`` voxels of context on each axis (:func:`texture_halo`),
then its features equal those of the whole volume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pixseg.feature_kernels import TRUNCATE

#: The texture groups a volume has.
VOLUME_TEXTURE_GROUPS = ("smooth", "std", "gradient", "log")


def voxel_sigmas(sigma: float, spacing: Sequence[float]) -> tuple[float, ...]:
    """``sigma`` millimetres in voxels along each axis of ``spacing`` (z, y, x) mm."""
    return tuple(sigma / s for s in spacing)


def texture_halo(sigmas: Sequence[float], spacing: Sequence[float]) -> tuple[int, int, int]:
    """Voxels of context a chunk needs on each side along (z, y, x) for ``sigmas`` (mm); 0 without texture."""
    if not sigmas:
        return 0, 0, 0
    return tuple(math.ceil(TRUNCATE * max(sigmas) / s) for s in spacing)  # type: ignore[return-value]


def texture_column(intensity: np.ndarray, group: str, sigma: float, spacing: Sequence[float]) -> np.ndarray:
    """One texture column of an intensity volume.

    Parameters
    ----------
    intensity : numpy.ndarray
        Shape (d, h, w), float64; not modified.
    group : str
        One of :data:`VOLUME_TEXTURE_GROUPS`.
    sigma : float
        Scale in millimetres.
    spacing : sequence of float
        Voxel size (z, y, x) in millimetres.

    Returns
    -------
    numpy.ndarray
        Shape (d, h, w), float64.
    """
    from scipy import ndimage  # imported on first use

    sigmas = voxel_sigmas(sigma, spacing)

    def gaussian(source: np.ndarray, order: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
        return ndimage.gaussian_filter(source, sigmas, order=order, mode="reflect", truncate=TRUNCATE)

    axes = ((1, 0, 0), (0, 1, 0), (0, 0, 1))
    if group == "smooth":
        return gaussian(intensity)
    if group == "std":
        mean = gaussian(intensity)
        return np.sqrt(np.maximum(gaussian(intensity * intensity) - mean * mean, 0.0))
    if group == "gradient":
        return np.sqrt(sum((gaussian(intensity, a) / s) ** 2 for a, s in zip(axes, spacing, strict=True)))
    if group == "log":
        laplacian = np.zeros_like(intensity)
        for axis, size in zip(axes, spacing, strict=True):
            laplacian += gaussian(intensity, (2 * axis[0], 2 * axis[1], 2 * axis[2])) / size**2
        return laplacian
    raise ValueError(f"no 3-D texture group {group!r}; choose from {', '.join(VOLUME_TEXTURE_GROUPS)}")
