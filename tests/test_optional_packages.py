"""An input that needs an optional package which is not installed gets one line naming the extra."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from pixseg.cli import main

nib = pytest.importorskip("nibabel")
pytest.importorskip("pydicom")


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize(("hidden", "package"), [("nibabel", "'nibabel'"), ("pydicom", "'pydicom'")])
def test_a_volume_without_its_reader_names_the_volumes_extra(tmp_path, capsys, monkeypatch, hidden, package):
    from test_volumes import _write_series

    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.eye(4)), str(tmp_path / "scan.nii"))
    _write_series(tmp_path / "series", np.zeros((3, 8, 8), np.uint16))
    source = str(tmp_path / ("scan.nii" if hidden == "nibabel" else "series"))
    for name in [name for name in sys.modules if name == hidden or name.startswith(hidden + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, hidden, None)  # import hidden -> ModuleNotFoundError
    assert main(["info", source]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert package in lines[0] and "pip install 'pixseg-ooc[volumes]'" in lines[0]
