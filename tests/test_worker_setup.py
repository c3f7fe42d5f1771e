"""Batch-job workers get the same setup as local ones: the preload hook, its imports, glibc's settings."""

from __future__ import annotations

import pytest

from pixseg.cluster import (
    LOCAL_WORKER_MALLOC,
    OPENCV_ONE_THREAD,
    WORKER_IMPORTS_VARIABLE,
    jobqueue_arguments,
    with_worker_setup,
)
from pixseg.runner import WORKER_MODULES


def test_worker_setup_keeps_the_users_prologue_and_arguments_first():
    given = {"cores": 2, "job_script_prologue": ["module load x"], "worker_extra_args": ["--lifetime", "1h"]}
    options = with_worker_setup(given, ["pixseg.labelling", "pixseg.fitting"])
    assert options["cores"] == 2 and given["job_script_prologue"] == ["module load x"]  # not modified
    assert options["job_script_prologue"][0] == "module load x"
    assert f"export {WORKER_IMPORTS_VARIABLE}=pixseg.labelling,pixseg.fitting" in options["job_script_prologue"]
    assert options["worker_extra_args"] == ["--lifetime", "1h", "--preload", "pixseg.cluster"]


@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
def test_the_job_script_preloads_what_local_workers_preload(scheduler):
    """dask-jobqueue's own job script (no batch system needed to write it) carries the setup."""
    dask_jobqueue = pytest.importorskip("dask_jobqueue")
    cluster_class = getattr(dask_jobqueue, {"slurm": "SLURMCluster", "pbs": "PBSCluster"}[scheduler])
    options = with_worker_setup(jobqueue_arguments(scheduler, {}), WORKER_MODULES)
    with cluster_class(**options, scheduler_options={"dashboard_address": ":0"}) as cluster:
        script = cluster.job_script()
    worker_line = next(line for line in script.splitlines() if "distributed.cli.dask_worker" in line)
    assert "--preload pixseg.cluster" in worker_line
    exports = [line for line in script.splitlines() if line.startswith("export ")]
    assert f"export {WORKER_IMPORTS_VARIABLE}={','.join(WORKER_MODULES)}" in exports
    setup = {**LOCAL_WORKER_MALLOC, **OPENCV_ONE_THREAD}
    assert all(f"export {name}={value}" in exports for name, value in setup.items())
    assert script.index(exports[0]) < script.index(worker_line)
