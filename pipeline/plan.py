"""Planning a run before it computes: where the output goes, whether it may be written, what an
interrupted run left, and the fingerprint that ties a resumed run to the one it continues."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

from pixseg.errors import InputError, ModelError, OutputError, OutputExistsError, ParameterError, ResumeMismatchError
from pixseg.features import FeatureSpec
from pixseg.io.label_tiff import read_label_tiff_status
from pixseg.io.label_zarr import read_label_zarr_status
from pixseg.io.model_file import model_from_document
from pixseg.io.readers import Image
from pixseg.io.side_files import SIDE_SUFFIXES, side_file_base
from pixseg.model import SegmentationModel

OUTPUT_KINDS = {".zarr": "zarr", ".tif": "tiff", ".tiff": "tiff"}
WORK_SUFFIX = ".pixseg-work.zarr"
CONVERTED_SUFFIX = ".pixseg-input.zarr"


@dataclass(frozen=True)
class OutputPlan:
    """Where and how a run writes: the output path, its kind (``zarr`` or ``tiff``), the prefix of
    its side files, and the OME-Zarr image whose ``labels/`` group receives it (or None)."""

    path: str
    kind: str  # "zarr" or "tiff"
    side_base: str
    into_image: str | None  # the OME-Zarr image whose labels/ group receives the output

    @property
    def work_path(self) -> str:
        """The zarr pyramid written chunk by chunk: the output itself, or a TIFF's work store."""
        return self.path if self.kind == "zarr" else self.path + WORK_SUFFIX


@dataclass(frozen=True)
class PreviousRun:
    """An earlier run of the same job found by ``--resume``: its model and stored status."""

    model: SegmentationModel
    status: dict[str, Any]


def refuse_incomplete_input(image: Image) -> None:
    """An interrupted pixseg output is not an image to segment."""
    status = read_label_zarr_status(image.path) if os.path.isdir(image.path) else None
    if status is not None and not status.get("complete"):
        raise InputError(f"input {image.path!r} is an incomplete pixseg output; finish it with --resume first")


def plan_output(output_path: str, image: Image, *, overwrite: bool, resume: bool) -> OutputPlan:
    """Check ``output_path`` for a run on ``image`` and decide how it is written.

    Raises
    ------
    OutputError
        For an unknown suffix, an output that is (inside) the input, an existing output or side
        file without ``overwrite``/``resume``, or an unwritable place.
    ParameterError
        If both ``overwrite`` and ``resume`` are asked.
    """
    stripped = output_path.rstrip("/")
    suffix = os.path.splitext(stripped)[1].lower()
    into_image = _labels_beside_image(stripped, image)
    kind = "zarr" if into_image is not None else OUTPUT_KINDS.get(suffix)
    if kind is None:
        raise OutputError(f"output {output_path!r} has an unknown suffix {suffix!r}; use .zarr, .tif or .tiff")
    if into_image is None:
        check_not_input(stripped, image.path, "output")
    side_base = side_file_base(
        stripped if into_image is None else f"{into_image.rstrip('/')}.{os.path.basename(stripped)}"
    )
    if overwrite and resume:
        raise ParameterError("--overwrite and --resume exclude each other: replace the output, or continue it")
    existing = [p for p in (stripped, *(side_base + s for s in SIDE_SUFFIXES)) if os.path.lexists(p)]
    if existing and not (overwrite or resume):
        raise OutputExistsError(
            f"output {existing[0]!r} already exists; pass --overwrite to replace it (or --resume to continue it)"
        )
    check_writable_parent(stripped)
    return OutputPlan(path=stripped, kind=kind, side_base=side_base, into_image=into_image)


def previous_run(plan: OutputPlan, fingerprint: dict[str, Any]) -> PreviousRun | None:
    """The interrupted (or finished) run of the same job at ``plan``'s output, for ``--resume``.

    Raises
    ------
    OutputError
        If something else is there, or it was started from another input or other options.
    """
    if plan.kind == "tiff" and os.path.exists(plan.path):
        status = read_label_tiff_status(plan.path)
        if status is None:
            raise ResumeMismatchError(f"cannot resume: {plan.path!r} exists and is not a pixseg output")
    elif os.path.lexists(plan.work_path):
        status = read_label_zarr_status(plan.work_path)
        if status is None:
            raise ResumeMismatchError(f"cannot resume: {plan.work_path!r} exists and is not a pixseg output")
        if plan.kind == "tiff":  # a finished work pyramid still has its TIFF to write
            status = {**status, "complete": False}
    else:
        return None
    stored = status.get("fingerprint") or {}
    for part in sorted(set(stored) | set(fingerprint)):
        if stored.get(part) != fingerprint.get(part):
            raise ResumeMismatchError(
                f"cannot resume {plan.path!r}: it was started with a different {part} "
                f"({stored.get(part)!r}, now {fingerprint.get(part)!r}); use --overwrite to start again"
            )
    return PreviousRun(model=model_from_document(status["model"], plan.work_path), status=status)


def job_fingerprint(image: Image, **parts: Any) -> dict[str, Any]:
    """What must not change between an interrupted run and its ``--resume``: the input (path, size,
    modification time, level) and every option, normalised through JSON as it is stored."""
    described = {
        name: dataclasses.asdict(part) if dataclasses.is_dataclass(part) and not isinstance(part, type) else part
        for name, part in parts.items()
    }
    return json.loads(json.dumps({"input": input_identity(image), **described}))


def input_identity(image: Image) -> dict[str, Any]:
    """The input's realpath, size, modification time, level and shape (a zarr store: its metadata files)."""
    path = os.path.realpath(image.path)
    if os.path.isdir(path):  # a zarr store: its metadata documents stand for it
        names = ("zarr.json", ".zarray", ".zattrs", ".zgroup")
        stats = [os.stat(os.path.join(path, n)) for n in names if os.path.exists(os.path.join(path, n))]
        size, mtime = sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)
    else:
        stat = os.stat(path)
        size, mtime = stat.st_size, stat.st_mtime_ns
    return {"path": path, "size": size, "mtime_ns": mtime, "level": image.level, "shape": list(image.shape)}


def _labels_beside_image(output_path: str, image: Image) -> str | None:
    """The OME-Zarr image when ``output_path`` is ``IMAGE/labels/NAME`` of the input, else None."""
    labels_dir, name = os.path.split(output_path)
    image_dir, labels = os.path.split(labels_dir)
    if labels != "labels" or not name or os.path.realpath(image_dir) != os.path.realpath(image.path):
        return None
    if image.kind != "ome-zarr":
        raise OutputError(f"labels can only be written into an OME-Zarr image; {image.path!r} is {image.kind}")
    if name in ("", ".", "..") or os.sep in name:
        raise OutputError(f"label name {name!r} is not a plain name")
    return image.path


def check_model_path(model_path: str, input_path: str, output_path: str, *, overwrite: bool) -> None:
    """Refuse a ``--save-model`` path that is not ``.json``, is the input or the output, or exists."""
    if not model_path.lower().endswith(".json"):
        raise OutputError(f"--save-model {model_path!r}: model files end in .json")
    check_not_input(model_path, input_path, "--save-model")
    if os.path.realpath(model_path) == os.path.realpath(output_path):
        raise OutputError(f"--save-model {model_path!r} is the same path as the output")
    if os.path.lexists(model_path) and not overwrite:
        raise OutputExistsError(f"model file {model_path!r} already exists; pass --overwrite to replace it")
    check_writable_parent(model_path)


def check_not_input(path: str, input_path: str, what: str) -> None:
    """Refuse writing ``path`` when it is the input or lies inside it (or contains it)."""
    target = os.path.realpath(path)
    source = os.path.realpath(input_path)
    if target == source or target.startswith(source + os.sep) or source.startswith(target + os.sep):
        raise OutputError(f"{what} {path!r} is, or is inside, the input {input_path!r}; inputs are never modified")


def check_writable_parent(path: str) -> None:
    """Make the parent directory of ``path`` (if needed), refusing a file in the way or no permission."""
    parent = os.path.dirname(os.path.abspath(path))
    ancestor = parent
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise OutputError(f"cannot write {path!r}: {ancestor!r} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path!r}: directory {ancestor!r} is not writable")
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create directory {parent!r} for {path!r}: {err}") from err


def check_model_fits(spec: FeatureSpec, image: Image, model_path: str) -> None:
    """Refuse a model fitted on another number of channels, alpha or dtype than ``image`` has."""
    channels = image.shape[2] - int(image.has_alpha)
    if channels != spec.n_channels or image.has_alpha != spec.has_alpha:
        raise ModelError(
            f"model {model_path!r} was fitted on {spec.n_channels} colour channel(s)"
            f"{' + alpha' if spec.has_alpha else ''}; input {image.path!r} has {channels}"
            f"{' + alpha' if image.has_alpha else ''}"
        )
    if image.dtype.name != spec.dtype:
        raise ModelError(
            f"model {model_path!r} was fitted on {spec.dtype} pixels; input {image.path!r} is {image.dtype.name}"
        )


def provenance(image: Image) -> dict[str, Any]:
    """Where a model or output came from: the input, its level and shape, and the versions used.

    Versions are read from the installed distributions, so nothing is imported for them.
    """
    return {
        "input": os.path.abspath(image.path),
        "level": image.level,
        "input_shape": list(image.shape),
        "versions": {key: _version(distribution) for key, distribution in _VERSIONED.items()},
    }


#: The versions a provenance records: key -> distribution.
_VERSIONED = {"pixseg": "pixseg-ooc", "dask": "dask", "dask_ml": "dask-ml", "numpy": "numpy", "zarr": "zarr"}


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:  # a source tree that is not installed
        return "unknown"
