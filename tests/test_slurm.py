"""On a real SLURM cluster: `pixseg run` with dask workers as SLURM jobs, and the array workflow via sbatch.

These need a running SLURM cluster that this user can submit to (CI starts a single-node one on
loopback with .ci/start-slurm.sh). Without one they are skipped, except where
``PIXSEG_REQUIRE_SLURM=1`` (set by .ci/run in CI): there they fail instead.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from conftest import make_blob_image, skip_or_fail

from pixseg.cli import main

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
PIXSEG = str(Path(sys.executable).with_name("pixseg"))
#: Every connection stays on loopback (the test hosts allow nothing else).
LOOPBACK = ["--set", "compute.interface=lo", "--set", "compute.startup_timeout=120"]


def _unavailable(reason: str) -> None:
    skip_or_fail("PIXSEG_REQUIRE_SLURM", f"no SLURM cluster: {reason} (start one with: sudo bash .ci/start-slurm.sh)")


@pytest.fixture(scope="module")
def slurm() -> None:
    """A SLURM cluster that answers and has an idle node, and dask-jobqueue."""
    for command in ("sbatch", "squeue", "sinfo", "scancel"):
        if shutil.which(command) is None:
            _unavailable(f"{command} is not on PATH")
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15, check=True)
    except (subprocess.SubprocessError, OSError) as err:
        _unavailable(f"sinfo failed: {err}")
    if not {"idle", "mixed", "allocated"} & set(states.stdout.split()):
        _unavailable(f"no usable node (sinfo says {states.stdout.split()!r})")
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        _unavailable("dask-jobqueue is not installed (pip install -e '.[cluster]')")


@pytest.fixture
def slides(tmp_path) -> list[str]:
    folder = tmp_path / "slides"
    folder.mkdir()
    paths = []
    for i, (height, width) in enumerate([(150, 230), (100, 120)]):
        path = folder / f"slide{i}.tif"
        tifffile.imwrite(path, make_blob_image(height, width, seed=i), tile=(64, 64), photometric="rgb")
        paths.append(str(path))
    return paths


def _labels(path) -> np.ndarray:
    return zarr.open_group(str(path), mode="r")["0"][:]


def _wait_for_job(job_id: str, timeout: float = 180.0) -> None:
    """Poll squeue until the job (all its array tasks) has left the queue (sbatch --wait lags)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True, check=False)
        if queued.returncode == 0 and not queued.stdout.strip():
            return
        time.sleep(0.5)
    subprocess.run(["scancel", job_id], check=False)
    pytest.fail(f"SLURM job {job_id} still queued or running after {timeout:.0f} s")


def test_run_config_with_slurm_workers_equals_threads(slurm, tmp_path, capsys, slides):
    config = ROOT / "configs" / "slurm-cohort.yaml"
    common = ["--set", f"inputs=['{tmp_path}/slides/*.tif']", "--set", "sampling.size=3000", "--set", "read.chunk=64"]
    code = main(["run", str(config), "-q", *common, *LOOPBACK, "--set", f"output.directory={tmp_path}/slurm"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "2 done, 0 skipped, 0 failed" in captured.out
    worker_logs = list((tmp_path / "slurm" / "logs").glob("*.out")) + list((tmp_path / "slurm" / "logs").glob("*.err"))
    assert worker_logs, "dask-jobqueue wrote no SLURM job logs: the workers did not run as SLURM jobs"
    code = main(
        ["run", str(config), "-q", *common, "--scheduler", "threads", "--set", f"output.directory={tmp_path}/t"]
    )
    assert code == 0, capsys.readouterr().err
    for i in range(2):
        np.testing.assert_array_equal(
            _labels(tmp_path / "slurm" / f"slide{i}.zarr"), _labels(tmp_path / "t" / f"slide{i}.zarr")
        )


def test_array_workflow_applies_a_model_per_task_like_threads(slurm, tmp_path, capsys, slides):
    model = tmp_path / "model.json"
    for i, slide in enumerate(slides):
        argv = ["segment", slide, str(tmp_path / f"threads{i}.zarr"), "-k", "3", "--sample-size", "3000", "-q"]
        if i == 0:
            argv += ["--save-model", str(model)]
        else:
            argv = ["apply", str(model), slide, str(tmp_path / f"threads{i}.zarr"), "-q"]
        assert main(argv) == 0, capsys.readouterr().err
    files = tmp_path / "files.txt"
    files.write_text("".join(f"{slide}\n" for slide in slides))
    logs = tmp_path / "logs"
    logs.mkdir()
    exports = f"ALL,FILE_LIST={files},MODEL={model},OUT_DIR={tmp_path}/array,PIXSEG={PIXSEG}"
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--array=1-{len(slides)}",
            "--cpus-per-task=1",
            "--mem=1G",
            f"--chdir={tmp_path}",
            f"--output={logs}/%A_%a.out",
            f"--export={exports}",
            str(ROOT / "workflows" / "slurm-apply-array.sbatch"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    _wait_for_job(job_id)
    task_logs = "\n".join(p.read_text() for p in sorted(logs.glob("*.out")))
    for i in range(len(slides)):
        output = tmp_path / "array" / f"slide{i}.zarr"
        assert output.is_dir(), f"array task {i + 1} wrote no output; logs:\n{task_logs}"
        np.testing.assert_array_equal(_labels(output), _labels(tmp_path / f"threads{i}.zarr"))
    resubmitted = subprocess.run(  # a resubmitted array skips the finished images
        ["sbatch", "--parsable", "--array=1-1", "--cpus-per-task=1", "--mem=1G", f"--chdir={tmp_path}"]
        + [
            f"--output={logs}/again_%a.out",
            f"--export={exports}",
            str(ROOT / "workflows" / "slurm-apply-array.sbatch"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    _wait_for_job(resubmitted.stdout.strip().split(";")[0])
    assert "is complete; skipping" in (logs / "again_1.out").read_text()
