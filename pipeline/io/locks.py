"""Output locks that hold across hosts and races: a lease on a lock file, renewed by a heartbeat.

One run writes an output at a time. Its lock is a small JSON file beside the output recording
the holder's host, pid, a unique token, the start time and a heartbeat time, which a daemon
thread of the holder renews every :data:`HEARTBEAT_SECONDS`. A lock is stale, and the next run
takes it over, when its heartbeat is older than :data:`LOCK_EXPIRY_SECONDS` (on any host: the
holder, or its host, died), or at once when it was taken on this host by a pid that no longer
runs. A lock file without a heartbeat (written by an earlier pixseg, or unreadable) counts its
modification time as the heartbeat.

Why a lease and not ``fcntl.flock``: a lock must hold on the shared filesystems of clusters,
where ``flock`` is unreliable: NFS emulates it with byte-range locks, Lustre refuses it unless
mounted with ``flock``, and mounts with ``localflocks`` grant it on each host separately, which
would let two hosts write one output without any error. ``pixseg info`` must also be able to say
who holds a lock, which a ``flock`` held on another host cannot tell. The lease needs only that
creating a hard link and renaming a file are atomic, which holds on local filesystems, NFS,
Lustre and GPFS alike; heartbeats compare clocks of hosts, which must agree to within
``LOCK_EXPIRY_SECONDS - HEARTBEAT_SECONDS``.

Every record is first written to a temporary file of its own, so no lock is ever seen half written:

- a free lock is created with ``os.link(temporary, lock)``, which fails when the lock exists;
- a stale lock is taken over only by the run that creates the claim file
  ``LOCK.takeover-<token of the stale record>-0`` (again by ``os.link``): however many runs judged
  one record stale at once, exactly one wins. The winner re-reads the lock, replaces it
  (``os.replace``) only if it still holds the record judged stale, re-reads it to confirm that it
  now holds its own token, and removes its claim; a run that comes later finds the new record.
  A claim left by a run that died while taking over expires like a lock, and the next number is
  claimed;
- the heartbeat and the release re-read the lock and rewrite or remove it only while it holds
  the holder's own token.

What remains: a holder alive but judged stale (stopped for longer than the expiry, or on a host
whose clock is far off) can race with the run taking its lock over. Its heartbeat thread then
finds the lock no longer its own and logs a warning.

A lock in object storage (an output URL) is an object created with ``If-None-Match: *`` and
renewed by one PUT a heartbeat; with no rename, a stale lock is overwritten and read back, which
two runs taking it over in the same instant could both pass (see :func:`_acquire_remote`).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from pixseg.errors import LockedError, OutputError
from pixseg.io.remote import info, is_url, read_bytes, remove, write_bytes

logger = logging.getLogger(__name__)

#: A lock whose heartbeat is older than this (seconds) is stale, whichever host holds it.
LOCK_EXPIRY_SECONDS = 60.0
#: How often (seconds) the holder renews the heartbeat of its lock.
HEARTBEAT_SECONDS = 10.0
#: How long (seconds) a run keeps retrying while other runs take one stale lock over.
_CONTENDED_SECONDS = 2.0
_RETRY_SECONDS = 0.02
#: ``os.link`` errors of filesystems without hard links: the lock file is then created with
#: ``O_EXCL`` and written in place (a reader may see it empty for a moment, and takes it as fresh).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK})
#: Largest lock record read (a record is about 150 bytes).
_MAX_RECORD = 4096


def lock_path_for(side_base: str) -> str:
    """Where the lock of an output lives: beside it (never inside an input)."""
    return side_base + ".lock"


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock, as its lock file records it.

    Attributes
    ----------
    path : str
        The lock file.
    token : str
        The holder's unique token; for a record without one (written by an earlier pixseg, or
        unreadable), the file's inode and modification time, which identify it just as well.
    host, pid : str or None, int or None
        Where the holder runs; None when the record does not say.
    started : float or None
        When the lock was taken (seconds since the epoch).
    heartbeat : float
        When the holder last renewed it (seconds since the epoch): the record's heartbeat, else
        the file's modification time.
    """

    path: str
    token: str
    host: str | None
    pid: int | None
    started: float | None
    heartbeat: float

    def heartbeat_age(self) -> float:
        """Seconds since the last heartbeat, by this host's clock (never negative)."""
        return max(0.0, time.time() - self.heartbeat)

    def is_stale(self, *, expiry: float = LOCK_EXPIRY_SECONDS) -> bool:
        """Whether the lock may be taken over: its heartbeat is older than ``expiry`` seconds, or
        its holder ran on this host and its pid no longer runs."""
        if self.heartbeat_age() > expiry:
            return True
        return self.host == socket.gethostname() and self.pid is not None and not pid_runs(self.pid)

    def describe(self) -> str:
        """``pid P on 'HOST' since TIME (heartbeat N s ago)``, for messages and ``pixseg info``."""
        who = f"pid {self.pid}" if self.pid is not None else "an unknown process"
        where = f" on {self.host!r}" if self.host is not None else ""
        since = ""
        if self.started is not None:
            since = " since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"{who}{where}{since} (heartbeat {self.heartbeat_age():.0f} s ago)"


def read_lock(path: str) -> LockHolder | None:
    """Who holds the lock file ``path``, or None if there is no lock.

    Returns
    -------
    LockHolder or None
        The holder as recorded; a record that is not valid JSON gives a holder with no host or
        pid whose heartbeat is the file's modification time. Whether it is stale is
        :meth:`LockHolder.is_stale`.

    Raises
    ------
    OutputError
        If the lock file exists but cannot be read.
    """
    if is_url(path):
        return _read_remote_lock(path)
    try:
        with open(path, "rb") as handle:
            status = os.fstat(handle.fileno())
            raw = handle.read(_MAX_RECORD)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise OutputError(f"cannot read lock {path!r}: {err.strerror or err}") from err
    return _holder(path, raw, f"inode-{status.st_ino}-{status.st_mtime_ns}", status.st_mtime)


def _read_remote_lock(url: str) -> LockHolder | None:
    """:func:`read_lock` of a lock object: its ETag and modification time stand in for the inode's."""
    found = info(url, output=True)
    if found is None:
        return None
    raw = read_bytes(url, limit=_MAX_RECORD)
    if raw is None:  # removed meanwhile
        return None
    modified = found.get("LastModified") or found.get("mtime")
    mtime = modified.timestamp() if hasattr(modified, "timestamp") else time.time()
    return _holder(url, raw, f"etag-{found.get('ETag', '')}".replace('"', ""), mtime)


def _holder(path: str, raw: bytes, fallback_token: str, mtime: float) -> LockHolder:
    """The holder a lock record ``raw`` names (``fallback_token`` and ``mtime`` for a record without them)."""
    try:
        record = json.loads(raw)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        record = {}
    token, host, pid = record.get("token"), record.get("host"), record.get("pid")
    heartbeat = _number(record.get("heartbeat"))
    return LockHolder(
        path=path,
        token=token if isinstance(token, str) and token else fallback_token,
        host=host if isinstance(host, str) else None,
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None,
        started=_number(record.get("started")),
        heartbeat=mtime if heartbeat is None else heartbeat,
    )


@contextlib.contextmanager
def output_lock(
    path: str, *, heartbeat_seconds: float = HEARTBEAT_SECONDS, expiry_seconds: float = LOCK_EXPIRY_SECONDS
) -> Iterator[None]:
    """Hold the lock file ``path`` for the duration of the block (see the module's notes).

    A free lock is created, a stale one is taken over atomically; while the block runs, a daemon
    thread renews the heartbeat every ``heartbeat_seconds``. On leaving the block the lock is
    removed, if it still holds this run's token.

    Parameters
    ----------
    path : str
        The lock file (:func:`lock_path_for`).
    heartbeat_seconds : float
        How often the heartbeat is renewed.
    expiry_seconds : float
        A lock whose heartbeat is older than this is stale.

    Raises
    ------
    LockedError
        If another live run holds it (the message names its host, pid and since when).
    OutputError
        If it cannot be created.
    """
    token = uuid.uuid4().hex
    started = (
        _acquire_remote(path, token, expiry=expiry_seconds)
        if is_url(path)
        else _acquire(path, token, expiry=expiry_seconds)
    )
    heartbeat = _Heartbeat(path, token, started, interval=heartbeat_seconds)
    heartbeat.start()
    try:
        yield
    finally:
        heartbeat.stop()
        _release(path, token)


def _acquire(path: str, token: str, *, expiry: float) -> float:
    """Create the lock ``path`` or take it over; returns when it was taken."""
    started = time.time()
    temporary = _temporary_path(path, token)
    try:
        _write_record(temporary, token, started=started, heartbeat=started)
    except OSError as err:
        raise OutputError(f"cannot create lock {path!r}: {err.strerror or err}") from err
    deadline = time.monotonic() + _CONTENDED_SECONDS
    try:
        while time.monotonic() < deadline:
            if _create_from(temporary, path):
                return started
            holder = read_lock(path)
            if holder is not None and not holder.is_stale(expiry=expiry):
                raise _held(holder)
            if holder is not None and _take_over(path, holder, temporary, token, expiry=expiry):
                logger.info("took over the stale lock %r of %s", path, holder.describe())
                return started
            time.sleep(_RETRY_SECONDS)  # released meanwhile, or another run is taking it over
    except OutputError:
        raise
    except OSError as err:
        raise OutputError(f"cannot create lock {path!r}: {err.strerror or err}") from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
    raise LockedError(f"cannot take lock {path!r}: other runs keep taking it over")


def _acquire_remote(url: str, token: str, *, expiry: float) -> float:
    """Create the lock object ``url`` (``If-None-Match: *``) or take a stale one over; returns when it was taken.

    An object store has no rename nor hard link: a stale lock is overwritten and read back, which
    two runs taking one stale lock over at the same moment could both pass (a warning says so).
    """
    started = time.time()
    record = _record(token, started=started, heartbeat=started)
    if write_bytes(url, record, create=True):
        return started
    holder = read_lock(url)
    if holder is not None and not holder.is_stale(expiry=expiry):
        raise _held(holder)
    logger.warning(
        "taking over the stale lock %r%s; object stores cannot make a takeover atomic",
        url,
        f" of {holder.describe()}" if holder is not None else "",
    )
    write_bytes(url, record)
    mine = read_lock(url)
    if mine is None or mine.token != token:
        raise LockedError(f"cannot take lock {url!r}: another run took it over at the same time")
    return started


def _take_over(path: str, stale: LockHolder, temporary: str, token: str, *, expiry: float) -> bool:
    """Replace the stale lock record ``stale`` by ours (in ``temporary``); False when another run
    is taking it over or the lock no longer holds ``stale``.

    Raises
    ------
    LockedError
        If, once replaced, the lock holds another run's record or none.
    """
    for attempt in itertools.count():
        claim = f"{path}.takeover-{stale.token}-{attempt}"
        if _create_from(temporary, claim):
            break
        claimant = read_lock(claim)
        if claimant is not None and not claimant.is_stale(expiry=expiry):
            return False  # another run is taking it over
    won = False
    try:
        current = read_lock(path)
        if current is None or current.token != stale.token:
            return False
        os.replace(temporary, path)
        mine = read_lock(path)
        won = mine is not None and mine.token == token
        if mine is None:  # its holder was alive after all, and released it
            raise LockedError(f"lock {path!r} was released by its holder while this run took it over; try again")
        if not won:  # its holder was alive after all, and renewed it
            raise _held(mine)
        return won
    finally:
        for number in range(attempt + 1) if won else (attempt,):  # claims before ours had expired
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{path}.takeover-{stale.token}-{number}")


def _release(path: str, token: str) -> None:
    """Remove the lock ``path`` if it still holds ``token``."""
    try:
        holder = read_lock(path)
    except OutputError as err:
        logger.warning("cannot release the lock: %s", err)
        return
    if holder is None or holder.token != token:
        logger.warning("the lock %r was not this run's any more: %s", path, _lost(holder))
        return
    if is_url(path):
        remove(path)
        return
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


class _Heartbeat:
    """Renews the heartbeat of the lock ``path`` held with ``token`` every ``interval`` seconds, in
    a daemon thread."""

    def __init__(self, path: str, token: str, started: float, *, interval: float) -> None:
        self._path, self._token, self._started, self._interval = path, token, started, interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pixseg-lock-heartbeat {path}", daemon=True)

    def start(self) -> None:
        """Start renewing."""
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing, and wait for a renewal in progress to end."""
        self._stopped.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                holder = read_lock(self._path)
                if holder is None or holder.token != self._token:
                    logger.warning("the lock %r was not this run's any more: %s", self._path, _lost(holder))
                    return
                _renew(self._path, self._token, started=self._started)
            except OSError as err:  # a passing filesystem error: the next heartbeat tries again
                logger.warning("cannot renew the lock %r: %s", self._path, err)


def _held(holder: LockHolder) -> LockedError:
    return LockedError(
        f"output is being written by {holder.describe()} (lock {holder.path!r}); "
        "wait for that run, or delete the lock if it is gone"
    )


def _lost(holder: LockHolder | None) -> str:
    return "it was removed" if holder is None else f"it was taken over by {holder.describe()}"


def _temporary_path(path: str, token: str) -> str:
    return f"{path}.{token}.tmp"


def _renew(path: str, token: str, *, started: float) -> None:
    """Rewrite the lock ``path`` with a new heartbeat: a local file through a temporary file and a
    rename, a lock object by one PUT."""
    if is_url(path):
        write_bytes(path, _record(token, started=started, heartbeat=time.time()))
        return
    temporary = _temporary_path(path, token)
    _write_record(temporary, token, started=started, heartbeat=time.time())
    os.replace(temporary, path)


def _record(token: str, *, started: float, heartbeat: float) -> bytes:
    """A lock record: host, pid, token, start and heartbeat, as JSON."""
    record = {"host": socket.gethostname(), "pid": os.getpid(), "token": token, "started": started}
    return json.dumps({**record, "heartbeat": heartbeat}).encode()


def _write_record(path: str, token: str, *, started: float, heartbeat: float) -> None:
    with open(path, "wb") as handle:
        handle.write(_record(token, started=started, heartbeat=heartbeat))


def _create_from(source: str, target: str) -> bool:
    """Create ``target`` with the content of ``source`` unless it exists; True if this call created it."""
    try:
        os.link(source, target)
        return True
    except FileExistsError:
        return False
    except OSError as err:
        if err.errno not in _NO_HARD_LINKS:
            raise
    with open(source, "rb") as handle:
        data = handle.read()
    try:
        descriptor = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    return True


def pid_runs(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (assumed so where that cannot be asked)."""
    if os.name != "posix":
        return True  # os.kill would end it: the heartbeat alone decides
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _number(value: object) -> float | None:
    """``value`` as a float if it is a JSON number, else None."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
