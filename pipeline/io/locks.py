"""An output lock: one run writes an output at a time; a lock left by a dead process is taken over."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator

from pixseg.errors import LockedError, OutputError
from pixseg.io.json_files import read_json_object

#: An unreadable lock younger than this is taken as being written by a starting run.
_FRESH_SECONDS = 10.0


def lock_path_for(side_base: str) -> str:
    """Where the lock of an output lives: beside it (never inside an input)."""
    return side_base + ".lock"


@contextlib.contextmanager
def output_lock(path: str) -> Iterator[None]:
    """Hold the lock file ``path`` for the duration of the block.

    The lock is created atomically (``O_CREAT | O_EXCL``) and records host and pid. If it
    exists and was left by a process of this host that no longer runs, it is taken over.

    Raises
    ------
    OutputError
        If another live process (or a process on another host) holds it, or it cannot be created.
    """
    _acquire(path)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _acquire(path: str) -> None:
    record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()})
    for _ in range(3):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_json_object(path)
            if holder is None and _age(path) < _FRESH_SECONDS:
                holder = {"pid": "?", "host": "?"}  # just created, not yet written: held
            if holder is not None and not _is_stale(holder):
                raise LockedError(
                    f"output is being written by pid {holder.get('pid')} on {holder.get('host')!r} "
                    f"(lock {path!r}); wait for that run, or delete the lock if it is gone"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)  # stale: its process is dead (or the lock is unreadable)
            continue
        except OSError as err:
            raise OutputError(f"cannot create lock {path!r}: {err.strerror or err}") from err
        with os.fdopen(descriptor, "w") as handle:
            handle.write(record)
        return
    raise LockedError(f"cannot take lock {path!r}: it keeps being re-created by another run")


def _age(path: str) -> float:
    try:
        return time.time() - os.path.getmtime(path)
    except OSError:
        return float("inf")


def _is_stale(holder: dict[str, object]) -> bool:
    if holder.get("host") != socket.gethostname():
        return False  # cannot tell whether a process on another host is alive
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
