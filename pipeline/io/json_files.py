"""Small JSON documents pixseg keeps beside its outputs (locks, batch state)."""

from __future__ import annotations

import json
from typing import Any


def read_json_object(path: str) -> dict[str, Any] | None:
    """The JSON object stored at ``path``, or None if it is missing, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None
