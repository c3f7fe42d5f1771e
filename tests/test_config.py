"""Run configs: YAML read safely, validated once; unknown keys and wrong types name the key and the file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pixseg.cli import main
from pixseg.config import load_config, name_outputs, parse_override
from pixseg.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _write(tmp_path, text: str, name: str = "run.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _assert_exit_2(capsys, argv, *fragments):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in last, last


@pytest.mark.parametrize("name", ["quick-local.yaml", "wsi-he-mask.yaml", "slurm-cohort.yaml"])
def test_example_configs_are_valid(name):
    config = load_config(CONFIGS / name)
    assert config.path == str(CONFIGS / name)
    assert all(os.path.isabs(p) for p in config.batch.inputs)
    assert os.path.isabs(config.directory)


def test_values_defaults_and_relative_paths(tmp_path):
    path = _write(
        tmp_path,
        "inputs: [a/*.tif, /abs/b.tif]\noutput: {directory: out, format: tiff}\nclusters: 6\n"
        "features: channels,lab\nmodel: models/m.json\ncompute: {scheduler: slurm, walltime: '01:00:00', "
        "job_directives: --qos=low, jobqueue: {death_timeout: 30}}\n",
    )
    config = load_config(path)
    assert config.batch.inputs == (str(tmp_path / "a/*.tif"), "/abs/b.tif")
    assert config.directory == str(tmp_path / "out") and config.batch.format == "tiff"
    assert config.model_file == str(tmp_path / "models/m.json")
    assert config.fit.features == ("channels", "lab") and config.fit.clusters == 6 and config.fit.seed == 0
    assert config.fit.sample_size == 200_000 and config.read.chunk is None
    assert config.compute.jobqueue_options() == {
        "walltime": "01:00:00",
        "job_extra_directives": ["--qos=low"],
        "death_timeout": 30,
    }
    with pytest.raises(AttributeError):
        config.fit.clusters = 3  # type: ignore[misc]


def test_overrides_are_dotted_and_parsed_as_yaml(tmp_path):
    path = _write(tmp_path, "inputs: [a.tif]\noutput: {directory: out}\n")
    config = load_config(
        path,
        ["compute.workers=3", "compute.scheduler=local", "sampling.size=500", "inputs=[x.tif, y.tif]", "read.chunk=64"],
    )
    assert config.compute.workers == 3 and config.compute.scheduler == "local"
    assert config.fit.sample_size == 500 and config.read.chunk == 64
    assert config.batch.inputs == (str(tmp_path / "x.tif"), str(tmp_path / "y.tif"))
    assert config.overrides[0] == "compute.workers=3"
    assert parse_override("compute.queue=") == ("compute.queue", None)
    for bad in ("noequals", "=3", "a..b=1"):
        with pytest.raises(ConfigError, match="KEY=VALUE"):
            parse_override(bad)


@pytest.mark.parametrize(
    ("text", "overrides", "fragments"),
    [
        ("inputs: [a.tif]\noutput: {directory: o}\nclusterz: 3\n", [], ["unknown key 'clusterz'"]),
        ("inputs: [a.tif]\noutput: {directory: o, formt: zarr}\n", [], ["unknown key 'output.formt'"]),
        ("inputs: [a.tif]\noutput: {directory: o}\ncompute: {wrkers: 2}\n", [], ["unknown key 'compute.wrkers'"]),
        ("inputs: [a.tif]\noutput: {directory: o}\nclusters: four\n", [], ["'clusters' must be an integer", "'four'"]),
        ("inputs: [a.tif]\noutput: {directory: o}\nclusters: true\n", [], ["'clusters' must be an integer"]),
        ("inputs: [a.tif]\noutput: {directory: o}\nsampling: 5\n", [], ["'sampling' must be a mapping"]),
        ("inputs: [a.tif]\noutput: {directory: o, overwrite: yes please}\n", [], ["'output.overwrite'"]),
        ("inputs: [a.tif]\noutput: {directory: o}\ncompute: {walltime: 1:30:00}\n", [], ["quote times", "5400"]),
        ("inputs: [3]\noutput: {directory: o}\n", [], ["'inputs[0]' must be a string"]),
        ("output: {directory: o}\n", [], ["required key 'inputs' is missing"]),
        ("inputs: [a.tif]\n", [], ["required key 'output.directory' is missing"]),
        ("inputs: []\noutput: {directory: o}\n", [], ["'inputs' must list at least one"]),
        ("inputs: [a.tif]\noutput: {directory: o}\nclusters: 1\n", [], ["'clusters' must be between 2"]),
        ("inputs: [a.tif]\noutput: {directory: o}\nrestarts: 0\n", [], ["'restarts' must be between 1 and 100"]),
        ("inputs: [a.tif]\noutput: {directory: o}\nmodel: kmeans\n", [], ["'model' must be fit-once"]),
        ("inputs: [a.tif]\noutput: {directory: o, format: png}\n", [], ["'output.format' must be one of"]),
        ("inputs: [a.tif]\noutput: {directory: o, name: '{stem}/{foo}'}\n", [], ["unknown field {foo}"]),
        ("inputs: [a.tif]\noutput: {directory: o}\ncompute: {scheduler: sge}\n", [], ["'compute.scheduler'"]),
        (
            "inputs: [a.tif]\noutput: {directory: o}\n",
            ["compute.workers=0"],
            ["(--set compute.workers)", "must be between 1"],
        ),
        ("inputs: [a.tif]\noutput: {directory: o}\n", ["compute.nope=1"], ["unknown key 'compute.nope'"]),
        (
            "inputs: [a.tif]\noutput: {directory: o}\nclusters: 4\n",
            ["clusters.k=1"],
            ["'clusters' is 4", "not a mapping"],
        ),
        ("- just\n- a list\n", [], ["expected a mapping"]),
        ("inputs: [a.tif\n", [], ["not valid YAML"]),
        ("inputs: !!python/object/apply:os.system [echo]\n", [], ["not valid YAML"]),
    ],
)
def test_bad_configs_name_the_key_and_file(tmp_path, capsys, text, overrides, fragments):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    assert path in str(caught.value)
    for fragment in fragments:
        assert fragment in str(caught.value)
    argv = ["run", path, "--dry-run", *[arg for item in overrides for arg in ("--set", item)]]
    _assert_exit_2(capsys, argv, *fragments)


def test_missing_config_file_and_missing_input_exit_2(tmp_path, capsys):
    _assert_exit_2(capsys, ["run", tmp_path / "nope.yaml"], "does not exist", "nope.yaml")
    path = _write(tmp_path, "inputs: [missing.tif, 'none-*.tif']\noutput: {directory: out}\n")
    _assert_exit_2(capsys, ["run", path], "inputs[0]", "missing.tif", "does not exist", path)
    _assert_exit_2(capsys, ["run", path, "--set", "inputs=['none-*.tif']"], "inputs[0]", "matches no image")
    assert not (tmp_path / "out").exists()


def test_output_names_from_the_template(tmp_path):
    config = load_config(_write(tmp_path, "inputs: [a.tif]\noutput: {directory: o, name: '{index}-{stem}'}\n"))
    names = name_outputs(config, ["/x/s1.ome.tif", "/y/s2.svs"])
    assert names == [str(tmp_path / "o" / "0-s1.zarr"), str(tmp_path / "o" / "1-s2.zarr")]
    config = load_config(_write(tmp_path, "inputs: [a.tif]\noutput: {directory: o}\n"))
    with pytest.raises(ConfigError, match="add {index} or {name}"):
        name_outputs(config, ["/x/s.tif", "/y/s.tif"])


def test_config_module_imports_neither_dask_nor_zarr():
    code = "import sys, pixseg.config; sys.exit(any(m in sys.modules for m in ('dask', 'zarr')))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("inputs: [a.tif]\noutput: {directory: o}\nclusters: 3\nseed: 1\nclusters: 4\n", 5, "clusters"),
        ("inputs: [a.tif]\noutput:\n  directory: o\n  format: zarr\n  directory: p\n", 5, "directory"),
        ("inputs: [a.tif]\noutput: {directory: o}\ncompute: {workers: 2, workers: 3}\n", 3, "workers"),
        ("inputs: [a.tif]\ninputs: [b.tif]\noutput: {directory: o}\n", 2, "inputs"),
    ],
)
def test_duplicate_keys_name_the_key_and_its_line(tmp_path, capsys, text, line, key):
    path = _write(tmp_path, text)
    expected = f"{path}: line {line}: duplicate key {key!r}"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == expected
    _assert_exit_2(capsys, ["run", path, "--dry-run"], expected)


def test_duplicate_key_in_an_override_and_merge_keys_still_override(tmp_path):
    path = _write(tmp_path, "inputs: [a.tif]\noutput: {directory: o}\n")
    with pytest.raises(ConfigError, match="--set 'compute={workers: 2, workers: 3}': duplicate key 'workers'"):
        load_config(path, ["compute={workers: 2, workers: 3}"])
    key, value = parse_override("compute={<<: {workers: 2, cores: 1}, workers: 3}")
    assert value == {"workers": 3, "cores": 1}


def _alias_bomb(levels: int = 9, width: int = 10) -> str:
    lines = ['a0: &a0 ["lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines)


@pytest.mark.parametrize(
    "template",
    [
        "inputs: &root\n  - {bomb}\noutput: {{directory: o}}\n",
        "inputs: [a.tif]\noutput: {{directory: o}}\ncompute:\n  jobqueue: {{extra: {bomb}}}\n",
    ],
)
def test_alias_bomb_is_refused_quickly_with_bounded_memory(tmp_path, capsys, template):
    import time
    import tracemalloc

    bomb = "{" + _alias_bomb().replace("\n", ", ") + "}"  # 10**9 "lol" once expanded
    path = _write(tmp_path, template.format(bomb=bomb))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ConfigError, match="expands to more than 1000000 nodes through its aliases"):
            load_config(path)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 5 and peak < 20 * 2**20, (elapsed, peak)
    _assert_exit_2(capsys, ["run", path, "--dry-run"], "expands to more than")


@pytest.mark.slow
def test_recursive_alias_deep_nesting_and_huge_files_are_refused(tmp_path, capsys):
    path = _write(tmp_path, "inputs: &a [*a]\noutput: {directory: o}\n")
    _assert_exit_2(capsys, ["run", path, "--dry-run"], path, "expands to more than")
    path = _write(tmp_path, "inputs: " + "[" * 100_000 + "]" * 100_000 + "\n", "deep.yaml")
    _assert_exit_2(capsys, ["run", path, "--dry-run"], path, "nested too deeply")
    path = _write(tmp_path, "inputs: [a.tif]\noutput: {directory: o}\n" + "#" * 2**20 + "\n", "big.yaml")
    _assert_exit_2(capsys, ["run", path, "--dry-run"], path, "is larger than 1 MiB")
    shared = "inputs: &paths [a.tif, b.tif]\noutput: {directory: o}\nclusters: &k 3\nseed: *k\n"
    config = load_config(_write(tmp_path, shared, "aliases.yaml"))  # ordinary aliases still work
    assert config.fit.seed == 3 and len(config.batch.inputs) == 2
