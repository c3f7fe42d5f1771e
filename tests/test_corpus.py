"""Every case of the bad-input corpus: exit 2 and one line naming the problem (or a correct result),
never a traceback, never a changed input."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import zarr
from corpus import CASES

from pixseg.cli import main


def _snapshot(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in directory.rglob("*")
        if p.is_file()
    }


def test_corpus_is_large_enough():
    assert len(CASES) >= 20 and len({case.name for case in CASES}) == len(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(tmp_path, capsys, case):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    argv = case.build(inputs)
    argv = [a.replace(str(inputs / "out.zarr"), str(tmp_path / "out.zarr")) for a in argv]
    before = _snapshot(inputs)
    code = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if case.expect is None:
        assert code == 0, captured.err
        labels = zarr.open_group(tmp_path / "out.zarr", mode="r")["0"][:]
        assert labels.min() == 0 and labels.max() >= 2
    else:
        lines = [line for line in captured.err.strip().splitlines() if line.startswith("error: ")]
        assert code == 2, captured.err
        assert len(lines) == 1 and captured.err.strip().splitlines()[-1] == lines[0]
        assert case.expect in lines[0], lines[0]
    assert _snapshot(inputs) == before
