"""Presets: one name for the fit options that suit a kind of image (``--preset brightfield-ihc``).

A preset sets features, normalisation, mask mode and K. It stands for defaults only: any option
given explicitly (flag, config key or keyword argument) wins over the preset's value (see
:func:`pixseg.option_types.build_options`). The fitted model records the preset's name. The
features of each preset were chosen by measured quality (adjusted Rand index against synthetic
slides of known classes): ``benchmarks/bench_presets.py`` measures them and docs/presets.md shows
the table. This module imports nothing: :mod:`pixseg.options` reads it.
"""

from __future__ import annotations

from typing import Any

#: Each preset's fit options, by name.
PRESETS: dict[str, dict[str, Any]] = {
    # haematoxylin and eosin separate by stain density; a light smoothing keeps nuclei whole
    "brightfield-he": {"features": ("hed", "smooth"), "normalise": "dtype", "mask": "auto", "clusters": 4},
    # DAB, haematoxylin and pale counterstain: the stain densities alone separate them best
    "brightfield-ihc": {"features": ("hed",), "normalise": "dtype", "mask": "auto", "clusters": 4},
    # dark background, one stain per channel: the channels, each scaled to its robust range
    "fluorescence": {"features": ("channels",), "normalise": "robust", "mask": "auto", "clusters": 4},
    # a photograph: perceptual colour (CIELAB), no tissue mask
    "rgb-photo": {"features": ("lab",), "normalise": "dtype", "mask": "none", "clusters": 5},
}
