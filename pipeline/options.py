"""Every option of pixseg, declared once: type, default, range or choices, help, config key, CLI flag.

Each option is a field of one of the frozen dataclasses below (:class:`ReadOptions`,
:class:`FitOptions`, :class:`OutputOptions`, :class:`ComputeOptions`, :class:`ConvertOptions`),
declared with :func:`~pixseg.option_types.option` (:mod:`pixseg.option_types` holds the machinery).
Everything else is derived from these declarations:

- the Python API's keyword arguments (``pixseg.segment(..., clusters=5)``, :func:`split_options`);
- the command line's flags, help and parsing (:func:`pixseg.cli.add_option_arguments`);
- the YAML config schema (:mod:`pixseg.config`, through each field's ``config`` key).

Values are validated once, when an options object is made (``__post_init__``): types, ranges and
choices. A bad value raises :class:`OptionError`, which names the parameter; the CLI and the config
loader re-word it with the flag or the config key and file. This module imports neither dask nor zarr.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pixseg.errors import ParameterError
from pixseg.option_types import (
    OptionError,
    OptionSpec,
    Validated,
    build_options,
    check_value,
    option,
    option_fields,
    spec_of,
)
from pixseg.presets import PRESETS

__all__ = [
    "BatchOptions",
    "ComputeOptions",
    "ConvertOptions",
    "FitOptions",
    "OptionError",
    "OptionSpec",
    "OutputOptions",
    "ReadOptions",
    "build_options",
    "check_value",
    "option_fields",
    "spec_of",
    "split_options",
]

#: Default texture scales, in full-resolution pixels.
DEFAULT_SIGMAS = (1.0, 4.0)
#: Largest accepted sigma (its halo is ``4 * sigma`` pixels on every chunk side).
MAX_SIGMA = 64.0
#: Most clusters a model may have (labels are stored as uint8 up to 255 clusters, else uint16).
MAX_CLUSTERS = 1024
#: The range of K ``--clusters auto`` tries (see :mod:`pixseg.choose_k`).
AUTO_CLUSTERS = (2, 12)
#: k-means fits (k-means++ seeds) per fit by default; the lowest sample inertia wins.
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


def _feature_names() -> tuple[str, ...]:
    """Feature groups and their aliases, from the registry (imported on first use: it needs numpy)."""
    from pixseg.features import FEATURE_ALIASES, FEATURE_GROUPS

    return (*FEATURE_GROUPS, *FEATURE_ALIASES)


#: The stack axes ``--plane`` picks from.
PLANE_AXES = ("z", "t")


def _plane_text(text: str) -> dict[str, int]:
    """``"z=3,t=0"`` as ``{"z": 3, "t": 0}``; axes z or t, each once, indices integers >= 0."""
    plane: dict[str, int] = {}
    for part in text.split(","):
        axis, _, index = (piece.strip().lower() for piece in part.partition("="))
        if axis not in PLANE_AXES:
            raise ValueError(f"z=K,t=K with axes z and t only (unknown axis {axis!r})")
        if axis in plane:
            raise ValueError(f"z=K,t=K with each axis once ({axis!r} twice)")
        if not index.isdigit():
            raise ValueError(f"z=K,t=K with K an integer >= 0 ({axis}={index!r})")
        plane[axis] = int(index)
    return plane


def _clusters_text(text: str) -> int | str:
    """``"5"`` as 5; ``"auto"`` and ``"auto:LO-HI"`` as the canonical ``"auto:LO-HI"`` (see :mod:`pixseg.choose_k`)."""
    expected = "an integer, auto or auto:LO-HI (e.g. auto:2-12)"
    text = text.strip().lower()
    if not text.startswith("auto"):
        if not text.lstrip("+-").isdigit():
            raise ValueError(expected)
        return int(text)
    low, high = AUTO_CLUSTERS
    if text != "auto":
        bounds = text.removeprefix("auto:").split("-")
        if not text.startswith("auto:") or len(bounds) != 2 or not all(b.strip().isdigit() for b in bounds):
            raise ValueError(expected)
        low, high = (int(b) for b in bounds)
    if not 2 <= low < high <= MAX_CLUSTERS:
        raise ValueError(f"auto:LO-HI with 2 <= LO < HI <= {MAX_CLUSTERS}")
    return f"auto:{low}-{high}"


def _levels_text(text: str) -> int | None:
    try:
        return None if text.strip().lower() == "auto" else int(text)
    except ValueError:
        raise ValueError("auto or a number") from None


def _series_option(**config: str) -> Any:
    """``--series``, declared once for every command that reads an input."""
    return option(
        None,
        "image series to read of a file holding several (pixseg info lists them); default: the first",
        flag="--series",
        metavar="N",
        minimum=0,
        **config,
    )


def _plane_option(**config: str) -> Any:
    """``--plane``, declared once for every command that reads an input."""
    return option(
        None,
        "plane to read of a Z or T stack, e.g. z=3 or z=3,t=0 (required for a stack)",
        flag="--plane",
        metavar="z=K,t=K",
        text=_plane_text,
        **config,
    )


def _channels_option(**config: str) -> Any:
    """``--channels``, declared once for every command that reads an input."""
    return option(
        None,
        "channels to read, in this order, e.g. 0,2 (default: all)",
        flag="--channels",
        metavar="C1,C2",
        minimum=0,
        **config,
    )


@dataclass(frozen=True)
class ReadOptions(Validated):
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
    max_tile_memory: int = option(
        512,
        "most memory in MB one decoded TIFF tile or strip, zarr chunk or PNG/JPEG may take; larger ones are refused",
        config="read.max_tile_memory",
        flag="--max-tile-memory",
        metavar="MB",
        minimum=1,
        maximum=2**20,
    )
    nodata: float | None = option(
        None,
        "pixels whose channels all equal it carry no data (label 0); default: the file's GDAL_NODATA tag",
        config="read.nodata",
        flag="--nodata",
        metavar="VALUE",
    )
    series: int | None = _series_option(config="read.series")
    plane: dict[str, int] | None = _plane_option(config="read.plane")
    channels: tuple[int, ...] | None = _channels_option(config="read.channels")
    volume: bool = option(
        False,
        "read a 3-D OME-Zarr image as a volume (NIfTI files and DICOM folders always are)",
        config="read.volume",
        flag="--volume",
    )
    series_uid: str | None = option(
        None,
        "the DICOM SeriesInstanceUID to read from a folder holding several series",
        config="read.series_uid",
        flag="--series-uid",
        metavar="UID",
    )


@dataclass(frozen=True)
class FitOptions(Validated):
    """How the model is fitted: K, seed, features, sample, mask, normalisation."""

    clusters: int | str = option(
        4,
        "number of clusters K, or auto[:LO-HI] to choose K on the sample (default range 2-12; docs/presets.md)",
        config="clusters",
        flag="--clusters",
        short="-k",
        metavar="K|auto[:LO-HI]",
        minimum=2,
        maximum=MAX_CLUSTERS,
        text=_clusters_text,
    )
    preset: str | None = option(
        None,
        "set features, normalisation, mask and K for a kind of image; explicit options win (docs/presets.md)",
        config="preset",
        flag="--preset",
        choices=tuple(PRESETS),
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
        "k-means fits from different k-means++ seeds; the lowest sample inertia wins",
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
        "auto: tissue versus glass (RGB brightfield) or versus a dark background (fluorescence, any channels);"
        " PATH: a mask image, 0 = masked",
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
    window: tuple[float, float] | None = option(
        None,
        "volumes: clip intensities to LOW,HIGH and scale that range (a CT window in HU, e.g. -160,240)",
        config="window",
        flag="--window",
        metavar="LOW,HIGH",
    )

    @classmethod
    def implied_defaults(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """The settings of the ``preset`` in ``values``, if any (checked first, so a bad name is named)."""
        fields = {item.name: (spec, hint) for item, spec, hint in option_fields(cls)}
        preset = check_value("preset", *fields["preset"], values.get("preset"))
        return dict(PRESETS[preset]) if preset is not None else {}

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.features:
            raise OptionError("features", "must name at least one feature group")
        if not self.sigmas:
            raise OptionError("sigmas", "must hold at least one scale")


@dataclass(frozen=True)
class OutputOptions(Validated):
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
        minimum=1e-5,  # 0.01 nm (electron microscopy) to 1 km (satellites)
        maximum=1e9,
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
    with_image: bool = option(
        False,
        "write the input's image pyramid into OUTPUT.zarr too, labels in its labels/ group (napari opens both)",
        config="output.with_image",
        flag="--with-image",
    )
    previews: bool = option(
        True,
        "skip the PNG thumbnail, label map, overlay, legend and the HTML report",
        config="output.previews",
        flag="--no-previews",
    )
    regions: str | None = option(
        None,
        "GeoJSON annotations (QuPath, level-0 pixels): write the area of each label inside each region",
        config="output.regions",
        flag="--regions",
        metavar="REGIONS.geojson",
        path=True,
    )


@dataclass(frozen=True)
class ComputeOptions(Validated):
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
    cores: int | None = option(
        None,
        "cores of one batch job (default: dask-jobqueue's config, else 1)",
        config="compute.cores",
        flag="--worker-cores",
        minimum=1,
    )
    memory: str | None = option(
        None,
        "memory of one batch job (default: dask-jobqueue's config, else 4GB)",
        config="compute.memory",
        flag="--worker-memory",
    )
    processes: int | None = option(None, "worker processes per batch job", config="compute.processes", minimum=1)
    walltime: str | None = option(
        None,
        "wall time of one batch job (default: a configured one, else 01:00:00)",
        config="compute.walltime",
        flag="--walltime",
    )
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
class ConvertOptions(Validated):
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
    series: int | None = _series_option()
    plane: dict[str, int] | None = _plane_option()
    channels: tuple[int, ...] | None = _channels_option()


#: ``model`` values of a batch other than a model file path.
MODEL_MODES = ("fit-once", "per-image")
#: ``format`` of a batch's outputs -> their suffix.
OUTPUT_SUFFIXES = {"zarr": ".zarr", "tiff": ".tif", "nifti": ".nii.gz"}
#: Fields of a batch's output ``name`` template: the input's file name without its suffix(es),
#: with them, its index.
NAME_FIELDS = ("stem", "name", "index")


@dataclass(frozen=True)
class BatchOptions(Validated):
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
        import difflib

        close = difflib.get_close_matches(unknown[0], owners, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ParameterError(f"unknown option {unknown[0]!r}; {hint}options: {', '.join(sorted(owners))}")
    return {cls: build_options(cls, {k: v for k, v in values.items() if owners[k] is cls}) for cls in classes}
