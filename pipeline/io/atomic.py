"""Atomic file writes: every file pixseg writes appears whole under its name, or not at all.

A file is written under a unique temporary name in its destination's directory
(``.<name>.<random>.partial``, created with ``O_CREAT | O_EXCL``, so it is never an existing file
or a symlink someone planted) and renamed over the destination with :func:`os.replace`. The rename
replaces whatever is at the destination, a symlink included, and never writes through it. On any
error, an interrupt included, the temporary file is removed; a killed process leaves its temporary
file behind, under a name no later write uses (see :func:`partial_files`).
"""

from __future__ import annotations

import glob
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from pixseg.io.json_files import json_default
from pixseg.io.remote import is_url, uploaded

_SUFFIX = ".partial"
#: Random names tried before giving up (mkstemp's own bound).
_ATTEMPTS = 10_000


@contextmanager
def atomic_file(path: str, mode: str = "wb", *, fsync: bool = True, **options: Any) -> Iterator[IO[Any]]:
    """Open a temporary file for ``path`` and rename it to ``path`` when the block ends without error.

    Parameters
    ----------
    path : str
        The destination; its directory must exist. Whatever is there (a file, a symlink) is replaced,
        never written into. A URL is written as one object when the block ends (text as UTF-8;
        see :func:`pixseg.io.remote.uploaded`).
    mode : str
        ``"wb"`` or ``"w"`` (text), as for :func:`open`.
    fsync : bool
        Flush the file to disk before the rename, so that after a crash ``path`` holds either the old
        or the whole new content. Cheap for small documents; bulk writers (chunks, large TIFFs) skip it.
    **options
        Passed to :func:`open` (``encoding``, ``newline``).

    Yields
    ------
    file object
        The temporary file, open for writing. Its name is the temporary name, not ``path``.

    Raises
    ------
    ValueError
        If ``mode`` is neither (nothing is created).
    OSError
        If the temporary file cannot be created, written or renamed; it is removed first.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    if is_url(path):  # one PUT of the whole object: atomic by itself
        with uploaded(path, mode) as handle:
            yield handle
        return
    temporary, descriptor = _create_temporary(path)
    try:
        # named by its path (tifffile reads ``handle.name``), opened as the descriptor already created
        with open(temporary, mode, opener=lambda _path, _flags: descriptor, **options) as handle:
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        _remove_quietly(temporary)
        raise


def write_atomic(path: str, data: bytes | str, *, fsync: bool = True) -> None:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically; see :func:`atomic_file`."""
    if isinstance(data, str):
        with atomic_file(path, "w", fsync=fsync, encoding="utf-8") as handle:
            handle.write(data)
    else:
        with atomic_file(path, "wb", fsync=fsync) as handle:
            handle.write(data)


def write_json_atomic(path: str, document: Any) -> None:
    """Write ``document`` as indented JSON to ``path`` atomically, numpy scalars as plain values.

    Raises
    ------
    OSError
        If the file cannot be written (no temporary file is left).
    TypeError
        If ``document`` holds a value JSON cannot represent (nothing is written).
    """
    write_atomic(path, json.dumps(document, indent=1, default=json_default))


def partial_files(path: str) -> list[str]:
    """The temporary files of writes to ``path`` that have not finished (running, or killed).

    Returns
    -------
    list of str
        Paths of ``.<name>.*.partial`` files beside ``path``, sorted.
    """
    directory, name = os.path.split(os.path.abspath(path))
    pattern = os.path.join(glob.escape(directory), f".{glob.escape(name)}.*{_SUFFIX}")
    return sorted(glob.glob(pattern, include_hidden=True))


def _create_temporary(path: str) -> tuple[str, int]:
    """Create a new, empty, uniquely named file beside ``path``; return its path and open descriptor.

    Like :func:`tempfile.mkstemp` (``O_CREAT | O_EXCL``: never an existing file, never through a
    symlink), but with the permissions a plain ``open`` gives (0o666 less the umask), not 0o600.
    """
    directory, name = os.path.split(os.path.abspath(path))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(_ATTEMPTS):
        temporary = os.path.join(directory, f".{name}.{secrets.token_hex(6)}{_SUFFIX}")
        try:
            return temporary, os.open(temporary, flags, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"no unused temporary name for {path!r} after {_ATTEMPTS} attempts")


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
