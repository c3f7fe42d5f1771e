"""Every option of pixseg, declared once: type, default, range or choices, help, config key, CLI flag.

Each option is a field of one of the frozen dataclasses below (:class:`ReadOptions`,
:class:`FitOptions`, :class:`OutputOptions`, :class:`ComputeOptions`, :class:`ConvertOptions`),
declared with :func:`option`. Everything else is derived from these declarations:

- the Python API's keyword arguments (``pixseg.segment(..., clusters=5)``, :func:`split_options`);
- the command line's flags, help and parsing (:mod:`pixseg.cli` via :func:`add_arguments`);
- the YAML config schema (:mod:`pixseg.config`, through each field's ``config`` key).

Values are validated once, when an options object is made (``__post_init__``): types, ranges and
choices. A bad value raises :class:`OptionError`, which names the parameter; the CLI and the config
loader re-word it with the flag or the config key and file. This module imports neither dask nor zarr.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pixseg.errors import ParameterError

#: Default texture scales, in full-resolution pixels.
DEFAULT_SIGMAS = (1.0, 4.0)
#: Largest accepted sigma (its halo is ``4 * sigma`` pixels on every chunk side).
MAX_SIGMA = 64.0
#: Most clusters a model may have (labels are stored as uint8 up to 255 clusters, else uint16).
MAX_CLUSTERS = 65_535
#: k-means|| runs per fit by default; the lowest sample inertia wins.
FIT_RESTARTS = 3
NORMALISE_MODES = ("auto", "dtype", "robust")
NGFF_VERSIONS = ("0.5", "0.4")
TIFF_FLAVOURS = ("generic", "ome")
TIFF_TILES = (256, 512)
TIFF_COMPRESSIONS = ("zstd", "zlib")
#: Lossless codecs of ``convert``'s image pyramids.
CODECS = ("zstd", "lz4", "zlib", "none")
#: Scheduler names (besides the address of a running scheduler, ``tcp://HOST:PORT``).
SCHEDULERS = ("threads", "local", "slurm", "pbs")


class OptionError(ParameterError):
    """An option has a value of the wrong type, out of range, or not among its choices.

    Attributes
    ----------
    name : str
        The option's parameter name (``sample_size``).
    problem : str
        What is wrong, worded to follow the option's name, flag or config key
        (``must be >= 1, got 0``).
    """

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name} {problem}")
        self.name = name
        self.problem = problem


@dataclass(frozen=True)
class OptionSpec:
    """How one option is checked, documented and reached (the metadata of its dataclass field).

    Attributes
    ----------
    help : str
        One line of help (CLI ``--help``, docs).
    config : str or None
        Dotted key in a run config (``sampling.size``); None: not in configs.
    flag : str or None
        Long CLI flag (``--sample-size``); None: not on the command line. A flag starting with
        ``--no-`` sets a boolean option to False.
    short : str or None
        Short CLI flag (``-k``).
    metavar : str or None
        Placeholder in the CLI help.
    choices : tuple or callable, optional
        Allowed values (of each item, for a tuple option), or a function returning them.
    minimum, maximum : float, optional
        Inclusive bounds (of each item, for a tuple option).
    above : float, optional
        Exclusive lower bound.
    path : bool
        A path: a config resolves it against the config file's directory.
    keywords : tuple of str
        Values a ``path`` option takes that are not paths (``auto``, ``none``).
    text : callable, optional
        Parses the CLI or config text form when the type's own parsing does not fit
        (``--levels auto``).
    """

    help: str
    config: str | None = None
    flag: str | None = None
    short: str | None = None
    metavar: str | None = None
    choices: tuple[Any, ...] | Callable[[], tuple[Any, ...]] | None = None
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    path: bool = False
    keywords: tuple[str, ...] = ()
    text: Callable[[str], Any] | None = None

    def allowed(self) -> tuple[Any, ...] | None:
        """The choices, evaluated."""
        return self.choices() if callable(self.choices) else self.choices


def option(default: Any, help: str, **spec: Any) -> Any:  # noqa: A002 - mirrors argparse
    """Declare an option: a dataclass field with ``default`` and an :class:`OptionSpec`."""
    metadata = {"option": OptionSpec(help=help, **spec)}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _feature_names() -> tuple[str, ...]:
    """Feature groups and their aliases, from the registry (imported on first use: it needs numpy)."""
    from pixseg.features import FEATURE_ALIASES, FEATURE_GROUPS

    return (*FEATURE_GROUPS, *FEATURE_ALIASES)


def _levels_text(text: str) -> int | None:
    return None if text.strip().lower() == "auto" else _parse_scalar(text, int)


class _Validated:
    """Validates every field against its declaration when the options object is made."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for item in dataclasses.fields(self):  # type: ignore[arg-type]
            value = check_value(item.name, spec_of(item), hints[item.name], getattr(self, item.name))
            object.__setattr__(self, item.name, value)


@dataclass(frozen=True)
class ReadOptions(_Validated):
    """How an input is read."""

    level: int = option(0, "input pyramid level (0 = full resolution)", config="read.level", flag="--level", minimum=0)
    chunk: int | None = option(
        None,
        "processing chunk edge in pixels (default: whole file tiles, about 1024)",
        config="read.chunk",
        flag="--chunk",
        minimum=16,
        maximum=16384,
    )
    convert: bool = option(
        True,
        "read the input directly even if its layout (strips, one huge tile) calls for converting it",
        config="read.convert",
        flag="--no-convert",
    )
    workdir: str | None = option(
        None,
        "where an input is converted when that pays (default: beside the output)",
        config="read.workdir",
        flag="--workdir",
        metavar="DIR",
        path=True,
    )
    keep_workdir: bool = option(
        False, "keep the converted input after the run", config="read.keep_workdir", flag="--keep-workdir"
    )


@dataclass(frozen=True)
class FitOptions(_Validated):
    """How the model is fitted: K, seed, features, sample, mask, normalisation."""

    clusters: int = option(
        4, "number of clusters K", config="clusters", flag="--clusters", short="-k", minimum=2, maximum=MAX_CLUSTERS
    )
    seed: int = option(
        0, "random seed of the sample and the fit", config="seed", flag="--seed", minimum=0, maximum=2**63 - 1
    )
    features: tuple[str, ...] = option(
        ("channels",),
        "feature groups, comma-separated; texture = smooth,std,gradient,log",
        config="features",
        flag="--features",
        metavar="F1,F2",
        choices=_feature_names,
    )
    restarts: int = option(
        FIT_RESTARTS,
        "k-means|| runs per fit; the lowest sample inertia wins",
        config="restarts",
        flag="--restarts",
        minimum=1,
        maximum=100,
    )
    sample_size: int = option(
        200_000, "pixels sampled for the fit", config="sampling.size", flag="--sample-size", minimum=1, maximum=10**8
    )
    sigmas: tuple[float, ...] = option(
        DEFAULT_SIGMAS,
        "texture scales in full-resolution pixels",
        config="sigmas",
        flag="--sigmas",
        metavar="S1,S2",
        above=0.0,
        maximum=MAX_SIGMA,
    )
    mask: str = option(
        "none",
        "auto: tissue versus glass (RGB); PATH: a mask image, 0 = masked",
        config="mask",
        flag="--mask",
        metavar="auto|none|PATH",
        path=True,
        keywords=("auto", "none"),
    )
    fit_level: int | None = option(
        None,
        "pyramid level sampled for the fit; labels are still predicted at --level (default: --level)",
        config="fit_level",
        flag="--fit-level",
        metavar="L",
        minimum=0,
    )
    normalise: str = option(
        "auto",
        "channel scaling: dtype range, or robust 0.5-99.5 percentiles; auto = robust unless 8-bit",
        config="normalise",
        flag="--normalise",
        choices=NORMALISE_MODES,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.features:
            raise OptionError("features", "must name at least one feature group")
        if not self.sigmas:
            raise OptionError("sigmas", "must hold at least one scale")


@dataclass(frozen=True)
class OutputOptions(_Validated):
    """How the label image and its side files are written."""

    ngff: str = option(
        "0.5", "OME-Zarr version (0.5: zarr v3)", config="output.ngff", flag="--ngff", choices=NGFF_VERSIONS
    )
    pixel_size: tuple[float, float] | None = option(
        None,
        "pixel size in micrometres, Y,X or one value (default: the input's)",
        config="output.pixel_size",
        flag="--pixel-size",
        metavar="UM[,UM]",
        above=0.0,
        maximum=1e6,
    )
    tiff_flavour: str = option(
        "generic",
        "TIFF layout: generic (OpenSlide reads it) or ome (SubIFDs)",
        config="output.tiff_flavour",
        flag="--tiff-flavour",
        choices=TIFF_FLAVOURS,
    )
    tiff_tile: int = option(512, "TIFF tile edge", config="output.tiff_tile", flag="--tiff-tile", choices=TIFF_TILES)
    tiff_compression: str = option(
        "zstd",
        "TIFF compression",
        config="output.tiff_compression",
        flag="--tiff-compression",
        choices=TIFF_COMPRESSIONS,
    )
    previews: bool = option(
        True,
        "skip the PNG thumbnail, label map, overlay and legend",
        config="output.previews",
        flag="--no-previews",
    )


@dataclass(frozen=True)
class ComputeOptions(_Validated):
    """Where dask computes; the job keywords are dask-jobqueue's (left out: its own configuration)."""

    scheduler: str = option(
        "threads",
        "threads, local (a local cluster), slurm, pbs, or a scheduler address tcp://HOST:PORT",
        config="compute.scheduler",
        flag="--scheduler",
    )
    workers: int | None = option(
        None,
        "threads, worker processes or batch jobs (default: the cores, or 1 job)",
        config="compute.workers",
        flag="--workers",
        minimum=1,
        maximum=4096,
    )
    memory_limit: str | None = option(None, "memory limit of each local worker (4GB)", config="compute.memory_limit")
    cores: int | None = option(None, "cores of one batch job", config="compute.cores", minimum=1)
    memory: str | None = option(None, "memory of one batch job (8GB)", config="compute.memory")
    processes: int | None = option(None, "worker processes per batch job", config="compute.processes", minimum=1)
    walltime: str | None = option(None, 'wall time of one batch job ("02:00:00")', config="compute.walltime")
    queue: str | None = option(None, "batch queue or partition", config="compute.queue")
    account: str | None = option(None, "batch account", config="compute.account")
    job_directives: tuple[str, ...] = option(
        (), "extra scheduler directives (--qos=long)", config="compute.job_directives"
    )
    interface: str | None = option(None, "network interface of the workers (lo, ib0)", config="compute.interface")
    log_directory: str | None = option(
        None, "batch jobs' logs (default: logs/ in the output directory)", config="compute.log_directory", path=True
    )
    lifetime: str | None = option(
        None, "workers retire after it and are replaced by new jobs (55m)", config="compute.lifetime", flag="--lifetime"
    )
    lifetime_stagger: str | None = option(
        None, "spread of the workers' lifetimes (4m)", config="compute.lifetime_stagger"
    )
    dashboard_address: str = option("127.0.0.1:0", "where the dashboard binds", config="compute.dashboard_address")
    startup_timeout: float | None = option(
        None, "seconds to wait for the first batch worker (default: wait)", config="compute.startup_timeout", above=0.0
    )
    jobqueue: dict[str, Any] = option({}, "any other dask-jobqueue keyword", config="compute.jobqueue")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scheduler not in SCHEDULERS and "://" not in self.scheduler:
            raise OptionError(
                "scheduler",
                f"must be one of {', '.join(SCHEDULERS)} or an address tcp://HOST:PORT, got {self.scheduler!r}",
            )
        if self.lifetime_stagger is not None and self.lifetime is None:
            raise OptionError("lifetime_stagger", "needs lifetime")

    def jobqueue_options(self) -> dict[str, Any]:
        """Keyword arguments of a dask-jobqueue cluster: the keys that are set, plus ``jobqueue``."""
        names = ("cores", "memory", "processes", "walltime", "queue", "account", "interface", "log_directory")
        options = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        if self.job_directives:
            options["job_extra_directives"] = list(self.job_directives)
        return {**options, **self.jobqueue}


@dataclass(frozen=True)
class ConvertOptions(_Validated):
    """How ``convert`` lays out its OME-Zarr image pyramid."""

    level: int = option(0, "input pyramid level to convert", flag="--level", minimum=0)
    chunk: int = option(1024, "zarr chunk edge in pixels", flag="--chunk", minimum=16, maximum=16384)
    levels: int | None = option(
        None,
        "pyramid levels: auto (halving down to <= 1024 px) or a number",
        flag="--levels",
        metavar="auto|N",
        minimum=1,
        maximum=32,
        text=_levels_text,
    )
    codec: str = option("zstd", "lossless codec", flag="--codec", choices=CODECS)
    shard: int | None = option(
        None, "zarr v3 shards of N x N chunks", flag="--shard", metavar="N", minimum=1, maximum=1024
    )


#: ``model`` values of a batch other than a model file path.
MODEL_MODES = ("fit-once", "per-image")
#: ``format`` of a batch's outputs -> their suffix.
OUTPUT_SUFFIXES = {"zarr": ".zarr", "tiff": ".tif"}
#: Fields of a batch's output ``name`` template: the input's file name without its suffix(es),
#: with them, its index.
NAME_FIELDS = ("stem", "name", "index")


@dataclass(frozen=True)
class BatchOptions(_Validated):
    """What a batch run (``pixseg run CONFIG``) works on and where its outputs go."""

    inputs: tuple[str, ...] = option((), "input images or glob patterns (*, ?, **)", config="inputs", path=True)
    directory: str | None = option(
        None, "directory of every output, the run summary and the cohort model", config="output.directory", path=True
    )
    name: str = option("{stem}", "output file name template: {stem}, {name} or {index}", config="output.name")
    format: str = option("zarr", "output format", config="output.format", choices=tuple(OUTPUT_SUFFIXES))
    overwrite: bool = option(False, "replace outputs this batch tool did not write", config="output.overwrite")
    summary: str = option("pixseg-run.json", "file name of the run summary (JSON)", config="output.summary")
    cohort_model: str = option("cohort-model.json", "file name of the fit-once model", config="output.cohort_model")
    model: str = option(
        "fit-once",
        "fit-once (one model pooled over all inputs), per-image, or a saved model (.json)",
        config="model",
        path=True,
        keywords=MODEL_MODES,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.inputs:
            raise OptionError("inputs", "must list at least one path or glob pattern")
        _check_name_template(self.name)
        for name in ("summary", "cohort_model"):
            value = getattr(self, name)
            if not value or "/" in value or value in (".", ".."):
                raise OptionError(name, f"must be a plain file name, got {value!r}")
        if not self.cohort_model.endswith(".json"):
            raise OptionError("cohort_model", f"must end in .json, got {self.cohort_model!r}")
        if self.model not in MODEL_MODES and not self.model.lower().endswith(".json"):
            raise OptionError(
                "model", f"must be fit-once, per-image or a model file ending in .json, got {self.model!r}"
            )


def _check_name_template(template: str) -> None:
    import string

    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise OptionError("name", f"is not a valid template {template!r}: {err}") from err
    unknown = [name for name in fields if name not in NAME_FIELDS]
    if unknown:
        known = ", ".join("{" + n + "}" for n in NAME_FIELDS)
        raise OptionError("name", f"uses unknown field {{{unknown[0]}}} in {template!r}; fields: {known}")
    if "/" in template or not template.strip() or template in (".", ".."):
        raise OptionError("name", f"must be a file name without '/', got {template!r}")


#: The option classes of a segment or apply run, in help order.
RUN_OPTION_CLASSES: tuple[type, ...] = (ReadOptions, FitOptions, OutputOptions, ComputeOptions)
#: Every options class whose fields a run config holds.
CONFIG_OPTION_CLASSES: tuple[type, ...] = (BatchOptions, *RUN_OPTION_CLASSES)


def spec_of(item: dataclasses.Field[Any]) -> OptionSpec:
    """The :class:`OptionSpec` of an options dataclass field."""
    spec = item.metadata.get("option")
    if not isinstance(spec, OptionSpec):
        raise TypeError(f"field {item.name!r} is not declared with option()")
    return spec


def option_fields(cls: type) -> list[tuple[dataclasses.Field[Any], OptionSpec, Any]]:
    """(field, spec, type hint) of every option of an options class, in declaration order."""
    hints = typing.get_type_hints(cls)
    return [(item, spec_of(item), hints[item.name]) for item in dataclasses.fields(cls)]


def split_options(values: Mapping[str, Any], classes: Iterable[type] = RUN_OPTION_CLASSES) -> dict[type, Any]:
    """Build one options object per class from flat keyword arguments (the Python API).

    Raises
    ------
    OptionError
        For a value of the wrong type or out of range.
    ParameterError
        For a name that is no option of ``classes``.
    """
    classes = tuple(classes)
    owners = {item.name: cls for cls in classes for item in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(owners))
    if unknown:
        raise ParameterError(f"unknown option {unknown[0]!r}; options: {', '.join(sorted(owners))}")
    return {cls: cls(**{k: v for k, v in values.items() if owners[k] is cls}) for cls in classes}


# --- checking values -----------------------------------------------------------------------


def check_value(name: str, spec: OptionSpec, hint: Any, value: Any) -> Any:
    """``value`` converted to the option's type and checked against its range and choices.

    Strings stand for their parsed value (``"1,4"`` for a tuple, ``"auto"`` for ``levels``), so
    the same check serves the CLI, configs and keyword arguments.

    Raises
    ------
    OptionError
        Naming ``name``, the expectation and the value.
    """
    if isinstance(value, str) and spec.text is not None:
        value = _parse(name, spec.text, value)
    value = _convert(name, hint, value)
    if value is None:
        return None
    items = value if isinstance(value, tuple) else (value,)
    allowed = spec.allowed()
    for item in items:
        if allowed is not None and item not in allowed:
            raise OptionError(name, f"must be one of {', '.join(str(a) for a in allowed)}, got {item!r}")
        if isinstance(item, numbers.Real) and not isinstance(item, bool):
            _check_range(name, spec, item, value)
    return value


def _check_range(name: str, spec: OptionSpec, item: float, value: Any) -> None:
    shown = list(value) if isinstance(value, tuple) else value
    low, high = spec.minimum, spec.maximum
    if low is not None and high is not None and not low <= item <= high:
        raise OptionError(name, f"must be between {_number(low)} and {_number(high)}, got {shown!r}")
    if spec.minimum is not None and item < spec.minimum:
        raise OptionError(name, f"must be >= {_number(spec.minimum)}, got {shown!r}")
    if spec.above is not None and item <= spec.above:
        raise OptionError(name, f"must be > {_number(spec.above)}, got {shown!r}")
    if spec.maximum is not None and item > spec.maximum:
        raise OptionError(name, f"must be <= {_number(spec.maximum)}, got {shown!r}")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _convert(name: str, hint: Any, value: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(name, inner, value)
    if origin is tuple:
        return _convert_tuple(name, args, value)
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise OptionError(name, f"must be a mapping with string keys, got {_describe(value)}")
        return dict(value)
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise OptionError(name, f"must be true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, str):
            return _parse(name, int, value)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise OptionError(name, f"must be an integer, got {_describe(value)}")
        return int(value)
    if hint is float:
        if isinstance(value, str):
            value = _parse(name, float, value)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise OptionError(name, f"must be a number, got {_describe(value)}")
        if not math.isfinite(float(value)):
            raise OptionError(name, f"must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if hasattr(value, "__fspath__"):
            value = str(value.__fspath__())
        if not isinstance(value, str):
            expected = "a string" + (' (quote times, e.g. "01:00:00")' if isinstance(value, int) else "")
            raise OptionError(name, f"must be {expected}, got {_describe(value)}")
        return value
    raise TypeError(f"option {name!r} has an unsupported type {hint!r}")  # pragma: no cover - a declaration bug


def _convert_tuple(name: str, args: tuple[Any, ...], value: Any) -> tuple[Any, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    elif not isinstance(value, list | tuple):
        value = [value]
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(f"{name}[{i}]", args[0], item) for i, item in enumerate(value))
    if len(value) == 1 and len(args) > 1:  # one value for every axis
        value = list(value) * len(args)
    if len(value) != len(args):
        raise OptionError(name, f"must hold 1 or {len(args)} values, got {len(value)}")
    return tuple(_convert(name, hint, item) for hint, item in zip(args, value, strict=True))


def _parse(name: str, parse: Callable[[str], Any], text: str) -> Any:
    try:
        return parse(text)
    except ValueError:
        kind = {int: "an integer", float: "a number"}.get(parse, "a valid value")  # type: ignore[call-overload]
        raise OptionError(name, f"must be {kind}, got {text!r}") from None


def _parse_scalar(text: str, kind: type) -> Any:
    return kind(text.strip())


def _describe(value: Any) -> str:
    kind = "null" if value is None else type(value).__name__
    return f"{value!r} ({kind})" if not isinstance(value, dict | list) else kind
