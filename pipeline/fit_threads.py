"""Independent k-means fits side by side: a thread each, on the synchronous scheduler, one BLAS/OpenMP thread each.

A dask-ml fit of an in-memory sample is a loop of small dask graphs. Each Lloyd iteration spends
7-10 ms building, tokenising and scheduling its graph, holding the GIL, and the rest in the distance
and centre passes (scikit-learn's Cython, numba, BLAS), which release it: 10-18 ms at 200,000 rows,
1.5-2.5 ms at 20,000. Two fits in two threads overlap one's passes with the other's graph work, so
large samples gain and small ones barely do.
Each fit is deterministic and its thread count does not change its result, so :func:`map_fits`
returns exactly what running the fits one after the other returns, in the same order.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from typing import TypeVar

import dask

from pixseg.kmeans_engine import load_kmeans

Item = TypeVar("Item")
Result = TypeVar("Result")

#: Marks a thread that is running a task of :func:`map_fits` (the calling thread included).
_running = threading.local()


def fit_threads(tasks: int, workers: int | None = None) -> int:
    """Threads for ``tasks`` independent fits: ``workers`` (default: the usable cores), at most
    ``tasks``, at least 1; 1 inside a task of :func:`map_fits` (fits never nest pools)."""
    if getattr(_running, "task", False):
        return 1
    return max(1, min(tasks, workers if workers is not None else _usable_cores()))


def map_fits(function: Callable[[Item], Result], items: Sequence[Item], *, workers: int | None = None) -> list[Result]:
    """``[function(item) for item in items]``, run in up to :func:`fit_threads` threads.

    Each call of ``function`` runs with one BLAS and one OpenMP thread and, whatever scheduler is
    active (a distributed client included), dask's synchronous scheduler: the config is set once
    here, around all the tasks, never from a task. Inside a task, a nested ``map_fits`` runs its
    items one after the other in that task's thread.

    Parameters
    ----------
    function : callable
        One fit; must not depend on the thread that runs it.
    items : sequence
        Its arguments, one per task. Put the longest first: idle threads take the next in order.
    workers : int, optional
        Most threads; 1 runs every task in the calling thread. Does not change the results.

    Returns
    -------
    list
        The results, in the order of ``items``. The first exception raised by a task is raised
        here, after the tasks already started have finished.
    """
    if getattr(_running, "task", False):
        return [function(item) for item in items]
    threads = fit_threads(len(items), workers)
    with dask.config.set(scheduler="synchronous"), _one_thread_each() as limit_task:

        def run(item: Item) -> Result:
            with limit_task(), _task():
                return function(item)

        if threads == 1:
            return [run(item) for item in items]
        with ThreadPoolExecutor(threads, thread_name_prefix="pixseg-fit") as pool:
            return list(pool.map(run, items))


@contextmanager
def _one_thread_each() -> Iterator[Callable[[], AbstractContextManager[object]]]:
    """Limit BLAS (process-wide) and the calling thread's OpenMP to one thread; yield a function
    whose context limits the OpenMP threads of a task's thread too (OpenMP counts threads per thread).

    dask-ml is imported first: it loads scikit-learn's OpenMP library, so that the limit reaches it.
    """
    load_kmeans()
    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController()
    with controller.limit(limits=1):
        yield lambda: controller.limit(limits=1, user_api="openmp")


@contextmanager
def _task() -> Iterator[None]:
    _running.task = True
    try:
        yield
    finally:
        _running.task = False


def _usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
