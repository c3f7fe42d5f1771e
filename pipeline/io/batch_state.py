"""A batch's state files: what job wrote each output, so later runs skip, redo or continue it;
and the identity of an input that every fingerprint holds (:func:`input_identity`).

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
        If it cannot be written, or its directory is the state folder and that is a symlink
        (pixseg creates it, so a symlink there was planted: writes never go through it).
    """
    directory = os.path.dirname(path)
    if os.path.basename(directory) == STATE_DIR and os.path.islink(directory):
        raise OutputError(f"cannot write {path!r}: {directory!r} is a symlink, not pixseg's state folder")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json_atomic(path, document)
    except OSError as err:
        raise OutputError(f"cannot write {path!r}: {err.strerror or err}") from err


def digest(document: Any) -> str:
    """SHA-256 of the canonical JSON of ``document``: an identity that survives key order."""
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=json_default).encode()).hexdigest()


def input_identity(path: str) -> dict[str, Any]:
    """What stands for an input's content in every fingerprint: a resumed run's, a batch output's,
    and a converted copy's source.

    A file stands for itself by its real path, size and modification time. A directory (a zarr
    store) is walked with :func:`os.scandir` (symlinked directories are not entered): ``size`` and
    ``mtime_ns`` are the sum and the latest over its files, ``files`` counts them and ``listing``
    is the SHA-256 of every file's relative path, size and modification time, so a chunk rewritten
    under unchanged metadata changes the identity. The ``labels`` group at the top of a store
    (where ``--into-input`` writes) is left out: labels are not the image's pixels.

    Cost: one ``stat`` per file of the store (one per chunk or shard), no file is read; on a
    network file system the walk of a store of many small chunks is the slow part.

    Raises
    ------
    OSError
        If ``path`` does not exist.
    """
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        stat = os.stat(real)
        return {"path": real, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    listing = hashlib.sha256()
    files = size = mtime = 0
    for name, stat in sorted(_store_files(real, "", top=True)):
        files, size, mtime = files + 1, size + stat.st_size, max(mtime, stat.st_mtime_ns)
        listing.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return {"path": real, "size": size, "mtime_ns": mtime, "files": files, "listing": listing.hexdigest()}


def _store_files(root: str, prefix: str, *, top: bool) -> list[tuple[str, os.stat_result]]:
    """(relative path, stat) of every file under ``root/prefix``, but a top-level ``labels`` group."""
    found: list[tuple[str, os.stat_result]] = []
    with os.scandir(os.path.join(root, prefix)) as entries:
        for entry in entries:
            name = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                if not (top and entry.name == "labels"):
                    found.extend(_store_files(root, name + "/", top=False))
            elif entry.is_file():
                found.append((name, entry.stat()))
    return found


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
