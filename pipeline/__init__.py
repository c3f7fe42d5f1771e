"""pixseg: out-of-core pixel-clustering segmentation of images larger than memory."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pixseg-ooc")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
