"""Which features each ``--preset`` should use: adjusted Rand index against slides of known classes.

``python -m benchmarks.bench_presets [--size 384] [--seed 0] [--work DIR]`` writes four synthetic images with
a known class at every pixel, segments each with every candidate feature set through
``pixseg.segment`` (K = the number of classes the mask leaves, the preset's mask and normalisation),
and prints a markdown table of the adjusted Rand index (scikit-learn) of the labels against the
classes, masked pixels (label 0) counted as one more label. docs/presets.md shows the table.

The images (every layout random but seeded; the truth is the class map they are drawn from):

- ``brightfield-ihc``: glass, haematoxylin nuclei, DAB-positive cells and pale counterstained
  stroma. Each pixel's stain densities (H, E, DAB) are drawn from the pixels of that class in
  scikit-image's real IHC photograph (``skimage.data.immunohistochemistry``), colour-deconvolved
  with ``skimage.color.rgb2hed``, and re-rendered with ``hed2rgb``: real stain colours and
  within-class spread, a known layout.
- ``brightfield-he``: glass, nuclei (haematoxylin densities of the photo's nuclei), eosin stroma
  and pale eosin cytoplasm (eosin densities drawn from gamma distributions), rendered the same way.
- ``fluorescence``: a dark background, nuclei (DAPI), a cytoplasm marker and a dim membrane marker
  (its range a tenth of the others), uint16 with Poisson noise.
- ``rgb-photo``: five coloured patches under a smooth illumination gradient (0.55 to 1.0), noise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import zarr

#: Candidate (feature set, mask) pairs, by image kind.
CANDIDATES = {
    "brightfield-he": [
        (f, "auto") for f in ("channels", "lab", "hsv", "hed", "hed,smooth", "hed,texture", "lab,smooth")
    ],
    "brightfield-ihc": [
        (f, "auto")
        for f in (
            "channels",
            "lab",
            "hsv",
            "hed",
            "hed,smooth",
            "hed,texture",
            "lab,smooth",
            "hsv,smooth",
            "lab,texture",
        )
    ],
    "fluorescence": [
        (f, m) for m in ("auto", "none") for f in ("channels", "channels,smooth", "channels,texture", "grey")
    ],
    "rgb-photo": [(f, "none") for f in ("channels", "lab", "hsv", "lab,smooth")],
}
NORMALISE = {"brightfield-he": "dtype", "brightfield-ihc": "dtype", "fluorescence": "robust", "rgb-photo": "dtype"}
#: The mask each kind's sample is drawn with in ``benchmarks.bench_auto_k`` (the presets' masks).
MASK = {"brightfield-he": "auto", "brightfield-ihc": "auto", "fluorescence": "none", "rgb-photo": "none"}


def _layout(size: int, n_regions: int, classes: list[int], rng: np.random.Generator) -> np.ndarray:
    """A map of Voronoi regions of random seeds, each region one of ``classes``."""
    seeds = rng.uniform(0, size, (n_regions, 2))
    yy, xx = np.mgrid[0:size, 0:size]
    nearest = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, axis=-1)
    return np.asarray(classes)[rng.integers(0, len(classes), n_regions)][nearest]


def _add_cells(truth: np.ndarray, cls: int, *, count: int, radius: float, rng: np.random.Generator) -> None:
    """Disks of class ``cls`` at random places on tissue (class != 0)."""
    size = truth.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    tissue = truth != 0
    for cy, cx in rng.uniform(0, size, (count, 2)):
        if tissue[int(cy), int(cx)]:
            truth[((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2) & tissue] = cls


def _ihc_pools() -> dict[str, np.ndarray]:
    """HED densities of the real IHC photo's pixels, by class (thresholds on its own percentiles)."""
    from skimage.color import rgb2hed
    from skimage.data import immunohistochemistry

    rgb = immunohistochemistry()
    hed = rgb2hed(rgb).reshape(-1, 3)
    bright = rgb.reshape(-1, 3).astype(float).mean(axis=1)
    h, d = hed[:, 0], hed[:, 2]
    dab = d > np.percentile(d, 90)
    nuclei = (h > np.percentile(h, 85)) & ~dab
    pale = ~dab & ~nuclei & (bright < np.percentile(bright, 70)) & (h < np.percentile(h, 60))
    glass = bright > np.percentile(bright, 98)
    return {"glass": hed[glass], "nuclei": hed[nuclei], "dab": hed[dab], "pale": hed[pale]}


def _render(hed: np.ndarray) -> np.ndarray:
    from skimage.color import hed2rgb

    return np.clip(np.round(hed2rgb(hed) * 255), 0, 255).astype(np.uint8)


def make_image(kind: str, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, truth) of one synthetic image kind (see the module docstring)."""
    rng = np.random.default_rng(seed)
    if kind in ("brightfield-ihc", "brightfield-he"):
        truth = _layout(size, 40, [0, 1, 1, 2] if kind == "brightfield-ihc" else [0, 1, 2, 2], rng)
        _add_cells(truth, 3, count=size * size // 400, radius=3.5, rng=rng)
        pools = _ihc_pools()
        hed = np.zeros((size, size, 3))
        if kind == "brightfield-ihc":  # 0 glass, 1 pale stroma, 2 DAB-positive, 3 nuclei
            names = ("glass", "pale", "dab", "nuclei")
            for cls, name in enumerate(names):
                where = truth == cls
                hed[where] = pools[name][rng.integers(0, len(pools[name]), int(where.sum()))]
        else:  # 0 glass, 1 pale cytoplasm, 2 eosin stroma, 3 nuclei
            glass = pools["glass"]
            hed[:] = glass[rng.integers(0, len(glass), size * size)].reshape(size, size, 3)
            for cls, (h_scale, e_shape, e_scale) in {1: (0.0, 6, 0.004), 2: (0.0, 6, 0.012), 3: (1, 6, 0.006)}.items():
                where = truth == cls
                n = int(where.sum())
                h = pools["nuclei"][rng.integers(0, len(pools["nuclei"]), n), 0] * h_scale
                hed[where, 0] = h + rng.gamma(4, 0.002, n)
                hed[where, 1] = rng.gamma(e_shape, e_scale, n)
                hed[where, 2] = 0.0
        return _render(hed), truth
    if kind == "fluorescence":  # 0 background, 1 cytoplasm marker, 2 membrane marker, 3 nuclei
        truth = _layout(size, 40, [0, 1, 2], rng)
        _add_cells(truth, 3, count=size * size // 500, radius=4.0, rng=rng)
        means = np.array([[200, 150, 40], [300, 9000, 60], [300, 400, 900], [20000, 1500, 50]], dtype=float)
        pixels = rng.poisson(means[truth]).astype(np.uint16)
        return pixels, truth
    if kind == "rgb-photo":
        truth = _layout(size, 30, [0, 1, 2, 3, 4], rng)
        colours = np.array([[200, 40, 40], [40, 150, 60], [50, 60, 190], [220, 200, 60], [120, 120, 120]], float)
        yy, xx = np.mgrid[0:size, 0:size]
        light = 0.55 + 0.45 * (xx + yy) / (2 * size)
        pixels = colours[truth] * light[..., None] + rng.normal(0, 5, (size, size, 3))
        return np.clip(pixels, 0, 255).astype(np.uint8), truth
    raise ValueError(kind)


def n_clusters(truth: np.ndarray, mask: str) -> int:
    """K for a run: every class, less the background when the mask is to remove it (class 0)."""
    return len(np.unique(truth)) - (1 if mask == "auto" else 0)


def score(kind: str, features: str, mask: str, pixels_path: Path, truth: np.ndarray, work: Path) -> tuple[float, float]:
    """(ARI of the labels against ``truth``, seconds) of one pixseg run."""
    from sklearn.metrics import adjusted_rand_score

    import pixseg

    n_classes = n_clusters(truth, mask)
    output = work / f"{kind}-{features.replace(',', '+')}-{mask}.zarr"
    started = time.perf_counter()
    pixseg.segment(
        pixels_path,
        output,
        clusters=n_classes,
        features=features.split(","),
        normalise=NORMALISE[kind],
        mask=mask,
        overwrite=True,
        chunk=128,
    )
    seconds = time.perf_counter() - started
    labels = zarr.open_group(output, mode="r")["0"][:]
    return float(adjusted_rand_score(truth.ravel(), labels.ravel())), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=384, help="image edge in pixels (default 384)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every image's layout and noise (default 0)")
    parser.add_argument("--work", type=Path, default=None, help="work directory (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        print("| image | features | normalise | mask | K | ARI | seconds |")
        print("|---|---|---|---|---|---|---|")
        for kind, candidates in CANDIDATES.items():
            pixels, truth = make_image(kind, args.size, args.seed)
            path = work / f"{kind}.tif"
            photometric = "minisblack" if pixels.dtype == np.uint16 else "rgb"
            tifffile.imwrite(path, pixels, tile=(128, 128), photometric=photometric, planarconfig="contig")
            for features, mask in candidates:
                ari, seconds = score(kind, features, mask, path, truth, work)
                k = n_clusters(truth, mask)
                print(
                    f"| {kind} | {features} | {NORMALISE[kind]} | {mask} | {k} | {ari:.3f} | {seconds:.1f} |",
                    flush=True,
                )
                print(f"{kind} {features}: ARI {ari:.3f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
