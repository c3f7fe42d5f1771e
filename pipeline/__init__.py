"""pixseg: out-of-core pixel-clustering segmentation of images larger than memory.

The public API::

    import pixseg

    result = pixseg.segment("slide.svs", "labels.zarr", clusters=5, mask="auto")   # files, out of core
    model = pixseg.PixelKMeans(n_clusters=4).fit(image)                             # arrays
    labels = model.predict(image)                                                   # lazy dask array
    pixseg.apply("model.json", "other.svs", "other.zarr")

Importing pixseg does no work and changes nothing in the host process: the API's modules (and
dask, zarr, scikit-learn with them) are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pixseg.api import apply, segment
    from pixseg.estimator import PixelKMeans

__all__ = ["PixelKMeans", "__version__", "apply", "segment"]

_LAZY = {"segment": "pixseg.api", "apply": "pixseg.api", "PixelKMeans": "pixseg.estimator"}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("pixseg-ooc")
        except PackageNotFoundError:  # a source tree that is not installed
            return "0+unknown"
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pixseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
