"""Small JSON documents pixseg keeps beside its outputs (locks, batch state)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from pixseg.io.remote import read_file


def read_json_object(path: str) -> dict[str, Any] | None:
    """The JSON object stored at ``path``, or None if it is missing, unreadable, nested too deeply
    to parse (a ``RecursionError`` in :mod:`json`) or not an object."""
    try:
        document = json.loads(read_file(path).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def json_default(value: Any) -> Any:
    """A numpy scalar as the Python value JSON knows: the ``default`` of :func:`json.dumps`.

    Raises
    ------
    TypeError
        For any other value JSON cannot represent.
    """
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
