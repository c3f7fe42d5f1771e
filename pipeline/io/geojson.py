"""GeoJSON files: a FeatureCollection streamed feature by feature, written atomically."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pixseg.errors import OutputError
from pixseg.io.atomic import atomic_file


def write_feature_collection(path: str, features: Iterable[dict[str, Any]]) -> int:
    """Write ``features`` as one GeoJSON ``FeatureCollection`` at ``path``, one feature a line.

    The features are consumed one at a time (a generator is never held whole); the file appears
    complete under its name, or not at all (see :func:`pixseg.io.atomic.atomic_file`).

    Returns
    -------
    int
        The number of features written.

    Raises
    ------
    OutputError
        If the file cannot be written.
    """
    count = 0
    try:
        with atomic_file(path, "w", encoding="utf-8") as handle:
            handle.write('{"type": "FeatureCollection", "features": [')
            for feature in features:
                handle.write(("\n" if count == 0 else ",\n") + json.dumps(feature, separators=(",", ":")))
                count += 1
            handle.write("\n]}\n")
    except OSError as err:
        raise OutputError(f"cannot write GeoJSON {path!r}: {err}") from err
    return count
