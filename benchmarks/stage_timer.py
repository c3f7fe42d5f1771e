"""Time the stages of a pixseg run by wrapping each stage's entry point, where its caller looks it up."""

from __future__ import annotations

import contextlib
import functools
import importlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from unittest import mock


def timed(function: Callable[..., Any], log: list[tuple[str, float]], stage: str) -> Callable[..., Any]:
    """``function``, appending ``(stage, seconds)`` to ``log`` after each call (raised or not)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            log.append((stage, time.perf_counter() - started))

    return wrapper


@contextlib.contextmanager
def timing_stages(stages: Iterable[tuple[str, str, str]], log: list[tuple[str, float]]) -> Iterator[None]:
    """Within the block, every call of each ``(module, attribute, stage)`` of ``stages`` is
    :func:`timed` into ``log``, in call order (``module.attribute`` is patched: name the module
    that calls the function, as it looks it up there)."""
    with contextlib.ExitStack() as patches:
        for module_name, attribute, stage in stages:
            module = importlib.import_module(module_name)
            patches.enter_context(mock.patch.object(module, attribute, timed(getattr(module, attribute), log, stage)))
        yield
