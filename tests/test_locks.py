"""Output locks: leases with a heartbeat, atomic takeover of a stale lock by one of many racing runs."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import random
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pixseg.errors import LockedError
from pixseg.io import locks
from pixseg.io.locks import LOCK_EXPIRY_SECONDS, output_lock, read_lock

#: Processes racing for one stale lock, and how many times.
RACERS = 6
TRIALS = 20

_barriers: tuple[multiprocessing.synchronize.Barrier, multiprocessing.synchronize.Barrier] | None = None


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process of this host that has ended."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(ended.stdout)


def _write(path: Path, **record: object) -> None:
    path.write_text(json.dumps(record))


def _racer_setup(start: multiprocessing.synchronize.Barrier, done: multiprocessing.synchronize.Barrier) -> None:
    """Keep the barriers; make every read of a lock file slow by a random few milliseconds (a busy
    shared filesystem), which widens the windows between judging a lock and replacing it."""
    global _barriers
    _barriers = (start, done)
    jitter = random.Random(os.getpid())
    read = locks.read_lock

    def slow_read_lock(path: str) -> locks.LockHolder | None:
        time.sleep(jitter.uniform(0.0, 0.003))
        holder = read(path)
        time.sleep(jitter.uniform(0.0, 0.003))
        return holder

    locks.read_lock = slow_read_lock  # type: ignore[assignment]


def _race(lock: str) -> str:
    """Try to take ``lock`` at the same moment as the other racers; the winner holds it until every
    racer has tried, then checks that it still holds it. Returns won, locked or what went wrong."""
    assert _barriers is not None
    start, done = _barriers
    start.wait()
    try:
        with output_lock(lock):
            mine = read_lock(lock)
            done.wait()
            time.sleep(0.05)
            still = read_lock(lock)
            if mine is None or mine.pid != os.getpid():
                return f"entered while {mine} held it"
            if still is None or still.token != mine.token:
                return f"lost it to {still}"
            return "won"
    except LockedError:
        done.wait()
        return "locked"


@pytest.mark.slow
def test_one_of_many_racing_runs_takes_over_a_stale_lock(tmp_path, dead_pid):
    context = multiprocessing.get_context("spawn")
    start, done = context.Barrier(RACERS, timeout=60), context.Barrier(RACERS, timeout=60)
    lock = tmp_path / "out.zarr.lock"
    stale_records = [
        {"host": "another-host", "pid": 1, "token": "t", "started": 0.0, "heartbeat": time.time() - 1000},
        {"host": socket.gethostname(), "pid": dead_pid, "token": "t", "started": 0.0, "heartbeat": time.time()},
        {"host": socket.gethostname(), "pid": dead_pid, "started": 0.0},  # an earlier pixseg's lock
    ]
    with context.Pool(RACERS, initializer=_racer_setup, initargs=(start, done)) as pool:
        for trial in range(TRIALS):
            record = dict(stale_records[trial % len(stale_records)])
            if "token" in record:
                record["token"] = f"stale-{trial}"
            _write(lock, **record)
            outcomes = pool.map(_race, [str(lock)] * RACERS, chunksize=1)
            assert sorted(outcomes) == ["locked"] * (RACERS - 1) + ["won"], (trial, outcomes)
            assert os.listdir(tmp_path) == [], "the winner's release, claims and temporary files leave nothing"


def test_a_fresh_lock_of_another_host_is_held(tmp_path):
    lock = tmp_path / "out.zarr.lock"
    since = time.time() - 3600
    _write(lock, host="node17", pid=4242, token="theirs", started=since, heartbeat=time.time() - 5)
    with pytest.raises(LockedError) as caught:
        with output_lock(str(lock)):
            pass
    message = str(caught.value)
    expected_since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
    assert f"pid 4242 on 'node17' since {expected_since} (heartbeat 5 s ago)" in message
    assert "\n" not in message
    assert json.loads(lock.read_text())["token"] == "theirs"


def test_a_lock_of_another_host_with_an_old_heartbeat_is_taken_over(tmp_path, caplog):
    lock = tmp_path / "out.zarr.lock"
    old = time.time() - LOCK_EXPIRY_SECONDS - 1
    _write(lock, host="node17", pid=4242, token="theirs", started=old, heartbeat=old)
    with caplog.at_level(logging.INFO, logger="pixseg.io.locks"), output_lock(str(lock)):
        holder = read_lock(str(lock))
        assert holder is not None and holder.host == socket.gethostname() and holder.pid == os.getpid()
        assert holder.token != "theirs" and not holder.is_stale()
    assert "took over the stale lock" in caplog.text and "pid 4242 on 'node17'" in caplog.text
    assert not lock.exists()


def test_a_lock_of_this_host_whose_process_ended_is_stale_at_once(tmp_path, dead_pid):
    lock = tmp_path / "out.zarr.lock"
    _write(lock, host=socket.gethostname(), pid=dead_pid, token="theirs", started=time.time(), heartbeat=time.time())
    assert read_lock(str(lock)).is_stale()
    with output_lock(str(lock)):
        assert read_lock(str(lock)).pid == os.getpid()


def test_the_heartbeat_is_renewed_while_held(tmp_path):
    lock = str(tmp_path / "out.zarr.lock")
    with output_lock(lock, heartbeat_seconds=0.05):
        first = read_lock(lock)
        time.sleep(0.5)
        later = read_lock(lock)
    assert first is not None and later is not None
    assert later.token == first.token and later.started == first.started
    assert later.heartbeat > first.heartbeat + 0.2


def test_release_and_heartbeat_leave_someone_elses_lock_alone(tmp_path, caplog):
    lock = tmp_path / "out.zarr.lock"
    with caplog.at_level(logging.WARNING, logger="pixseg.io.locks"), output_lock(str(lock), heartbeat_seconds=0.05):
        _write(lock, host="node17", pid=4242, token="theirs", started=time.time(), heartbeat=123.0)
        time.sleep(0.3)  # heartbeats come due: they must not renew another run's record
    assert json.loads(lock.read_text()) == {
        "host": "node17",
        "pid": 4242,
        "token": "theirs",
        "started": pytest.approx(time.time(), abs=5),
        "heartbeat": 123.0,
    }
    assert "was not this run's any more: it was taken over by pid 4242 on 'node17'" in caplog.text


def test_a_claim_left_by_a_run_that_died_while_taking_over_expires(tmp_path, dead_pid):
    lock = tmp_path / "out.zarr.lock"
    _write(lock, host="node17", pid=4242, token="theirs", started=0.0, heartbeat=0.0)
    _write(tmp_path / "out.zarr.lock.takeover-theirs-0", host=socket.gethostname(), pid=dead_pid, token="claimant")
    with output_lock(str(lock)):
        assert read_lock(str(lock)).pid == os.getpid()
    assert os.listdir(tmp_path) == []


def test_locks_work_without_hard_links(tmp_path, monkeypatch):
    def no_links(source, target):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(locks.os, "link", no_links)
    lock = str(tmp_path / "out.zarr.lock")
    with output_lock(lock):
        assert read_lock(lock).pid == os.getpid()
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            with output_lock(lock):
                pass
    assert os.listdir(tmp_path) == []


def test_unreadable_lock_is_held_while_fresh_and_identified_by_its_file(tmp_path):
    lock = tmp_path / "out.zarr.lock"
    lock.write_text("{not json")
    holder = read_lock(str(lock))
    assert holder is not None and holder.pid is None and holder.token.startswith("inode-")
    assert not holder.is_stale()
    with pytest.raises(LockedError, match="an unknown process"):
        with output_lock(str(lock)):
            pass
    old = time.time() - LOCK_EXPIRY_SECONDS - 1
    os.utime(lock, (old, old))
    with output_lock(str(lock)):
        assert read_lock(str(lock)).pid == os.getpid()


@pytest.mark.slow
def test_info_names_the_holder_of_an_outputs_lock(tmp_path, capsys, blob_tiff):
    from pixseg.cli import main

    out = tmp_path / "labels.zarr"
    with output_lock(str(out) + ".lock"):
        assert main(["info", str(out)]) == 0
        stdout = capsys.readouterr().out
        assert f"lock: held by pid {os.getpid()} on {socket.gethostname()!r} since " in stdout
        assert re.search(r"\(heartbeat \d+ s ago\)", stdout) and "not written yet" in stdout
    assert main(["segment", blob_tiff, str(out), "-q"]) == 0
    capsys.readouterr()
    _write(Path(str(out) + ".lock"), host="node17", pid=4242, token="t", started=0.0, heartbeat=0.0)
    assert main(["info", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "complete: complete" in stdout and "lock: stale (the next run takes it over): left by pid 4242" in stdout
