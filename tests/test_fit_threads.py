"""Fits side by side (``pixseg.fit_threads.map_fits``): really concurrent, one BLAS/OpenMP thread and
the synchronous scheduler in every task, results in order, no nested pools, limits restored."""

from __future__ import annotations

import threading

import dask
import pytest
from threadpoolctl import threadpool_info

from pixseg.fit_threads import fit_threads, map_fits


@pytest.fixture(autouse=True, scope="module")
def _libraries_loaded() -> None:
    """The first call imports dask-ml, which loads scikit-learn's OpenMP library: load it before comparing."""
    map_fits(lambda item: item, [0])


def _threads_of(user_api: str) -> set[int]:
    """The thread counts of the loaded libraries of ``user_api``, as the calling thread sees them."""
    return {library["num_threads"] for library in threadpool_info() if library["user_api"] == user_api}


def test_tasks_run_at_once_with_one_thread_each_on_the_synchronous_scheduler():
    both_started = threading.Barrier(2, timeout=30)  # breaks (and fails the test) unless two tasks run at once
    before = (_threads_of("blas"), _threads_of("openmp"), dask.config.get("scheduler", None))

    def task(item: int) -> tuple[int, int, str, set[int], set[int]]:
        both_started.wait()
        scheduler = dask.config.get("scheduler")
        return item, threading.get_ident(), scheduler, _threads_of("blas"), _threads_of("openmp")

    results = map_fits(task, [3, 1], workers=2)
    assert [r[0] for r in results] == [3, 1]  # in the order of the items
    assert len({r[1] for r in results}) == 2 and threading.get_ident() not in {r[1] for r in results}
    assert all(r[2] == "synchronous" and r[3] <= {1} and r[4] <= {1} for r in results)
    assert (_threads_of("blas"), _threads_of("openmp"), dask.config.get("scheduler", None)) == before


def test_one_worker_runs_every_task_in_the_calling_thread_in_order():
    seen: list[tuple[int, int]] = []
    assert map_fits(lambda item: seen.append((item, threading.get_ident())) or item * 2, [1, 2, 3], workers=1) == [
        2,
        4,
        6,
    ]
    assert seen == [(item, threading.get_ident()) for item in (1, 2, 3)]


def test_a_nested_map_runs_inside_its_task_thread():
    def outer(item: int) -> tuple[int, set[int]]:
        inner_threads = map_fits(lambda _: threading.get_ident(), range(4), workers=4)
        return fit_threads(4, workers=4), set(inner_threads) | {threading.get_ident()}

    for threads, idents in map_fits(outer, [0, 1], workers=2):
        assert threads == 1 and len(idents) == 1


def test_thread_count_is_bounded_by_tasks_and_workers():
    assert fit_threads(3, workers=2) == 2
    assert fit_threads(1, workers=8) == 1
    assert fit_threads(0, workers=2) == 1
    assert 1 <= fit_threads(100) <= 100


def test_the_first_failing_task_raises_and_the_limits_are_restored():
    before = (_threads_of("openmp"), dask.config.get("scheduler", None))

    def task(item: int) -> int:
        if item:
            raise ValueError(f"task {item}")
        return item

    with pytest.raises(ValueError, match="task 1"):
        map_fits(task, [0, 1, 2], workers=2)
    assert (_threads_of("openmp"), dask.config.get("scheduler", None)) == before
