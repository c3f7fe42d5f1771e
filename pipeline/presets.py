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

#: Each preset's fit options, by name (ARI on the benchmark's slides in the comments).
PRESETS: dict[str, dict[str, Any]] = {
    # nuclei, eosin stroma, pale cytoplasm: stain densities with smoothing (0.97; hed alone 0.38)
    "brightfield-he": {"features": ("hed", "smooth"), "normalise": "dtype", "mask": "auto", "clusters": 3},
    # nuclei, DAB-positive cells, pale counterstain: hue/saturation with smoothing (0.93; hed 0.53)
    "brightfield-ihc": {"features": ("hsv", "smooth"), "normalise": "dtype", "mask": "auto", "clusters": 3},
    # dark background and one stain per channel: the channels at their robust ranges, no mask and the
    # background a cluster (1.00 on seeds 0-7; with the automatic mask and K=3: 0.994-0.997, edge pixels masked)
    "fluorescence": {"features": ("channels",), "normalise": "robust", "mask": "none", "clusters": 4},
    # a photograph: perceptual colour (CIELAB), no tissue mask (1.00, as channels; hsv 0.54)
    "rgb-photo": {"features": ("lab",), "normalise": "dtype", "mask": "none", "clusters": 5},
}
