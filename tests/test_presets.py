"""``--preset``: a preset's fit options as defaults, explicit options winning, the name kept in the model."""

from __future__ import annotations

import json

import pytest
import yaml

from pixseg.cli import _build_parser, main, options_from_args
from pixseg.config import load_config
from pixseg.demo import DEMO_FIT
from pixseg.errors import ConfigError
from pixseg.io.model_file import load_model
from pixseg.options import FitOptions, split_options
from pixseg.presets import PRESETS

PRESET_KEYS = {"features", "normalise", "mask", "clusters"}


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_sets_features_normalisation_mask_and_k(name):
    assert set(PRESETS[name]) == PRESET_KEYS
    fit = split_options({"preset": name})[FitOptions]
    assert fit.preset == name
    for key, value in PRESETS[name].items():
        assert getattr(fit, key) == getattr(FitOptions(**{key: value}), key)
    assert fit != FitOptions(preset=None)


def test_explicit_options_win_over_the_preset_from_the_api_the_cli_and_a_config(tmp_path):
    preset = "brightfield-ihc"
    from_api = split_options({"preset": preset, "features": "lab", "clusters": 7})[FitOptions]
    argv = ["segment", "in.tif", "out.zarr", "--preset", preset, "--features", "lab", "-k", "7"]
    from_cli = options_from_args(FitOptions, _build_parser().parse_args(argv))
    config = tmp_path / "run.yaml"
    document = {"inputs": ["a.tif"], "output": {"directory": "o"}, "preset": preset, "features": ["lab"], "clusters": 7}
    config.write_text(yaml.safe_dump(document))
    from_config = load_config(config).fit
    assert from_api == from_cli == from_config
    assert from_api.features == ("lab",) and from_api.clusters == 7  # given
    assert from_api.mask == PRESETS[preset]["mask"] and from_api.normalise == PRESETS[preset]["normalise"]  # preset


def test_an_unknown_preset_is_a_one_line_error_naming_the_flag_or_key(tmp_path, capsys):
    assert main(["segment", "in.tif", str(tmp_path / "o.zarr"), "--preset", "brightfield"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --preset must be one of brightfield-he,") and err.count("\n") == 1
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"inputs": ["a.tif"], "output": {"directory": "o"}, "preset": "nope"}))
    with pytest.raises(ConfigError, match="'preset' must be one of"):
        load_config(config)


@pytest.mark.slow
def test_the_preset_is_stored_in_the_model(tmp_path, capsys, blob_tiff):
    model_path = tmp_path / "m.json"
    argv = ["segment", blob_tiff, str(tmp_path / "o.zarr"), "--preset", "rgb-photo", "-k", "4"]
    assert main([*argv, "--save-model", str(model_path), "-q"]) == 0
    capsys.readouterr()
    document = json.loads(model_path.read_text())
    assert document["preset"] == "rgb-photo" and document["features"]["groups"] == list(
        PRESETS["rgb-photo"]["features"]
    )
    assert load_model(str(model_path)).preset == "rgb-photo"


class _Segmented(Exception):
    """Raised by the stand-in for ``segment``, carrying the fit options it was given."""


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], DEMO_FIT),  # the demo's own defaults
        (["--features", "lab"], {**DEMO_FIT, "features": ("lab",)}),  # explicit over the demo's
        (["--preset", "fluorescence"], PRESETS["fluorescence"]),  # the preset over the demo's
        (["--preset", "fluorescence", "-k", "7"], {**PRESETS["fluorescence"], "clusters": 7}),  # explicit first
    ],
)
def test_demo_takes_explicit_options_then_the_preset_then_its_own_defaults(tmp_path, monkeypatch, flags, expected):
    """As ``segment``: explicit > preset > default, the demo's defaults (``DEMO_FIT``) standing for pixseg's."""

    def fake_segment(*args, fit, **kwargs):
        raise _Segmented(fit)

    monkeypatch.setattr("pixseg.demo.write_demo_tiff", lambda *args, **kwargs: None)
    monkeypatch.setattr("pixseg.runner.segment", fake_segment)
    with pytest.raises(_Segmented) as raised:
        main(["demo", str(tmp_path), "--size", "2048", "-q", *flags])
    fit = raised.value.args[0]
    for key, value in expected.items():
        assert getattr(fit, key) == getattr(FitOptions(**{key: value}), key), key
    assert fit.preset == ("fluorescence" if "--preset" in flags else None)
