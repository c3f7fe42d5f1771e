"""A ``.nii.gz`` scan is converted slab by slab: under an address-space limit (``RLIMIT_AS``) smaller
than the scan, in a subprocess, the conversion succeeds where reading the scan whole cannot."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

#: (i, j, k) of the scan: 160 MiB of int16, compressing to about 5 MB
SHAPE = (1280, 1024, 64)
#: address space the conversion may add, once pixseg is imported and warmed up: under the scan's size
HEADROOM_MB = 100

CHILD = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    import nibabel as nib
    from pixseg.io.readers import nifti
    from pixseg.io.readers.volume import open_volume

    source, small, workdir, headroom_mb = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    open_volume(small, workdir=workdir + "/warm")  # imports and first-use costs, outside the limit
    import distributed  # noqa: F401  (dask's rechunk imports it on first use)

    def address_space() -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize"))

    limit = address_space() + headroom_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        np.asarray(nib.load(source).dataobj)
        print("whole read fitted")
    except MemoryError:
        print("whole read refused")
    nifti.SLAB_BYTES = 4 * 2**20
    volume = open_volume(source, workdir=workdir + "/work")
    middle = volume.data[32, :, :, 0].compute()
    print("converted", volume.data.shape, int(middle.astype(np.int64).sum()))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the address space from /proc")
def test_nii_gz_conversion_fits_an_address_space_smaller_than_the_scan(tmp_path):
    voxels = np.fromfunction(lambda i, j, k: (i + 3 * j + 7 * k) % 1000, SHAPE, dtype=np.int32).astype(np.int16)
    source, small = str(tmp_path / "scan.nii.gz"), str(tmp_path / "small.nii.gz")
    nib.save(nib.Nifti1Image(voxels, np.diag([0.5, 0.5, 1.5, 1.0])), source)
    nib.save(nib.Nifti1Image(voxels[:4, :4, :4], np.eye(4)), small)
    assert voxels.nbytes > 1.5 * HEADROOM_MB * 2**20
    expected_middle = int(voxels[:, :, 32].astype(np.int64).sum())
    del voxels
    # one malloc arena: per-thread arenas reserve 64 MiB of address space each, used or not
    env = {**os.environ, "MALLOC_ARENA_MAX": "1"}
    run = subprocess.run(
        [sys.executable, "-c", CHILD, source, small, str(tmp_path), str(HEADROOM_MB)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    lines = run.stdout.splitlines()
    assert run.returncode == 0, run.stderr[-2000:]
    assert lines[0] == "whole read refused"  # the limit is real: the scan does not fit whole
    assert lines[1] == f"converted (64, 1024, 1280, 1) {expected_middle}"
