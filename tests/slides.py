"""Synthetic brightfield slides for the mask, fit-level and normalisation tests."""

from __future__ import annotations

import numpy as np
import tifffile

GLASS = (238, 236, 240)
STROMA = (225, 150, 190)  # eosin pink
NUCLEUS = (110, 70, 160)  # haematoxylin purple


def make_slide(height: int, width: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three elliptic tissue blobs (pink stroma, purple nuclei, texture) on near-white glass with dust.

    Returns
    -------
    pixels : numpy.ndarray
        (height, width, 3) uint8.
    tissue : numpy.ndarray
        (height, width) bool, the true tissue.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    tissue = np.zeros((height, width), dtype=bool)
    for cy, cx, ry, rx in ((0.3, 0.25, 0.2, 0.16), (0.62, 0.62, 0.24, 0.2), (0.25, 0.78, 0.12, 0.1)):
        tissue |= ((yy - cy * height) / (ry * height)) ** 2 + ((xx - cx * width) / (rx * width)) ** 2 <= 1
    nuclei = tissue & (rng.random((height, width)) < 0.015)
    nuclei = np.logical_or.reduce([np.roll(nuclei, (dy, dx), axis=(0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    nuclei &= tissue
    pixels = np.empty((height, width, 3), dtype=np.float64)
    pixels[:] = GLASS
    pixels[tissue] = STROMA
    pixels[nuclei] = NUCLEUS
    pixels += rng.normal(0, 4, pixels.shape)
    dust = ~tissue & (rng.random((height, width)) < 0.0005)
    pixels[dust] = (60, 60, 60)
    return np.clip(pixels, 0, 255).astype(np.uint8), tissue


def downsample(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Block mean of an (H, W, C) image, as a slide scanner's pyramid level."""
    h, w = pixels.shape[0] // factor, pixels.shape[1] // factor
    blocks = pixels[: h * factor, : w * factor].reshape(h, factor, w, factor, -1).astype(np.float64)
    return np.round(blocks.mean(axis=(1, 3))).astype(pixels.dtype)


def write_pyramid_tiff(path: str, pixels: np.ndarray, *, n_levels: int = 3, tile: int = 64) -> str:
    """An RGB tiled TIFF with ``n_levels`` levels (each half the size of the previous) in SubIFDs."""
    options = {"tile": (tile, tile), "photometric": "rgb" if pixels.shape[2] == 3 else "minisblack"}
    with tifffile.TiffWriter(path) as tif:
        tif.write(pixels, subifds=n_levels - 1, **options)
        for level in range(1, n_levels):
            tif.write(downsample(pixels, 2**level), subfiletype=1, **options)
    return path
