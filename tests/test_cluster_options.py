"""Scheduler sizing without a batch system: the CPUs a process may use, dask-jobqueue's job keywords."""

from __future__ import annotations

import gc
import logging
import os

import dask
import pytest

from pixseg import cluster
from pixseg.cli import main
from pixseg.cluster import JOB_DEFAULTS, available_cpus, jobqueue_arguments, open_scheduler
from pixseg.errors import ParameterError
from pixseg.options import ComputeOptions


@pytest.fixture
def four_cpus(monkeypatch):
    """A process allowed on 4 of the machine's 64 CPUs, outside SLURM."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)


@pytest.mark.parametrize(("slurm", "expected"), [(None, 4), ("2", 2), ("8", 4), ("0", 4), ("abc", 4), (" 3 ", 3)])
def test_available_cpus_is_the_affinity_or_slurms_share_whichever_is_smaller(four_cpus, monkeypatch, slurm, expected):
    if slurm is not None:
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", slurm)
    assert available_cpus() == expected


def test_available_cpus_without_affinity(monkeypatch, four_cpus):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    assert available_cpus() == 64
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    assert available_cpus() == 6


def test_threads_default_to_the_available_cpus(monkeypatch):
    monkeypatch.setattr(cluster, "available_cpus", lambda: 3)
    with open_scheduler("threads"):
        assert dask.config.get("num_workers") == 3
    with open_scheduler("threads", workers=5):
        assert dask.config.get("num_workers") == 5


@pytest.fixture
def jobqueue_config():
    """dask-jobqueue's built-in configuration registered (it is, once dask_jobqueue is imported)."""
    pytest.importorskip("dask_jobqueue")


#: A cluster dask-jobqueue refuses is left half made, and warns when collected.
refused_cluster = pytest.mark.filterwarnings("ignore:unclosed cluster:ResourceWarning")


@pytest.fixture
def refused_cluster_collected():
    """Collect the half-made cluster within the test that made it (whose marks ignore its warning)."""
    yield
    gc.collect()


@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
def test_job_size_defaults_when_neither_options_nor_config_give_one(jobqueue_config, caplog, scheduler):
    given = {"queue": "short"}
    with caplog.at_level(logging.INFO, logger="pixseg.cluster"):
        arguments = jobqueue_arguments(scheduler, given)
    assert (
        arguments
        == {"queue": "short", "cores": 1, "memory": "4GB", "walltime": "01:00:00"}
        == {
            "queue": "short",
            **JOB_DEFAULTS,
        }
    )
    assert given == {"queue": "short"}
    assert [r.getMessage() for r in caplog.records] == [
        f"{scheduler} jobs: pixseg's defaults cores=1, memory=4GB, walltime=01:00:00; set them with "
        "--worker-cores (compute.cores), --worker-memory (compute.memory), --walltime (compute.walltime)"
    ]


def test_options_and_the_users_jobqueue_config_win_over_the_defaults(jobqueue_config, caplog, monkeypatch):
    options = ComputeOptions(scheduler="slurm", cores=8, walltime="04:00:00").jobqueue_options()
    with caplog.at_level(logging.INFO, logger="pixseg.cluster"):
        assert jobqueue_arguments("slurm", options) == {"cores": 8, "walltime": "04:00:00", "memory": "4GB"}
        assert "defaults memory=4GB; set them with --worker-memory (compute.memory)" in caplog.text
        caplog.clear()
        with dask.config.set({"jobqueue.slurm.memory": "16GB", "jobqueue.slurm.walltime": "02:00:00"}):
            assert jobqueue_arguments("slurm", options) == {"cores": 8, "walltime": "04:00:00"}
            assert jobqueue_arguments("slurm", {}) == {"cores": 1}
    monkeypatch.setenv("DASK_JOBQUEUE__SLURM__WALLTIME", "00:30:00")  # as dask-jobqueue's own, but the user's
    monkeypatch.setenv("DASK_JOBQUEUE__SLURM__CORES", "2")
    dask.config.refresh()
    try:
        assert jobqueue_arguments("slurm", {}) == {"memory": "4GB"}
    finally:
        monkeypatch.undo()
        dask.config.refresh()


def test_cli_flags_set_the_job_size():
    from pixseg.cli import _build_parser, options_from_args

    args = _build_parser().parse_args(
        ["segment", "in.tif", "out.zarr", "--worker-cores", "4", "--worker-memory", "16GB", "--walltime", "02:00:00"]
    )
    options = options_from_args(ComputeOptions, args)
    assert options.jobqueue_options() == {"cores": 4, "memory": "16GB", "walltime": "02:00:00"}


@refused_cluster
def test_a_cluster_dask_jobqueue_refuses_names_the_options(jobqueue_config, refused_cluster_collected):
    with pytest.raises(ParameterError) as caught:
        with open_scheduler("slurm", jobqueue={"memory": "lots"}):
            pass
    message = str(caught.value)
    del caught
    assert "dask-jobqueue cannot set up the cluster" in message and "'lots'" in message
    for name in ("--worker-cores", "compute.cores", "--worker-memory", "compute.memory", "--walltime"):
        assert name in message
    assert "jobqueue.slurm.*" in message and "SLURMCluster(" not in message


@refused_cluster
def test_cli_reports_a_refused_cluster_in_one_line(
    jobqueue_config, refused_cluster_collected, tmp_path, capsys, blob_tiff
):
    code = main(["segment", blob_tiff, str(tmp_path / "o.zarr"), "--scheduler", "pbs", "--worker-memory", "lots", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --scheduler pbs: dask-jobqueue cannot")
    assert "--worker-memory (compute.memory)" in err and "Traceback" not in err
