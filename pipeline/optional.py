"""Optional packages, imported where a feature needs them, with one error naming the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from pixseg.errors import MissingDependencyError


def import_optional(module: str, *, extra: str, needed_for: str) -> ModuleType:
    """The module ``module``, imported on first use.

    Parameters
    ----------
    module : str
        Dotted module name, e.g. ``"nibabel"`` or ``"pylibCZIrw.czi"``.
    extra : str
        The pixseg extra that installs it (``pip install 'pixseg-ooc[EXTRA]'``).
    needed_for : str
        What needs it, for the message (``"NIfTI volumes"``).

    Raises
    ------
    MissingDependencyError
        If the module is not installed.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        package = module.split(".")[0]
        raise MissingDependencyError(
            f"{needed_for} need the {package!r} package: pip install 'pixseg-ooc[{extra}]'"
        ) from err
