"""A batch's state files: what job wrote each output, so later runs skip, redo or continue it.

Each output of ``pixseg run`` has a small JSON state file (``.pixseg-state/NAME.json`` in the
output directory) holding the fingerprint of the job that wrote it and its status (``started``,
``done``, ``failed``). The cohort model has one too, with the identity of the fit settings.
Fingerprints are SHA-256 digests of canonical JSON.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from typing import Any

from pixseg.errors import OutputError
from pixseg.io.atomic import write_json_atomic
from pixseg.io.json_files import json_default, read_json_object

#: Folder, in the output directory, of the state files.
STATE_DIR = ".pixseg-state"


def state_path(output: str) -> str:
    """The state file of ``output`` (or of the cohort model file at ``output``)."""
    directory, name = os.path.split(output)
    return os.path.join(directory, STATE_DIR, name + ".json")


def read_state(output: str) -> dict[str, Any] | None:
    """The state of ``output``, or None if there is none (or it is unreadable)."""
    return read_json_object(state_path(output))


def write_state(output: str, document: dict[str, Any]) -> None:
    """Replace the state of ``output`` atomically.

    Raises
    ------
    OutputError
        If the state file cannot be written.
    """
    write_json_document(state_path(output), document)


def write_json_document(path: str, document: Any) -> None:
    """Write a JSON document atomically, creating its directory.

    Raises
    ------
    OutputError
        If it cannot be written.
    """
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json_atomic(path, document)
    except OSError as err:
        raise OutputError(f"cannot write {path!r}: {err.strerror or err}") from err


def digest(document: Any) -> str:
    """SHA-256 of the canonical JSON of ``document``: an identity that survives key order."""
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=json_default).encode()).hexdigest()


def input_identity(path: str) -> dict[str, Any]:
    """What stands for an input's content in a batch fingerprint: its real path, size and mtime.

    A zarr store stands for itself by its metadata documents.
    """
    real = os.path.realpath(path)
    if os.path.isdir(real):
        names = ("zarr.json", ".zarray", ".zattrs", ".zgroup")
        stats = [os.stat(os.path.join(real, n)) for n in names if os.path.exists(os.path.join(real, n))]
        return {
            "path": real,
            "size": sum(s.st_size for s in stats),
            "mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
        }
    stat = os.stat(real)
    return {"path": real, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
