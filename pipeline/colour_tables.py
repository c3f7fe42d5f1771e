"""Colour groups of 8- and 16-bit RGB pixels through per-channel lookup tables: exact and cheap.

A colour group that is a per-channel function of the scaled channels followed by a linear mix
over channels (``grey`` of RGB, ``hed``) has, for an integer input of ``N`` levels, only ``N``
possible values of each channel's term. Its kernel's arithmetic, ``(t_0 + t_1) + t_2`` with
``t_c = f_c(scaled_c) * m_kc`` in float32, is replayed here from tables of every ``t_c`` (built by
the same numpy code as the kernel, :func:`pixseg.feature_kernels.mix_tables`): the same float32
operations in the same order, so the results equal the kernel's bit for bit, at the cost of
three table reads and two additions per pixel and output, with no float temporaries.

This module imports numba: :mod:`pixseg.features` imports it on first use only.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _mix_tables(
    pixels: np.ndarray, tables: np.ndarray, lower: np.float32, out: np.ndarray
) -> None:  # pragma: no cover - compiled
    height, width, _ = pixels.shape
    n_out = tables.shape[2]
    red, green, blue = tables[0], tables[1], tables[2]
    for i in range(height):
        for j in range(width):
            r = red[pixels[i, j, 0]]
            g = green[pixels[i, j, 1]]
            b = blue[pixels[i, j, 2]]
            for k in range(n_out):
                value = (r[k] + g[k]) + b[k]
                out[i, j, k] = value if value > lower else lower  # numpy.maximum(value, lower)


def mix_rgb_tables(pixels: np.ndarray, tables: np.ndarray, lower: float, out: np.ndarray) -> None:
    """Write ``max((T[0, r, k] + T[1, g, k]) + T[2, b, k], lower)`` for every pixel (r, g, b) into ``out``.

    Parameters
    ----------
    pixels : numpy.ndarray
        Shape (h, w, C), C >= 3, uint8 or uint16, any strides; channels 0-2 are read.
    tables : numpy.ndarray
        Shape (3, N, K), float32, N the number of levels of the pixel dtype (256 or 65,536).
    lower : float
        Results below it are raised to it (``-inf``: none); NaN never occurs.
    out : numpy.ndarray
        Shape (h, w, K), float32, any strides (e.g. a column slice of a feature array).
    """
    _mix_tables(pixels, tables, np.float32(lower), out)
