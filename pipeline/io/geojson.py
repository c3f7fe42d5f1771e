"""GeoJSON files: a FeatureCollection streamed feature by feature, written atomically; annotations read."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pixseg.errors import InputError, OutputError
from pixseg.io.atomic import atomic_file

#: Largest GeoJSON file read (64 MiB), refused before parsing.
MAX_GEOJSON_BYTES = 64 * 2**20


def read_geojson(path: str) -> Any:
    """The parsed JSON document of a GeoJSON file (not yet checked as GeoJSON).

    Raises
    ------
    InputError
        If the file is missing, unreadable, larger than ``MAX_GEOJSON_BYTES`` or not JSON.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_GEOJSON_BYTES + 1)
    except OSError as err:
        raise InputError(f"regions {path!r} cannot be read: {err.strerror or err}") from err
    if len(raw) > MAX_GEOJSON_BYTES:
        raise InputError(f"regions {path!r} is larger than {MAX_GEOJSON_BYTES // 2**20} MiB")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise InputError(f"regions {path!r} is not readable JSON: {err}") from err


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
