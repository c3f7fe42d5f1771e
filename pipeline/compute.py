"""The one place that computes: dask collections on the active scheduler, with progress for terminals and job logs."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import dask
from dask.delayed import Delayed


def compute(*collections: Any, progress: bool) -> Any:
    """Compute collections together on the active scheduler (shared tasks run once), with a
    progress bar on stderr if asked. ``None`` entries pass through. One collection -> its result."""
    # dask 2026.8 can hand back the results of mixed collection types (arrays and delayed
    # objects, even in a dict) in the wrong places: compute one type at a time
    todo = [c for c in collections if c is not None]
    if len({isinstance(c, Delayed) for c in todo}) > 1:
        raise TypeError("compute takes collections of one type at a time (dask arrays or delayed objects)")
    client = active_client()
    if client is None:
        from dask.diagnostics import ProgressBar

        bar = ProgressBar(out=sys.stderr, minimum=0.5) if progress else contextlib.nullcontext()
        with bar:
            results = list(dask.compute(*todo))
    else:
        futures = client.compute(todo)
        if progress:
            from distributed import progress as distributed_progress

            with contextlib.redirect_stdout(sys.stderr):
                distributed_progress(futures)
        results = client.gather(futures)
    filled = [None if c is None else results.pop(0) for c in collections]
    return filled[0] if len(filled) == 1 else tuple(filled)


def active_client() -> Any:
    """The distributed client of the active scheduler, or None under the threaded scheduler."""
    if dask.config.get("scheduler", None) != "dask.distributed":
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None
