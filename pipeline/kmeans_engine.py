"""dask-ml's KMeans class, loaded once per process and made cheap to drive.

Two costs of driving dask-ml's Lloyd iterations do not come from the iterations themselves, and
:func:`load_kmeans` removes both without changing a single result:

- dask-ml compiles its numba kernel ``_centers_dense`` (each iteration's per-cluster sums) without
  numba's on-disk cache, so every process paid 0.8-1.0 s of LLVM compilation on its first fit (half
  of a 4096^2 run's fit stage). Numba's cache is switched on for it: the first fit on a machine
  compiles and stores it, as numba does for pixseg's own kernels, and later processes load it in
  about 6 ms. Where numba finds no writable cache location, the kernel is compiled as before.
- dask tokenises the kernel in every iteration by pickling numba's reduced state (about 1 ms an
  iteration, 12% of an iteration's graph work on an in-memory sample). It gets a fixed token: the
  kernel is one function for the life of the process, so its name identifies it.
"""

from __future__ import annotations

import importlib
import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)

#: The module of dask-ml's KMeans and its numba kernel.
KMEANS_MODULE = "dask_ml.cluster.k_means"
#: The kernel's name in that module.
KERNEL_NAME = "_centers_dense"

_lock = threading.Lock()
_kmeans_class: type | None = None


def load_kmeans() -> type:
    """Import dask-ml's ``KMeans`` (once per process), with its kernel cached and cheaply tokenised.

    Thread-safe; the first call pays the import of dask-ml (about 1 s: it imports scikit-learn,
    scipy.stats, pandas and distributed).

    Returns
    -------
    type
        ``dask_ml.cluster.KMeans``.
    """
    global _kmeans_class
    with _lock:
        if _kmeans_class is None:
            module = importlib.import_module(KMEANS_MODULE)
            kernel = getattr(module, KERNEL_NAME)
            _cache_kernel(kernel)
            _fix_token(kernel, f"{KMEANS_MODULE}.{KERNEL_NAME}")
            _kmeans_class = module.KMeans
        return _kmeans_class


def _cache_kernel(kernel: Any) -> None:
    """Switch numba's on-disk cache on for ``kernel`` (a numba dispatcher), unless it has no cache
    location it may write (then it is compiled in memory, as dask-ml does)."""
    try:
        kernel.enable_caching()
    except RuntimeError as error:  # numba: "cannot cache function ...: no locator available"
        logger.debug("dask-ml's %s is compiled without a cache: %s", KERNEL_NAME, error)


def _fix_token(kernel: Any, token: str) -> None:
    """Make dask tokenise ``kernel`` (a numba dispatcher) as ``token``; every other dispatcher keeps
    the token dask gives it."""
    from dask.tokenize import normalize_token

    kind = type(kernel)
    tokenise_others = normalize_token.dispatch(kind)  # dask's numba handler (registered on first dispatch)

    @normalize_token.register(kind)
    def _tokenise(dispatcher: Any) -> Any:
        return ("numba-kernel", token) if dispatcher is kernel else tokenise_others(dispatcher)
