"""dask-ml's KMeans as pixseg loads it: its numba kernel cached on disk, and tokenised by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
from dask.tokenize import tokenize

from pixseg.kmeans_engine import KERNEL_NAME, KMEANS_MODULE, load_kmeans

#: Loads the class in a fresh process, runs the kernel once and prints numba's cache counters.
_KERNEL_RUN = f"""
import importlib, json
import numpy as np
from pixseg.kmeans_engine import load_kmeans
load_kmeans()
kernel = getattr(importlib.import_module("{KMEANS_MODULE}"), "{KERNEL_NAME}")
sums = kernel(np.arange(12.0).reshape(6, 2), np.array([0, 1, 0, 1, 2, 2], dtype=np.int32), 3)
print(json.dumps({{"hits": sum(kernel.stats.cache_hits.values()),
                   "misses": sum(kernel.stats.cache_misses.values()), "sums": sums.tolist()}}))
"""


def test_load_kmeans_returns_dask_mls_class():
    from dask_ml.cluster import KMeans

    assert load_kmeans() is KMeans
    assert load_kmeans() is KMeans  # loaded once


def test_the_kernel_is_compiled_once_per_machine_then_loaded(tmp_path: Path):
    environment = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}

    def run() -> dict:
        done = subprocess.run([sys.executable, "-c", _KERNEL_RUN], env=environment, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    first, second = run(), run()
    assert (first["hits"], first["misses"]) == (0, 1)  # compiled, and stored
    assert (second["hits"], second["misses"]) == (1, 0)  # loaded from the cache
    assert list(tmp_path.rglob("*.nbi"))
    expected = [[4.0, 6.0], [8.0, 10.0], [18.0, 20.0]]  # rows (0, 2), (1, 3), (4, 5) summed
    assert first["sums"] == second["sums"] == expected


def test_the_kernel_has_a_fixed_token_and_other_numba_functions_keep_theirs():
    import importlib

    load_kmeans()
    kernel = getattr(importlib.import_module(KMEANS_MODULE), KERNEL_NAME)
    assert tokenize(kernel) == tokenize(kernel)

    @numba.njit
    def double(values: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
        return values * 2

    @numba.njit
    def triple(values: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
        return values * 3

    tokens = {tokenize(kernel), tokenize(double), tokenize(triple)}
    assert len(tokens) == 3
    assert tokenize(double) == tokenize(double)
