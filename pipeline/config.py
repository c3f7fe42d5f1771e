"""Run configuration: a YAML file, read safely, mapped onto the options of :mod:`pixseg.options`.

A config describes a batch run (``pixseg run CONFIG.yaml``): which images, where the outputs go
and how they are named, how to fit (features, mask, sampling, clusters, seed, one cohort model or
one per image, or a saved model) and where to compute (threads, a local cluster, a running
scheduler, or SLURM/PBS through dask-jobqueue). Its schema is the ``config`` keys of the option
declarations: a key is known because an option declares it, and is checked as that option is.
Unknown keys and bad values are :class:`~pixseg.errors.ConfigError` naming the key and the file.
YAML is read as ``yaml.safe_load`` reads it (data, never Python objects), with three limits: a
key repeated in one mapping is an error naming it and its line (``yaml.safe_load`` would keep the
last one silently), a file over ``MAX_CONFIG_BYTES`` is refused before parsing, and a document
whose aliases expand it to more than ``MAX_CONFIG_NODES`` nodes (an alias bomb, "billion laughs")
is refused before it is built, as is one nested too deeply to parse.
Relative paths are taken relative to the directory of the config file, so a config means the
same from any working directory (a cron job, an ``sbatch`` script). This module imports neither
dask nor zarr.

Example::

    inputs: ["slides/*.svs"]
    output: {directory: results, name: "{stem}", format: zarr}
    features: [channels, lab]
    clusters: 4
    model: fit-once
    compute: {scheduler: slurm, workers: 4, cores: 2, memory: 8GB, walltime: "02:00:00"}
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from pixseg.errors import ConfigError
from pixseg.io.remote import is_url
from pixseg.options import (
    CONFIG_OPTION_CLASSES,
    OUTPUT_SUFFIXES,
    BatchOptions,
    ComputeOptions,
    FitOptions,
    OptionError,
    OutputOptions,
    ReadOptions,
    build_options,
    option_fields,
)

#: Largest config file read (1 MiB), checked before parsing.
MAX_CONFIG_BYTES = 2**20
#: Most nodes a config document may hold once every alias is expanded (without aliases a
#: 1 MiB file holds fewer).
MAX_CONFIG_NODES = 1_000_000
#: Keys that must be present.
_REQUIRED = ("inputs", "output.directory")
_IMAGE_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".nii.gz")


@dataclass(frozen=True)
class RunConfig:
    """A validated batch-run configuration.

    Attributes
    ----------
    path : str
        The config file it was read from (absolute).
    batch : BatchOptions
        Inputs (absolute paths or glob patterns), output directory, naming and format, model mode.
    read, fit, output, compute : ReadOptions, FitOptions, OutputOptions, ComputeOptions
        The options of every image's run.
    overrides : tuple of str
        The ``--set key=value`` overrides applied, as given.
    """

    path: str
    batch: BatchOptions
    read: ReadOptions
    fit: FitOptions
    output: OutputOptions
    compute: ComputeOptions
    overrides: tuple[str, ...] = ()

    @property
    def model_file(self) -> str | None:
        """The saved model to apply, or None for ``fit-once`` / ``per-image``."""
        return None if self.batch.model in ("fit-once", "per-image") else self.batch.model

    @property
    def directory(self) -> str:
        """The output directory (absolute)."""
        assert self.batch.directory is not None  # required by load_config
        return self.batch.directory

    @property
    def cohort_model_path(self) -> str:
        """Where the ``fit-once`` model is saved and found again by later runs."""
        return os.path.join(self.directory, self.batch.cohort_model)

    @property
    def summary_path(self) -> str:
        """Where the run summary (JSON) is written."""
        return os.path.join(self.directory, self.batch.summary)


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
    data = read_yaml_mapping(source)
    from_overrides = set()
    for item in overrides:
        key, value = parse_override(item, source)
        _set_dotted(data, key, value, source)
        from_overrides.add(key)
    context = _Context(source, frozenset(from_overrides))
    _check_keys(data, "", context)
    for key in _REQUIRED:
        if _get_dotted(data, key) is None:
            raise ConfigError(f"{context.where(key)}: required key {key!r} is missing")
    built = {cls: _build(cls, data, context) for cls in CONFIG_OPTION_CLASSES}
    return RunConfig(
        path=source,
        batch=built[BatchOptions],
        read=built[ReadOptions],
        fit=built[FitOptions],
        output=built[OutputOptions],
        compute=built[ComputeOptions],
        overrides=tuple(overrides),
    )


def config_keys() -> dict[str, tuple[type, str]]:
    """Every config key: its options class and field name (the schema of a run config)."""
    return {
        spec.config: (cls, item.name)
        for cls in CONFIG_OPTION_CLASSES
        for item, spec, _ in option_fields(cls)
        if spec.config is not None
    }


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
        value = _load_yaml(text) if text.strip() else None
    except _DuplicateKeyError as err:
        raise ConfigError(f"--set {item!r}: duplicate key {err.key!r}") from err
    except _TooLargeError as err:
        raise ConfigError(f"--set {item!r}: the value {err}") from err
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
    suffix = OUTPUT_SUFFIXES[config.batch.format]
    outputs: list[str] = []
    seen: dict[str, str] = {}
    for index, path in enumerate(inputs):
        name = os.path.basename(path.rstrip("/"))
        fields = {"stem": image_stem(name), "name": name, "index": index}
        output = os.path.join(config.directory, config.batch.name.format(**fields) + suffix)
        if output in seen:
            raise ConfigError(
                f"{config.path}: output.name {config.batch.name!r} gives {output!r} for both {seen[output]!r} "
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


def read_yaml_mapping(source: str, *, what: str = "config file") -> dict[str, Any]:
    """The top-level mapping of the YAML file ``source``, read safely: bounded in size, no duplicate
    keys, no alias bombs.

    Parameters
    ----------
    source : str
        Path of the YAML file.
    what : str
        How error messages name the file (``"config file"``, ``"classes file"``).

    Raises
    ------
    ConfigError
        If the file is missing, unreadable, too large, not YAML, repeats a key, or is not a mapping.
    """
    try:
        with open(source, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{what} {source!r} is larger than {MAX_CONFIG_BYTES // 2**20} MiB")
        data = _load_yaml(raw.decode("utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"{what} {source!r} does not exist") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{what} {source!r} cannot be read: {err}") from err
    except _DuplicateKeyError as err:
        raise ConfigError(f"{source}: line {err.line}: duplicate key {err.key!r}") from err
    except _TooLargeError as err:
        raise ConfigError(f"{what} {source!r} {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {source!r} is not valid YAML: {' '.join(str(err).split())}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {source!r}: expected a mapping of keys at the top, got {type(data).__name__}")
    return data


class _DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one mapping, at ``line`` (1-based)."""

    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"line {line}: duplicate key {key!r}")
        self.key = key
        self.line = line


class _TooLargeError(yaml.YAMLError):
    """A document nested too deeply, or expanding through aliases beyond ``MAX_CONFIG_NODES``."""


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping (merge keys ``<<`` may be overridden)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if duplicate:
                raise _DuplicateKeyError(key, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)`` with duplicate keys refused and the expanded size bounded.

    Raises
    ------
    yaml.YAMLError
        Not YAML; :class:`_DuplicateKeyError`; :class:`_TooLargeError` (checked on the composed
        node graph, before any object is built).
    """
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError as err:
            raise _TooLargeError("is nested too deeply") from err
        if node is None:
            return None
        if _expanded_size(node) > MAX_CONFIG_NODES:
            raise _TooLargeError(
                f"expands to more than {MAX_CONFIG_NODES} nodes through its aliases (&anchor / *alias); "
                "write the values out or use fewer aliases"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(root: yaml.Node) -> int:
    """Nodes of the document under ``root`` with every alias expanded, counted without expanding
    them (each node once); a node that contains itself counts as unbounded."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if children_done:
            on_path.discard(id(node))
            sizes[id(node)] = min(MAX_CONFIG_NODES + 1, 1 + sum(sizes[id(child)] for child in children))
            continue
        if id(node) in on_path:
            return MAX_CONFIG_NODES + 1  # a recursive alias: infinite once expanded
        on_path.add(id(node))
        stack.append((node, True))
        for child in children:
            if id(child) in on_path:
                return MAX_CONFIG_NODES + 1
            stack.append((child, False))
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def _check_keys(data: Mapping[str, Any], prefix: str, context: _Context) -> None:
    """Refuse keys that no option declares, and sections that are not mappings."""
    keys = config_keys()
    for name, value in data.items():
        key = f"{prefix}{name}"
        if key in keys:
            continue
        sections = {known[len(key) + 1 :].split(".")[0] for known in keys if known.startswith(key + ".")}
        if not sections:
            siblings = sorted({known[len(prefix) :].split(".")[0] for known in keys if known.startswith(prefix)})
            where = f" in {prefix[:-1]}" if prefix else ""
            raise ConfigError(f"{context.where(key)}: unknown key {key!r}; known keys{where}: {', '.join(siblings)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{context.where(key)}: key {key!r} must be a mapping of keys, got {_describe(value)}")
        _check_keys(value, key + ".", context)


def _build(cls: type, data: Mapping[str, Any], context: _Context) -> Any:
    """The ``cls`` options of the config's keys, paths resolved; a bad value names its key."""
    base = os.path.dirname(context.source)
    values: dict[str, Any] = {}
    config_key: dict[str, str] = {}
    for item, spec, _ in option_fields(cls):
        if spec.config is None:
            continue
        config_key[item.name] = spec.config
        value = _get_dotted(data, spec.config, missing=_MISSING)
        if value is _MISSING:
            continue
        if spec.path:
            value = _absolute_paths(value, base, keywords=spec.keywords)
        values[item.name] = value
    try:
        return build_options(cls, values)
    except OptionError as err:
        name = err.name.split("[")[0]
        key = config_key[name] + err.name[len(name) :]
        raise ConfigError(f"{context.where(config_key[name])}: key {key!r} {err.problem}") from err


def _absolute_paths(value: Any, base: str, *, keywords: tuple[str, ...]) -> Any:
    if isinstance(value, list):
        return [_absolute_paths(item, base, keywords=keywords) for item in value]
    if isinstance(value, str) and is_url(value):  # s3://, gs://, https://: taken as written
        return value
    if isinstance(value, str) and value not in keywords:
        return os.path.normpath(os.path.join(base, os.path.expanduser(value)))
    return value


def _describe(value: Any) -> str:
    kind = "null" if value is None else type(value).__name__
    return f"{value!r} ({kind})" if not isinstance(value, dict | list) else kind


# --- dotted keys ---------------------------------------------------------------------------

_MISSING = object()


def _get_dotted(data: Mapping[str, Any], key: str, *, missing: Any = None) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return missing
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
