"""One options model: the CLI flags, the YAML keys and the API's keyword arguments come from one
declaration per option, so they accept the same values and refuse the same mistakes."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import pixseg
from pixseg.cli import _build_parser, options_from_args
from pixseg.config import config_keys, load_config
from pixseg.errors import ConfigError, ParameterError
from pixseg.options import (
    CONFIG_OPTION_CLASSES,
    BatchOptions,
    ComputeOptions,
    ConvertOptions,
    FitOptions,
    OptionError,
    OutputOptions,
    ReadOptions,
    option_fields,
    split_options,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"

#: A valid value other than the default for every option with a flag, as typed on the command line.
CLI_VALUES = {
    "level": "1",
    "chunk": "256",
    "convert": False,
    "workdir": "/tmp/work",
    "keep_workdir": True,
    "max_tile_memory": "64",
    "nodata": "-9999",
    "series": "2",
    "plane": "z=3,t=1",
    "channels": "0,2",
    "volume": True,
    "series_uid": "1.2.840.1",
    "window": "0,240",
    "clusters": "7",
    "preset": "fluorescence",
    "regions": "/tmp/regions.geojson",
    "seed": "42",
    "features": "hed,texture",
    "restarts": "2",
    "sample_size": "5000",
    "sigmas": "2,8",
    "mask": "auto",
    "fit_level": "2",
    "normalise": "robust",
    "ngff": "0.4",
    "pixel_size": "0.25,0.5",
    "tiff_flavour": "ome",
    "tiff_tile": "256",
    "tiff_compression": "zlib",
    "previews": False,
    "with_image": True,
    "scheduler": "local",
    "workers": "3",
    "lifetime": "55m",
    "cores": "2",
    "memory": "8GB",
    "walltime": "02:00:00",
    "levels": "4",
    "codec": "lz4",
    "shard": "2",
}


def _write_config(tmp_path, values: dict) -> Path:
    """A run config with one input and an output directory, plus ``values`` by dotted key."""
    import yaml

    document: dict = {"inputs": ["a.tif"], "output": {"directory": "out"}}
    for key, value in values.items():
        node = document
        *sections, last = key.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[last] = value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _flagged(cls):
    return [(item, spec) for item, spec, _ in option_fields(cls) if spec.flag]


@pytest.mark.parametrize("cls", [ReadOptions, FitOptions, OutputOptions, ComputeOptions])
def test_cli_flags_and_api_keywords_give_the_same_options(cls):
    parser = _build_parser()
    argv = ["segment", "in.tif", "out.zarr"]
    for item, spec in _flagged(cls):
        value = CLI_VALUES[item.name]
        argv += [spec.flag] if isinstance(value, bool) else [spec.flag, value]
    from_cli = options_from_args(cls, parser.parse_args(argv))
    from_api = split_options({item.name: CLI_VALUES[item.name] for item, _ in _flagged(cls)})[cls]
    assert from_cli == from_api
    defaults = cls()
    for item, _ in _flagged(cls):  # every flag took effect
        assert getattr(from_cli, item.name) != getattr(defaults, item.name), item.name


def test_convert_flags_give_the_convert_options():
    argv = ["convert", "in.tif", "out.zarr"]
    for item, spec in _flagged(ConvertOptions):
        argv += [spec.flag, CLI_VALUES[item.name]]
    options = options_from_args(ConvertOptions, _build_parser().parse_args(argv))
    assert options == ConvertOptions(
        level=1, chunk=256, levels=4, codec="lz4", shard=2, series=2, plane={"z": 3, "t": 1}, channels=(0, 2)
    )
    assert ConvertOptions(levels="auto").levels is None


def test_every_run_option_with_a_config_key_reads_from_yaml_as_the_api_gives_it(tmp_path):
    values = {
        "level": 1,
        "chunk": 256,
        "convert": False,
        "keep_workdir": True,
        "clusters": 7,
        "seed": 42,
        "features": ["hed", "texture"],
        "restarts": 2,
        "sample_size": 5000,
        "sigmas": [2, 8],
        "mask": "auto",
        "fit_level": 2,
        "normalise": "robust",
        "ngff": "0.4",
        "pixel_size": [0.25, 0.5],
        "tiff_flavour": "ome",
        "tiff_tile": 256,
        "tiff_compression": "zlib",
        "previews": False,
        "scheduler": "local",
        "workers": 3,
        "memory_limit": "2GB",
        "lifetime": "55m",
    }
    keys = {name: key for key, (_, name) in config_keys().items()}
    config = load_config(_write_config(tmp_path, {keys[name]: value for name, value in values.items()}))
    expected = split_options({name: value for name, value in values.items()})
    assert config.read == expected[ReadOptions]
    assert config.fit == expected[FitOptions]
    assert config.output == expected[OutputOptions]
    assert config.compute == expected[ComputeOptions]


def test_the_config_schema_is_the_options_config_keys():
    keys = config_keys()
    declared = {spec.config for cls in CONFIG_OPTION_CLASSES for _, spec, _ in option_fields(cls) if spec.config}
    assert set(keys) == declared
    assert {"inputs", "output.directory", "sampling.size", "clusters", "compute.scheduler"} <= set(keys)
    assert len(keys) == len(declared)  # no key is declared twice


def test_the_api_takes_exactly_the_run_options_as_keywords(tmp_path, blob_tiff):
    names = {
        item.name
        for cls in (ReadOptions, FitOptions, OutputOptions, ComputeOptions)
        for item, _, _ in option_fields(cls)
    }
    assert set(split_options({}).keys()) == {ReadOptions, FitOptions, OutputOptions, ComputeOptions}
    with pytest.raises(ParameterError, match="unknown option 'n_clusters'; did you mean 'clusters'\\?"):
        pixseg.segment(blob_tiff, tmp_path / "o.zarr", n_clusters=3)
    assert not (tmp_path / "o.zarr").exists()
    assert "clusters" in names and "scheduler" in names


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("clusters", 1, "must be between 2 and 1024, got 1"),
        ("clusters", "four", "must be an integer, auto or auto:LO-HI (e.g. auto:2-12), got 'four'"),
        ("clusters", True, "must be an integer, got True (bool)"),
        ("seed", float("inf"), "must be an integer, got inf (float)"),
        ("sample_size", 0, "must be between 1 and"),
        ("features", "channels,rgb", "must be one of channels, grey, lab"),
        ("features", [], "must name at least one feature group"),
        ("sigmas", "0", "must be > 0, got [0.0]"),
        ("sigmas", "1,100", "must be <= 64, got [1.0, 100.0]"),
        ("normalise", "z", "must be one of auto, dtype, robust, got 'z'"),
        ("pixel_size", 1e-310, "must be between 1e-05 and 1000000000, got [1e-310, 1e-310]"),
        ("pixel_size", [1, 2, 3], "must hold 1 or 2 values, got 3"),
        ("pixel_size", float("nan"), "must be a finite number"),
        ("tiff_tile", 300, "must be one of 256, 512, got 300"),
        ("scheduler", "sge", "must be one of threads, local, slurm, pbs or an address"),
        ("workers", 0, "must be between 1 and"),
    ],
)
def test_a_bad_value_names_the_parameter_the_flag_or_the_key(tmp_path, capsys, name, value, problem):
    with pytest.raises(OptionError) as caught:
        split_options({name: value})
    assert caught.value.name.split("[")[0] == name and problem in str(caught.value)
    assert str(caught.value).startswith(f"{name}")
    owner = next(cls for cls in CONFIG_OPTION_CLASSES if name in {f.name for f in dataclasses.fields(cls)})
    spec = next(spec for item, spec, _ in option_fields(owner) if item.name == name)
    # the command line says the flag
    if spec.flag and not isinstance(value, list | bool) and not (isinstance(value, float) and value != value):
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        code = pixseg.cli.main(["segment", "in.tif", str(tmp_path / "o.zarr"), spec.flag, text])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(f"error: {spec.flag} must"), err
    # a config says the file and the key
    path = _write_config(tmp_path, {spec.config: value})
    with pytest.raises(ConfigError) as from_config:
        load_config(path)
    assert str(from_config.value).startswith(f"{path}: key {spec.config!r}"), str(from_config.value)


def test_batch_options_check_their_templates_and_names():
    with pytest.raises(OptionError, match=r"uses unknown field \{foo\}"):
        BatchOptions(inputs=("a.tif",), directory="/o", name="{foo}")
    with pytest.raises(OptionError, match="must be a plain file name"):
        BatchOptions(inputs=("a.tif",), directory="/o", summary="../s.json")
    with pytest.raises(OptionError, match="must list at least one"):
        BatchOptions(directory="/o")


def test_the_cli_reference_holds_the_generated_option_tables():
    from pixseg.option_docs import END, START, options_reference

    text = DOCS.read_text()
    documented = text[text.index(START) + len(START) : text.index(END)].strip("\n")
    assert documented == options_reference().strip("\n"), "run: python -m pixseg.option_docs, paste into docs/cli.md"
    for cls in (*CONFIG_OPTION_CLASSES, ConvertOptions):
        for _, spec, _ in option_fields(cls):
            assert spec.flag is None or re.search(rf"`{re.escape(spec.flag)}`", documented)
            assert spec.config is None or f"`{spec.config}`" in documented
