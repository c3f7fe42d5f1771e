"""Where dask computes: the threaded scheduler, a local cluster, or an existing scheduler."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import logging
import os
import shlex
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import dask

from pixseg.errors import ParameterError
from pixseg.options import SCHEDULERS, ComputeOptions

logger = logging.getLogger(__name__)

#: dask-jobqueue cluster classes of the batch-system schedulers.
JOBQUEUE_CLUSTERS = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}
#: The size of one batch job where neither pixseg's options nor dask-jobqueue's configuration
#: (``jobqueue.slurm.cores``...) give one: a small job that any queue accepts.
JOB_DEFAULTS: dict[str, Any] = {"cores": 1, "memory": "4GB", "walltime": "01:00:00"}
#: The option of each job keyword: CLI flag and config key.
_JOB_OPTIONS = {
    "cores": ("--worker-cores", "compute.cores"),
    "memory": ("--worker-memory", "compute.memory"),
    "walltime": ("--walltime", "compute.walltime"),
}


#: glibc settings for worker processes, local and batch jobs (merged over distributed's own pre-spawn
#: environment): buffers up to 16 MiB come from the heap and up to 32 MiB of freed heap is kept,
#: instead of distributed's 64 KiB trim threshold, which returns (and page-faults back in) every
#: chunk-sized buffer (measured in docs/performance.md).
LOCAL_WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(16 << 20), "MALLOC_TRIM_THRESHOLD_": str(32 << 20)}
#: OpenCV's own thread pool cut to one thread, in the console script and in every worker (OpenCV reads
#: it when first imported): pixseg already runs one task per core, and OpenCV's pool on top of dask's
#: threads oversubscribes the cores (the texture label pass took 10% longer on 2 cores).
OPENCV_ONE_THREAD = {"OPENCV_FOR_THREADS_NUM": "1"}
#: Environment variable naming the modules the workers' preload hook imports (comma-separated).
WORKER_IMPORTS_VARIABLE = "PIXSEG_WORKER_IMPORTS"


def dask_setup(worker: Any) -> None:
    """distributed's preload hook, run in each worker process as it starts (local workers and batch
    jobs alike: see ``open_scheduler`` and :func:`with_worker_setup`).

    Imports the modules it is given (``PIXSEG_WORKER_IMPORTS``: the modules pixseg's tasks run,
    named by the caller of :func:`open_scheduler`), so that happens while the cluster starts
    rather than in the first tasks, then freezes the imported objects out of the cyclic garbage
    collector (``gc.freeze``), as the console script does for its own process.
    """
    for name in filter(None, os.environ.get(WORKER_IMPORTS_VARIABLE, "").split(",")):
        importlib.import_module(name)
    gc.freeze()


@contextlib.contextmanager
def tune_process() -> Iterator[None]:
    """Tune a process that pixseg owns (the console script), for the duration of the block.

    - glibc hands freed chunk buffers back promptly (:func:`release_freed_memory_promptly`);
    - the imported libraries' objects (dask, zarr, scikit-learn: about 250,000) are frozen out of
      the cyclic garbage collector (``gc.freeze``) before the run, and everything left after it, so
      full collections during the run and the interpreter's last one at exit skip them;
    - OpenCV, imported later by the features, keeps to one thread (``OPENCV_ONE_THREAD``, unless the
      environment already sets it).

    Never called on import or by a library function: a notebook's process is left alone.
    """
    release_freed_memory_promptly()
    for name, value in OPENCV_ONE_THREAD.items():
        os.environ.setdefault(name, value)
    gc.freeze()
    try:
        yield
    finally:
        gc.freeze()


def open_compute(
    compute: ComputeOptions, *, worker_imports: Sequence[str] = ()
) -> contextlib.AbstractContextManager[object | None]:
    """:func:`open_scheduler` for a :class:`~pixseg.options.ComputeOptions`.

    ``worker_imports`` are the modules local workers import as they start (see :func:`dask_setup`).
    """
    return open_scheduler(
        compute.scheduler,
        workers=compute.workers,
        memory_limit=compute.memory_limit,
        jobqueue=compute.jobqueue_options(),
        lifetime=compute.lifetime,
        lifetime_stagger=compute.lifetime_stagger,
        dashboard_address=compute.dashboard_address,
        startup_timeout=compute.startup_timeout,
        worker_imports=worker_imports,
    )


@contextlib.contextmanager
def open_scheduler(
    scheduler: str = "threads",
    *,
    workers: int | None = None,
    memory_limit: str | None = None,
    jobqueue: Mapping[str, Any] | None = None,
    lifetime: str | None = None,
    lifetime_stagger: str | None = None,
    dashboard_address: str = "127.0.0.1:0",
    startup_timeout: float | None = None,
    worker_imports: Sequence[str] = (),
) -> Iterator[object | None]:
    """Make ``scheduler`` the active dask scheduler for the duration of the block.

    Parameters
    ----------
    scheduler : str
        ``"threads"`` (embedded, nothing to set up), ``"local"`` (a ``distributed.LocalCluster``
        of ``workers`` single-threaded processes, dashboard on localhost only), ``"slurm"`` or
        ``"pbs"`` (a dask-jobqueue cluster whose workers run as batch jobs), or the address
        of a running scheduler (``tcp://host:port``).
    workers : int, optional
        Threads (``threads``), worker processes (``local``; default for both: the CPUs this
        process may use, :func:`available_cpus`) or batch jobs (``slurm``/``pbs``; default 1).
    memory_limit : str, optional
        Memory limit of each ``local`` worker (``"4GB"``); default: the machine's memory shared out.
    jobqueue : mapping, optional
        Keyword arguments of the dask-jobqueue cluster (``cores``, ``memory``, ``walltime``,
        ``queue``, ``account``, ``job_extra_directives``, ``interface``, ``log_directory``...);
        those left out come from dask-jobqueue's configuration (``jobqueue.yaml``,
        ``DASK_JOBQUEUE__SLURM__*`` variables), and the job size from ``JOB_DEFAULTS`` where
        neither gives one (see :func:`jobqueue_arguments`).
    lifetime, lifetime_stagger : str, optional
        ``slurm``/``pbs``: workers retire after ``lifetime`` (e.g. ``"55m"``, before the job's
        wall time) and the cluster adapts to keep ``workers`` jobs, so a run outlives one job.
    dashboard_address : str
        Where the distributed dashboard of ``local``/``slurm``/``pbs`` binds (default: localhost,
        a free port); its link is logged.
    startup_timeout : float, optional
        ``slurm``/``pbs``: seconds to wait for the first worker (default: as long as the queue takes).

    Yields
    ------
    distributed.Client or None
        The client, or ``None`` for the threaded scheduler.

    Raises
    ------
    ParameterError
        For an unknown scheduler name, a bad worker count, a batch-system cluster that
        dask-jobqueue cannot set up, or no worker within ``startup_timeout``.
    """
    if workers is not None and workers < 1:
        raise ParameterError(f"--workers must be >= 1, got {workers!r}")
    if scheduler == "threads":
        with dask.config.set(scheduler="threads", num_workers=workers or available_cpus()):
            yield None
        return
    if scheduler == "local":
        from distributed import Client, LocalCluster

        n_workers = workers or available_cpus()
        environ = _worker_environ(worker_imports)
        with (
            _environ_restored(environ),
            dask.config.set({"distributed.nanny.pre-spawn-environ": environ}),
            LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=dashboard_address,
                memory_limit=memory_limit or "auto",
                preload=[__name__],  # runs dask_setup below in each worker as it starts
            ) as cluster,
            Client(cluster) as client,
        ):
            logger.info("local cluster of %d workers; dashboard %s", n_workers, client.dashboard_link)
            yield client
        return
    if scheduler in JOBQUEUE_CLUSTERS:
        with _open_jobqueue(
            scheduler,
            jobs=workers or 1,
            options=with_worker_setup(dict(jobqueue or {}), worker_imports),
            lifetime=lifetime,
            lifetime_stagger=lifetime_stagger,
            dashboard_address=dashboard_address,
            startup_timeout=startup_timeout,
        ) as client:
            yield client
        return
    if "://" in scheduler:
        from distributed import Client

        try:
            client = Client(scheduler, timeout="20s")
        except OSError as err:
            raise ParameterError(f"--scheduler: cannot connect to {scheduler!r}: {err}") from err
        with client:
            logger.info("connected to %s; dashboard %s", scheduler, client.dashboard_link)
            yield client
        return
    raise ParameterError(
        f"--scheduler {scheduler!r} is not known; use {', '.join(SCHEDULERS)} or a scheduler address tcp://HOST:PORT"
    )


def available_cpus() -> int:
    """The CPUs this process may use: its CPU affinity (where the system tells it) and, in a SLURM
    job, ``SLURM_CPUS_PER_TASK``, whichever is smaller; else the machine's CPU count.

    A job step of a batch system may run on a few of a node's cores: sizing threads or workers by
    ``os.cpu_count()`` would oversubscribe them.
    """
    counts = []
    if hasattr(os, "sched_getaffinity"):
        counts.append(len(os.sched_getaffinity(0)))
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        counts.append(int(slurm))
    return max(1, min(counts)) if counts else os.cpu_count() or 1


def jobqueue_arguments(scheduler: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of the dask-jobqueue cluster of ``scheduler``: ``options``, with the job
    size (cores, memory, walltime) from ``JOB_DEFAULTS`` where neither ``options`` nor the
    user's dask-jobqueue configuration gives it (logged in one line).

    dask-jobqueue's built-in ``walltime`` (30 minutes) is not the user's configuration: it is
    replaced like a missing value; one the user configured is kept (in ``jobqueue.yaml``,
    ``DASK_JOBQUEUE__SLURM__WALLTIME``, or another value through ``dask.config.set``).

    Parameters
    ----------
    scheduler : str
        ``"slurm"`` or ``"pbs"``.
    options : mapping
        Keyword arguments given (:meth:`pixseg.options.ComputeOptions.jobqueue_options`).

    Returns
    -------
    dict
        A new dict; ``options`` is not modified.
    """
    arguments = dict(options)
    filled = {
        key: value
        for key, value in JOB_DEFAULTS.items()
        if arguments.get(key) is None and _configured(f"jobqueue.{scheduler}.{key}") is None
    }
    if filled:
        given = ", ".join(f"{key}={value}" for key, value in filled.items())
        flags = ", ".join(f"{_JOB_OPTIONS[key][0]} ({_JOB_OPTIONS[key][1]})" for key in filled)
        logger.info("%s jobs: pixseg's defaults %s; set them with %s", scheduler, given, flags)
    return {**arguments, **filled}


def _configured(key: str) -> Any:
    """The value of dask config ``key`` the user set (files, ``DASK_*`` variables, ``dask.config.set``),
    or None where only a package's built-in default (or nothing) sets it."""
    value = dask.config.get(key, None)
    if value is None:
        return None
    built_in = None
    for defaults in dask.config.defaults:
        built_in = dask.config.get(key, built_in, config=dict(defaults))
    if value != built_in:
        return value
    return dask.config.get(key, None, config=dask.config.collect())


def _worker_environ(worker_imports: Sequence[str]) -> dict[str, Any]:
    """distributed's pre-spawn environment for worker processes, with ``LOCAL_WORKER_MALLOC``,
    ``OPENCV_ONE_THREAD`` and the modules the preload hook imports over it."""
    return {
        **dask.config.get("distributed.nanny.pre-spawn-environ", default={}),
        **LOCAL_WORKER_MALLOC,
        **OPENCV_ONE_THREAD,
        WORKER_IMPORTS_VARIABLE: ",".join(worker_imports),
    }


@contextlib.contextmanager
def _environ_restored(names: Iterable[str]) -> Iterator[None]:
    """Put the variables ``names`` of this process's environment back as they were on leaving the block.

    distributed's nanny copies its pre-spawn environment into the environment of the process that
    starts the workers, and the next nanny's values give way to what is there. Without this, a
    second local cluster in the same process (an API call after another) would get the first
    one's worker imports, and a library call would leave its settings in its host's environment.
    """
    before = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def with_worker_setup(options: Mapping[str, Any], worker_imports: Sequence[str]) -> dict[str, Any]:
    """dask-jobqueue keyword arguments ``options`` with the setup local workers get: each batch job
    exports ``LOCAL_WORKER_MALLOC``, ``OPENCV_ONE_THREAD`` and the modules to import (``job_script_prologue``), and its
    worker runs :func:`dask_setup` as it starts (``--preload pixseg.cluster`` in ``worker_extra_args``).

    The user's own prologue lines and worker arguments are kept, before pixseg's.
    """
    environ = {**LOCAL_WORKER_MALLOC, **OPENCV_ONE_THREAD, WORKER_IMPORTS_VARIABLE: ",".join(worker_imports)}
    return {
        **options,
        "job_script_prologue": [
            *options.get("job_script_prologue", []),
            *(f"export {name}={shlex.quote(value)}" for name, value in environ.items()),
        ],
        "worker_extra_args": [*options.get("worker_extra_args", []), "--preload", __name__],
    }


@contextlib.contextmanager
def _open_jobqueue(
    scheduler: str,
    *,
    jobs: int,
    options: dict[str, Any],
    lifetime: str | None,
    lifetime_stagger: str | None,
    dashboard_address: str,
    startup_timeout: float | None,
) -> Iterator[object]:
    """A dask-jobqueue cluster of ``jobs`` batch jobs and a client to it (see :func:`open_scheduler`)."""
    try:
        import dask_jobqueue
    except ImportError as err:
        raise ParameterError(f"--scheduler {scheduler} needs dask-jobqueue: pip install 'pixseg-ooc[cluster]'") from err
    from distributed import Client

    cluster_class = getattr(dask_jobqueue, JOBQUEUE_CLUSTERS[scheduler])
    options = jobqueue_arguments(scheduler, options)
    if lifetime is not None:
        extra = ["--lifetime", lifetime]
        if lifetime_stagger is not None:
            extra += ["--lifetime-stagger", lifetime_stagger]
        options["worker_extra_args"] = [*options.get("worker_extra_args", []), *extra]
    options["scheduler_options"] = {"dashboard_address": dashboard_address, **options.get("scheduler_options", {})}
    if options.get("log_directory"):
        os.makedirs(options["log_directory"], exist_ok=True)
    try:
        cluster = cluster_class(**options)
    except (TypeError, ValueError) as err:
        raise ParameterError(_jobqueue_failure(scheduler, err)) from err
    with cluster, Client(cluster) as client:
        logger.debug("%s job script:\n%s", scheduler, cluster.job_script())
        if lifetime is not None:  # retiring workers are replaced by new jobs
            cluster.adapt(minimum_jobs=jobs, maximum_jobs=jobs)
        else:
            cluster.scale(jobs=jobs)
        logger.info(
            "%s cluster of %d job(s) (%s); dashboard %s", scheduler, jobs, _job_summary(options), client.dashboard_link
        )
        try:
            client.wait_for_workers(1, timeout=startup_timeout)
        except TimeoutError as err:
            logs = options.get("log_directory") or "the job's working directory"
            raise ParameterError(
                f"--scheduler {scheduler}: no worker started within {startup_timeout:g} s; "
                f"check the queue (squeue/qstat) and the job logs in {logs!r}"
            ) from err
        yield client


def _jobqueue_failure(scheduler: str, err: Exception) -> str:
    """The one-line message of a cluster dask-jobqueue cannot set up: its reason, and where the job
    size is set (pixseg's flags and config keys, or dask-jobqueue's configuration)."""
    reason = " ".join(str(err).split())
    options = ", ".join(f"{flag} ({key})" for flag, key in _JOB_OPTIONS.values())
    return (
        f"--scheduler {scheduler}: dask-jobqueue cannot set up the cluster: {reason}; set the job size with "
        f"{options}, other job keywords under compute.jobqueue, or dask-jobqueue's configuration "
        f"(jobqueue.{scheduler}.*)"
    )


def _job_summary(options: Mapping[str, Any]) -> str:
    keys = ("cores", "memory", "processes", "walltime", "queue", "account")
    described = [f"{key}={options[key]}" for key in keys if options.get(key) is not None]
    return ", ".join(described) or "dask-jobqueue defaults"


def release_freed_memory_promptly() -> None:
    """Make glibc hand freed chunk buffers back to the system (no-op elsewhere).

    With many threads, glibc keeps freed buffers in per-thread arenas, so the resident size of
    a long threaded run creeps up with the number of chunks processed (docs/performance.md).
    Serving buffers of 1 MiB and more by ``mmap`` and trimming above 64 KiB keeps it flat. Local
    worker processes are single-threaded and get the opposite trade instead
    (``LOCAL_WORKER_MALLOC``: keep chunk-sized buffers). The setting is process-wide and only
    affects allocation policy: :func:`tune_process` applies it to the console script alone.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 1 << 20)
    mallopt(m_trim_threshold, 1 << 16)
