"""Fixed cost: only fitting imports dask-ml (and scikit-learn with it).

Each command runs in a fresh interpreter, through ``pixseg.cli.main`` as the console script calls
it, and then lists which of the fit's heavy modules that process imported. ``segment`` is the
control: it fits, so it must show them, which proves the probe can see an import.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

#: What ``import dask_ml.cluster`` brings (2-4 s here: docs/performance.md); only a fit needs it.
FIT_MODULES = ("dask_ml", "dask_ml.cluster", "sklearn", "sklearn.model_selection", "scipy.stats")

#: Runs ``main(argv)`` and prints which of FIT_MODULES are loaded. For ``view`` the server is
#: made, answers a few requests (a label tile, a slide tile, the legend) and is closed.
_PROBE = """
import json, sys, threading, urllib.request
import pixseg.view
from pixseg.cli import main

def serve_briefly(server, *, open_browser):
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for route in ("info.json", "labels_files/9/0_0.png", "slide_files/9/0_0.jpg"):
        urllib.request.urlopen(server.url + route, timeout=60).read()
    server.shutdown()
    server.server_close()

pixseg.view.serve = serve_briefly
argv, modules = json.loads(sys.argv[1])
try:
    code = main(argv)
except SystemExit as exit_:
    code = exit_.code
print(json.dumps({"code": code, "loaded": [name for name in modules if name in sys.modules]}))
"""


def _probe(argv: list[str]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps([argv, FIT_MODULES])],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_help_imports_nothing_of_the_fit():
    assert _probe(["--help"]) == {"code": 0, "loaded": []}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict[str, str]:
    """A 512^2 RGB TIFF segmented by ``segment`` in a probe (the control), with its model saved."""
    root = tmp_path_factory.mktemp("imports")
    pixels = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    names = {"image": "in.tif", "labels": "out.zarr", "model": "model.json", "applied": "applied.zarr"}
    paths = {key: str(root / name) for key, name in names.items()}
    tifffile.imwrite(paths["image"], pixels, tile=(256, 256), photometric="rgb")
    control = _probe(["segment", paths["image"], paths["labels"], "-k", "3", "-q", "--save-model", paths["model"]])
    assert control == {"code": 0, "loaded": list(FIT_MODULES)}
    return paths


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ["info", "{image}"],
        ["info", "{labels}"],
        ["apply", "{model}", "{image}", "{applied}", "-q"],
        ["view", "{labels}", "--no-browser"],
    ],
    ids=["info-input", "info-output", "apply", "view"],
)
def test_commands_that_do_not_fit_never_import_dask_ml(fitted, command):
    argv = [part.format_map(fitted) for part in command]
    assert _probe(argv) == {"code": 0, "loaded": []}
    if command[0] == "apply":
        assert Path(fitted["applied"], "zarr.json").is_file()
