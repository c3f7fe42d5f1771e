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

#: Runs ``main(argv)`` for each argv in turn, in one interpreter, and prints which of FIT_MODULES
#: are loaded after each (a command that imported one shows it; later ones would too, so the first
#: such command is the culprit). For ``view`` the server is made, answers a few requests (a label
#: tile, a slide tile, the legend) and is closed.
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
commands, modules = json.loads(sys.argv[1])
results = []
for argv in commands:
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    results.append({"code": code, "loaded": [name for name in modules if name in sys.modules]})
print(json.dumps(results))
"""


def _probe(*commands: list[str]) -> list[dict[str, object]]:
    """Each command's exit code and the FIT_MODULES loaded after it, all run in one fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps([commands, FIT_MODULES])],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_help_imports_nothing_of_the_fit():
    assert _probe(["--help"]) == [{"code": 0, "loaded": []}]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict[str, str]:
    """A 512^2 RGB TIFF segmented in this process, with its model saved (the probes' inputs)."""
    from pixseg.cli import main

    root = tmp_path_factory.mktemp("imports")
    pixels = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    names = {"image": "in.tif", "labels": "out.zarr", "model": "model.json", "applied": "applied.zarr"}
    paths = {key: str(root / name) for key, name in names.items()}
    paths["control"] = str(root / "control.zarr")
    tifffile.imwrite(paths["image"], pixels, tile=(256, 256), photometric="rgb")
    assert main(["segment", paths["image"], paths["labels"], "-k", "3", "-q", "--save-model", paths["model"]]) == 0
    paths["classes"] = str(root / "classes.yaml")
    Path(paths["classes"]).write_text("classes:\n  first: 1\n  rest: [2, 3]\n")
    return paths


#: The commands that do not fit, run one after another in one interpreter; then ``segment``, the
#: control: it fits, so it must show the fit's modules, which proves the probe can see an import.
NO_FIT_COMMANDS = {
    "info-input": ["info", "{image}"],
    "info-output": ["info", "{labels}"],
    "apply": ["apply", "{model}", "{image}", "{applied}", "-q"],
    "view": ["view", "{labels}", "--no-browser"],
    "info-model": ["info", "{model}"],
    "relabel": ["relabel", "{labels}", "{classes}", "-q"],
}
CONTROL = ["segment", "{image}", "{control}", "-k", "3", "-q"]


@pytest.mark.slow
def test_commands_that_do_not_fit_never_import_dask_ml(fitted):
    commands = [*NO_FIT_COMMANDS.values(), CONTROL]
    *results, control = _probe(*([part.format_map(fitted) for part in command] for command in commands))
    assert dict(zip(NO_FIT_COMMANDS, results, strict=True)) == dict.fromkeys(NO_FIT_COMMANDS, {"code": 0, "loaded": []})
    assert control == {"code": 0, "loaded": list(FIT_MODULES)}
    assert Path(fitted["applied"], "zarr.json").is_file()
