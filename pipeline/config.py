"""Run configuration: a YAML file, read safely, parsed and validated once into frozen dataclasses.

A config describes a batch run (``pixseg run CONFIG.yaml``): which images, where the outputs go
and how they are named, how to fit (features, mask, sampling, clusters, seed, one cohort model or
one per image, or a saved model) and where to compute (threads, a local cluster, a running
scheduler, or SLURM/PBS through dask-jobqueue). Unknown keys and values of the wrong type are
:class:`~pixseg.errors.ConfigError` naming the key and the file. Relative paths are taken
relative to the directory of the config file, so a config means the same from any working
directory (a cron job, an ``sbatch`` script). This module imports neither dask nor zarr.

Example::

    inputs: ["slides/*.svs"]
    output: {directory: results, name: "{stem}", format: zarr}
    features: [channels, lab]
    clusters: 4
    model: fit-once
    compute: {scheduler: slurm, workers: 4, cores: 2, memory: 8GB, walltime: "02:00:00"}
"""

from __future__ import annotations

import dataclasses
import os
import string
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from pixseg.errors import ConfigError

#: ``model:`` values other than a model file path.
MODEL_MODES = ("fit-once", "per-image")
#: ``output.format`` -> the suffix of every output.
OUTPUT_SUFFIXES = {"zarr": ".zarr", "tiff": ".tif"}
#: ``compute.scheduler`` names (besides a scheduler address ``tcp://HOST:PORT``).
SCHEDULER_NAMES = ("threads", "local", "slurm", "pbs")
#: Fields of ``output.name``: the input's file name without its suffix(es), with them, its index.
NAME_FIELDS = ("stem", "name", "index")
_IMAGE_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr")


@dataclass(frozen=True)
class OutputConfig:
    """Where outputs go and what they look like (the ``output:`` section).

    Attributes
    ----------
    directory : str
        Absolute directory of every output, the run summary and the cohort model.
    name : str
        File name template without suffix; fields ``{stem}``, ``{name}``, ``{index}``.
    format : str
        ``zarr`` (OME-Zarr labels) or ``tiff`` (pyramidal BigTIFF).
    overwrite : bool
        Replace outputs in ``directory`` that this batch tool did not write.
    previews : bool
        Write PNG previews next to each output.
    ngff : str
        OME-Zarr version of zarr outputs.
    summary : str
        File name of the run summary (JSON), in ``directory``.
    cohort_model : str
        File name of the ``fit-once`` model, in ``directory``.
    """

    directory: str
    name: str = "{stem}"
    format: str = "zarr"
    overwrite: bool = False
    previews: bool = True
    ngff: str = "0.5"
    summary: str = "pixseg-run.json"
    cohort_model: str = "cohort-model.json"


@dataclass(frozen=True)
class ReadConfig:
    """How inputs are read (the ``read:`` section): pyramid level and processing chunk edge."""

    level: int = 0
    chunk: int | None = None


@dataclass(frozen=True)
class SamplingConfig:
    """How many pixels are sampled for a fit (the ``sampling:`` section)."""

    size: int = 200_000


@dataclass(frozen=True)
class ComputeConfig:
    """Where dask computes (the ``compute:`` section).

    Attributes
    ----------
    scheduler : str
        ``threads``, ``local``, ``slurm``, ``pbs`` or a scheduler address ``tcp://HOST:PORT``.
    workers : int or None
        Threads (``threads``), worker processes (``local``) or batch jobs (``slurm``/``pbs``).
    memory_limit : str or None
        Memory limit per ``local`` worker (``"4GB"``); default: the machine's memory shared out.
    cores, memory, processes, walltime, queue, account, interface, log_directory : optional
        dask-jobqueue's keywords for one job; left out, they come from dask-jobqueue's own
        configuration (``jobqueue.yaml``, ``DASK_JOBQUEUE__SLURM__*`` variables).
    job_directives : tuple of str
        Extra scheduler directives (dask-jobqueue ``job_extra_directives``), e.g. ``--qos=long``.
    lifetime, lifetime_stagger : str or None
        Workers retire after ``lifetime`` (``"55m"``, staggered) and are replaced by new jobs, so
        a run outlives a job's wall time (dask-jobqueue's ``--lifetime`` recipe).
    dashboard_address : str
        Where the distributed dashboard binds (``127.0.0.1:0``: localhost, a free port).
    startup_timeout : float or None
        Seconds to wait for the first worker of a ``slurm``/``pbs`` cluster (None: wait for the queue).
    jobqueue : dict
        Any other dask-jobqueue keyword, passed through as is.
    """

    scheduler: str = "threads"
    workers: int | None = None
    memory_limit: str | None = None
    cores: int | None = None
    memory: str | None = None
    processes: int | None = None
    walltime: str | None = None
    queue: str | None = None
    account: str | None = None
    job_directives: tuple[str, ...] = ()
    interface: str | None = None
    log_directory: str | None = None
    lifetime: str | None = None
    lifetime_stagger: str | None = None
    dashboard_address: str = "127.0.0.1:0"
    startup_timeout: float | None = None
    jobqueue: dict[str, Any] = field(default_factory=dict)

    def jobqueue_options(self) -> dict[str, Any]:
        """Keyword arguments of a dask-jobqueue cluster: the keys that are set, plus ``jobqueue``."""
        names = ("cores", "memory", "processes", "walltime", "queue", "account", "interface", "log_directory")
        options = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        if self.job_directives:
            options["job_extra_directives"] = list(self.job_directives)
        return {**options, **self.jobqueue}


@dataclass(frozen=True)
class RunConfig:
    """A validated batch-run configuration.

    Attributes
    ----------
    path : str
        The config file it was read from (absolute).
    inputs : tuple of str
        Absolute paths or glob patterns of the input images.
    output : OutputConfig
    read : ReadConfig
    features : tuple of str
        Feature group names (see ``pixseg segment --features``).
    sigmas : tuple of float or None
        Texture scales in full-resolution pixels (None: pixseg's default).
    mask : str
        ``none``, ``auto`` or an absolute path of a mask image.
    fit_level : int or None
        Pyramid level sampled for the fit (None: the level read).
    normalise : str
        Channel scaling: ``auto``, ``dtype`` or ``robust``.
    sampling : SamplingConfig
    clusters : int
        K.
    restarts : int
        k-means|| runs per fit; the lowest sample inertia wins.
    seed : int
        Seeds the sampling and the fit.
    model : str
        ``fit-once`` (one model on a sample pooled over every input), ``per-image``, or the
        absolute path of a saved model (``.json``).
    compute : ComputeConfig
    overrides : tuple of str
        The ``--set key=value`` overrides applied, as given.
    """

    path: str
    inputs: tuple[str, ...]
    output: OutputConfig
    read: ReadConfig = ReadConfig()
    features: tuple[str, ...] = ("channels",)
    sigmas: tuple[float, ...] | None = None
    mask: str = "none"
    fit_level: int | None = None
    normalise: str = "auto"
    sampling: SamplingConfig = SamplingConfig()
    clusters: int = 4
    restarts: int = 3
    seed: int = 0
    model: str = "fit-once"
    compute: ComputeConfig = ComputeConfig()
    overrides: tuple[str, ...] = ()

    @property
    def model_file(self) -> str | None:
        """The saved model to apply, or None for ``fit-once`` / ``per-image``."""
        return None if self.model in MODEL_MODES else self.model

    @property
    def cohort_model_path(self) -> str:
        """Where the ``fit-once`` model is saved and found again by later runs."""
        return os.path.join(self.output.directory, self.output.cohort_model)

    @property
    def summary_path(self) -> str:
        """Where the run summary (JSON) is written."""
        return os.path.join(self.output.directory, self.output.summary)


#: Keys whose values are paths, resolved against the config file's directory.
_PATH_KEYS = ("inputs", "output.directory", "compute.log_directory")
#: Keys that must be present.
_REQUIRED = ("inputs", "output.directory")


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> RunConfig:
    """Read, override and validate a run configuration.

    Parameters
    ----------
    path : path-like
        A YAML file (read with ``yaml.safe_load``: data, never code).
    overrides : sequence of str
        ``KEY=VALUE`` items applied before validation; ``KEY`` is dotted (``compute.workers``),
        ``VALUE`` is parsed as YAML (``4``, ``true``, ``[a.tif, b.tif]``, ``null``).

    Returns
    -------
    RunConfig
        Paths made absolute (relative to the config file's directory); nothing is opened.

    Raises
    ------
    ConfigError
        If the file is missing or not YAML, a key is unknown or required and missing, or a
        value has the wrong type or is out of range; the message names the file and the key.
    """
    source = os.path.abspath(os.fspath(path))
    try:
        with open(source, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError as err:
        raise ConfigError(f"config file {source!r} does not exist") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {source!r} cannot be read: {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {source!r} is not valid YAML: {' '.join(str(err).split())}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {source!r}: expected a mapping of keys at the top, got {type(data).__name__}")
    for reserved in ("path", "overrides"):
        if reserved in data:
            raise ConfigError(f"{source}: unknown key {reserved!r}")
    from_overrides = set()
    for item in overrides:
        key, value = parse_override(item, source)
        _set_dotted(data, key, value, source)
        from_overrides.add(key)
    context = _Context(source, frozenset(from_overrides))
    for key in _REQUIRED:
        if _get_dotted(data, key) is None:
            raise ConfigError(f"{context.where(key)}: required key {key!r} is missing")
    base = os.path.dirname(source)
    for key in _PATH_KEYS:
        value = _get_dotted(data, key)
        if isinstance(value, str):
            _set_dotted(data, key, _absolute(value, base), source)
        elif key == "inputs" and isinstance(value, list):
            _set_dotted(data, key, [_absolute(v, base) if isinstance(v, str) else v for v in value], source)
    if isinstance(data.get("model"), str) and data["model"] not in MODEL_MODES:
        data["model"] = _absolute(data["model"], base)
    if isinstance(data.get("mask"), str) and data["mask"] not in ("none", "auto"):
        data["mask"] = _absolute(data["mask"], base)
    if isinstance(data.get("features"), str):  # "channels,lab" as in --features
        data["features"] = [part.strip() for part in data["features"].split(",")]
    config = _build(RunConfig, {**data, "path": source, "overrides": list(overrides)}, "", context)
    _check_ranges(config, context)
    return config


def parse_override(item: str, source: str = "--set") -> tuple[str, Any]:
    """Split ``KEY=VALUE`` and parse the value as YAML.

    Raises
    ------
    ConfigError
        If there is no ``=``, the key is empty, or the value is not YAML.
    """
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted KEY such as compute.workers=4")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {item!r} for {source!r}: the value is not valid YAML: {err}") from err
    return key, value


def name_outputs(config: RunConfig, inputs: Sequence[str]) -> list[str]:
    """The output path of each input: ``output.directory / output.name + suffix``.

    Raises
    ------
    ConfigError
        If two inputs get the same output name (name the template so they differ).
    """
    suffix = OUTPUT_SUFFIXES[config.output.format]
    outputs: list[str] = []
    seen: dict[str, str] = {}
    for index, path in enumerate(inputs):
        name = os.path.basename(path.rstrip("/"))
        fields = {"stem": image_stem(name), "name": name, "index": index}
        output = os.path.join(config.output.directory, config.output.name.format(**fields) + suffix)
        if output in seen:
            raise ConfigError(
                f"{config.path}: output.name {config.output.name!r} gives {output!r} for both {seen[output]!r} "
                f"and {path!r}; add {{index}} or {{name}} to the template"
            )
        seen[output] = path
        outputs.append(output)
    return outputs


def image_stem(name: str) -> str:
    """A file name without its image suffix (``a.ome.tif`` -> ``a``, ``b.svs`` -> ``b``)."""
    lower = name.lower()
    for suffix in _IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0] or name


# --- parsing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    source: str
    overridden: frozenset[str]

    def where(self, key: str) -> str:
        """``FILE`` or ``FILE (--set KEY)`` for a key that came from an override."""
        from_set = any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in self.overridden)
        return f"{self.source} (--set {key})" if from_set else self.source


def _build(cls: type, data: Any, prefix: str, context: _Context) -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and the type of every value."""
    if not isinstance(data, dict):
        key = prefix.rstrip(".")
        raise ConfigError(f"{context.where(key)}: key {key!r} must be a mapping of keys, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in data if key not in names]
    if unknown:
        key = f"{prefix}{unknown[0]}"
        known = ", ".join(n for n in names if n not in ("path", "overrides"))
        raise ConfigError(
            f"{context.where(key)}: unknown key {key!r}; known keys{' in ' + prefix[:-1] if prefix else ''}: {known}"
        )
    values = {}
    for name in names:
        if name not in data:
            continue
        key = f"{prefix}{name}"
        values[name] = _convert(data[name], hints[name], key, context)
    return cls(**values)


def _convert(value: Any, hint: Any, key: str, context: _Context) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".", context)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key, context)
    if origin is tuple:  # tuple[X, ...]: a list, or one value for a list of one
        items = value if isinstance(value, list) else [value]
        return tuple(_convert(item, args[0], f"{key}[{i}]", context) for i, item in enumerate(items))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _type_error(key, "a mapping with string keys", value, context)
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise _type_error(key, "true or false", value, context)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(key, "an integer", value, context)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(key, "a number", value, context)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            expected = "a string" + (' (quote times, e.g. "01:00:00")' if isinstance(value, int) else "")
            raise _type_error(key, expected, value, context)
        return value
    raise TypeError(f"config field {key!r} has an unsupported type {hint!r}")  # pragma: no cover


def _type_error(key: str, expected: str, value: Any, context: _Context) -> ConfigError:
    return ConfigError(f"{context.where(key)}: key {key!r} must be {expected}, got {_describe(value)}")


def _describe(value: Any) -> str:
    kind = "null" if value is None else type(value).__name__
    return f"{value!r} ({kind})" if not isinstance(value, dict | list) else kind


def _check_ranges(config: RunConfig, context: _Context) -> None:
    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{context.where(key)}: key {key!r} {message}")

    if not config.inputs:
        fail("inputs", "must list at least one path or glob pattern")
    if config.output.format not in OUTPUT_SUFFIXES:
        fail("output.format", f"must be one of {', '.join(OUTPUT_SUFFIXES)}, got {config.output.format!r}")
    _check_name_template(config.output.name, context)
    for key in ("output.summary", "output.cohort_model"):
        value = getattr(config.output, key.split(".")[1])
        if not value or os.sep in value or value in (".", ".."):
            fail(key, f"must be a plain file name, got {value!r}")
    if not config.output.cohort_model.endswith(".json"):
        fail("output.cohort_model", f"must end in .json, got {config.output.cohort_model!r}")
    if config.read.level < 0:
        fail("read.level", f"must be >= 0, got {config.read.level!r}")
    if config.read.chunk is not None and config.read.chunk < 16:
        fail("read.chunk", f"must be at least 16 pixels, got {config.read.chunk!r}")
    if not config.features:
        fail("features", "must name at least one feature group")
    if config.sigmas is not None and not all(0 < sigma <= 64 for sigma in config.sigmas):
        fail("sigmas", f"must be numbers in (0, 64], got {list(config.sigmas)!r}")
    if config.fit_level is not None and config.fit_level < 0:
        fail("fit_level", f"must be >= 0, got {config.fit_level!r}")
    if config.normalise not in ("auto", "dtype", "robust"):
        fail("normalise", f"must be auto, dtype or robust, got {config.normalise!r}")
    if config.sampling.size < 1:
        fail("sampling.size", f"must be >= 1, got {config.sampling.size!r}")
    if not 2 <= config.clusters <= 65_535:
        fail("clusters", f"must be between 2 and 65535, got {config.clusters!r}")
    if not 1 <= config.restarts <= 100:
        fail("restarts", f"must be between 1 and 100, got {config.restarts!r}")
    if not 0 <= config.seed < 2**63:
        fail("seed", f"must be a non-negative integer below 2**63, got {config.seed!r}")
    if config.model not in MODEL_MODES and not config.model.lower().endswith(".json"):
        fail("model", f"must be fit-once, per-image or a model file ending in .json, got {config.model!r}")
    compute = config.compute
    if compute.scheduler not in SCHEDULER_NAMES and "://" not in compute.scheduler:
        fail(
            "compute.scheduler",
            f"must be one of {', '.join(SCHEDULER_NAMES)} or a scheduler address tcp://HOST:PORT, "
            f"got {compute.scheduler!r}",
        )
    for key in ("workers", "cores", "processes"):
        value = getattr(compute, key)
        if value is not None and value < 1:
            fail(f"compute.{key}", f"must be >= 1, got {value!r}")
    if compute.startup_timeout is not None and compute.startup_timeout <= 0:
        fail("compute.startup_timeout", f"must be > 0 seconds, got {compute.startup_timeout!r}")
    if compute.lifetime_stagger is not None and compute.lifetime is None:
        fail("compute.lifetime_stagger", "needs compute.lifetime")


def _check_name_template(template: str, context: _Context) -> None:
    key = "output.name"
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise ConfigError(f"{context.where(key)}: key {key!r} is not a valid template {template!r}: {err}") from err
    unknown = [name for name in fields if name not in NAME_FIELDS]
    if unknown:
        raise ConfigError(
            f"{context.where(key)}: key {key!r} uses unknown field {{{unknown[0]}}} in {template!r}; "
            f"fields: {', '.join('{' + n + '}' for n in NAME_FIELDS)}"
        )
    if os.sep in template or not template.strip() or template in (".", ".."):
        raise ConfigError(f"{context.where(key)}: key {key!r} must be a file name without '/', got {template!r}")


# --- dotted keys ---------------------------------------------------------------------------


def _get_dotted(data: Mapping[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _set_dotted(data: dict[str, Any], key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            prefix = ".".join(parts[: depth + 1])
            raise ConfigError(f"{source} (--set {key}): key {prefix!r} is {_describe(child)}, not a mapping of keys")
        node = child
    node[parts[-1]] = value


def _absolute(path: str, base: str) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))
