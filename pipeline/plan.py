"""Planning a run before it computes: where the output goes (whether it may be written there is
:mod:`pixseg.destinations`'), what an interrupted run left, and the fingerprint that ties a
resumed run to the one it continues."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

from pixseg.destinations import (
    LABEL_OUTPUT,
    LABEL_TIFF,
    WITH_IMAGE_LABEL,
    check_destinations,
    check_label_name,
    check_lock_path,
    check_not_input,
    check_own_image_store,
    check_own_output,
    check_side_files,
    check_writable_parent,
    foreign_message,
)
from pixseg.errors import InputError, ModelError, OutputError, OutputExistsError, ParameterError, ResumeMismatchError
from pixseg.features import FeatureSpec
from pixseg.graphs import MASK_KEYWORDS
from pixseg.io import batch_state
from pixseg.io.label_groups import label_side_base, read_label_zarr_status
from pixseg.io.label_tiff import read_label_tiff_status
from pixseg.io.locks import lock_path_for
from pixseg.io.model_file import model_from_document
from pixseg.io.readers import Image
from pixseg.io.remote import check_bucket, exists, is_dir, is_url, public_url
from pixseg.io.remote import identity as remote_identity
from pixseg.io.side_files import SIDE_SUFFIXES
from pixseg.model import SegmentationModel

OUTPUT_KINDS = {".zarr": "zarr", ".tif": "tiff", ".tiff": "tiff"}
WORK_SUFFIX = ".pixseg-work.zarr"
CONVERTED_SUFFIX = ".pixseg-input.zarr"


@dataclass(frozen=True)
class OutputPlan:
    """Where and how a run writes: the output path, its kind (``zarr`` or ``tiff``), the prefix of
    its side files, the OME-Zarr image whose ``labels/`` group receives it (or None), and whether
    the run writes that image itself from the input (``--with-image``)."""

    path: str
    kind: str  # "zarr" or "tiff"
    side_base: str
    into_image: str | None  # the OME-Zarr image whose labels/ group receives the output
    writes_image: bool = False  # into_image is this run's own copy of the input (--with-image)

    @property
    def written_path(self) -> str:
        """What the run creates or replaces: the output, or with ``--with-image`` the whole store."""
        return self.into_image if self.writes_image and self.into_image is not None else self.path

    @property
    def work_path(self) -> str:
        """The zarr pyramid written chunk by chunk: the output itself, or a TIFF's work store."""
        return self.path if self.kind == "zarr" else self.path + WORK_SUFFIX

    @property
    def lock_path(self) -> str:
        """The lock held while the output is written."""
        return lock_path_for(self.side_base)

    def destinations(self) -> dict[str, str]:
        """Every path this plan writes, by what it is: the output, a TIFF's work store, the side
        files and the lock."""
        written = {"output": self.written_path, "lock": self.lock_path}
        if self.work_path != self.path:
            written["TIFF work store"] = self.work_path
        return {**written, **{f"side file {suffix!r}": self.side_base + suffix for suffix in SIDE_SUFFIXES}}


@dataclass(frozen=True)
class PreviousRun:
    """An earlier run of the same job found by ``--resume``: its model and stored status."""

    model: SegmentationModel
    status: dict[str, Any]


def refuse_incomplete_input(image: Image) -> None:
    """An interrupted pixseg output is not an image to segment."""
    status = read_label_zarr_status(image.path) if is_dir(image.path) else None
    if status is not None and not status.get("complete"):
        raise InputError(f"input {image.path!r} is an incomplete pixseg output; finish it with --resume first")


def plan_output(
    output_path: str, image: Image, *, overwrite: bool, resume: bool, with_image: bool = False
) -> OutputPlan:
    """Check ``output_path`` for a run on ``image`` and decide how it is written.

    Whatever is already at the output, its TIFF work store, its side files or its lock must be
    pixseg's own (see :func:`check_own_output`): anything else is refused with or without
    ``overwrite``. The output (or its work store) needs ``overwrite`` or ``resume``; side files
    pixseg left beside an output that is gone do not.

    With ``with_image``, ``output_path`` (``OUT.zarr``) becomes an OME-Zarr image of the input
    with the labels in ``OUT.zarr/labels/labels`` and the side files beside the store
    (``OUT.zarr.labels.*``, as for labels written into an input; see :func:`check_own_image_store`).

    Raises
    ------
    OutputError
        For an unknown suffix (with ``with_image``, anything but ``.zarr``), an output that is
        (inside) the input, an unsafe label name, a symlink or something not pixseg's at any
        destination, or an existing output without ``overwrite``/``resume``. Nothing is
        created: :func:`check_run_paths` makes the directories once every check has passed.
    ParameterError
        If both ``overwrite`` and ``resume`` are asked.
    """
    if overwrite and resume:
        raise ParameterError("--overwrite and --resume exclude each other: replace the output, or continue it")
    stripped = output_path.rstrip("/")
    suffix = os.path.splitext(stripped)[1].lower()
    if is_url(stripped):
        plan = _plan_url(stripped, suffix, image, with_image=with_image)
    elif with_image:
        plan = _plan_with_image(stripped, suffix, image)
    else:
        into_image = _labels_beside_image(stripped, image)
        kind = "zarr" if into_image is not None else OUTPUT_KINDS.get(suffix)
        if kind is None:
            raise OutputError(f"output {output_path!r} has an unknown suffix {suffix!r}; use .zarr, .tif or .tiff")
        if into_image is None:
            check_not_input(stripped, image.path, "output")
        plan = OutputPlan(path=stripped, kind=kind, side_base=label_side_base(stripped), into_image=into_image)
        check_own_output(plan.path, LABEL_OUTPUT if kind == "zarr" else LABEL_TIFF)
        if plan.work_path != plan.path:
            check_own_output(plan.work_path, LABEL_OUTPUT)
    check_side_files(plan.side_base)
    check_lock_path(plan.lock_path)
    if exists(plan.written_path) and not (overwrite or resume):
        raise OutputExistsError(
            f"output {plan.written_path!r} already exists; pass --overwrite to replace it (or --resume to continue it)"
        )
    return plan


def _plan_url(url: str, suffix: str, image: Image, *, with_image: bool) -> OutputPlan:
    """The plan of an output in object storage: an OME-Zarr label group, its side files beside it.

    Raises
    ------
    OutputError
        For anything but a ``.zarr`` label output (a TIFF or ``--with-image`` is written locally
        and uploaded), an output that is (inside) the input, a missing bucket or refused credentials.
    """
    if suffix != ".zarr" or with_image:
        what = "--with-image" if with_image else f"a {suffix or 'suffix-less'} output"
        raise OutputError(
            f"output {public_url(url)!r}: pixseg writes only OME-Zarr labels (.zarr) to object storage, not "
            f"{what}; write it to a local path and upload it"
        )
    check_not_input(url, image.path, "output")
    check_bucket(url)
    plan = OutputPlan(path=url, kind="zarr", side_base=url, into_image=None)
    check_own_output(url, LABEL_OUTPUT)
    return plan


def _plan_with_image(store: str, suffix: str, image: Image) -> OutputPlan:
    """The plan of a ``--with-image`` output ``store``: labels in ``store/labels/labels``."""
    if suffix != ".zarr":
        raise OutputError(
            f"--with-image writes an OME-Zarr image with its labels: output {store!r} must end in .zarr, not {suffix!r}"
        )
    check_not_input(store, image.path, "output")
    check_own_image_store(store)
    return OutputPlan(
        path=os.path.join(store, "labels", WITH_IMAGE_LABEL),
        kind="zarr",
        side_base=f"{os.path.abspath(store)}.{WITH_IMAGE_LABEL}",
        into_image=store,
        writes_image=True,
    )


def check_run_paths(
    plan: OutputPlan,
    image: Image,
    *,
    model_path: str | None = None,
    mask: str | None = None,
    applied_model: str | None = None,
    workdir: str | None = None,
) -> None:
    """:func:`check_destinations` for a ``segment`` or ``apply`` run: the plan's output, work
    store, side files and lock and ``--save-model`` against the input, a ``--mask`` image, the
    applied model file and one another, and ``--workdir`` against all of them. Then, with every
    check passed, the directories of the output and the model are made.

    Raises
    ------
    OutputError
        Naming the two paths that collide, or a directory that cannot be made.
    """
    check_destinations(
        {**plan.destinations(), "--save-model": model_path},
        {"input": image.path, "--mask": None if mask in MASK_KEYWORDS else mask, "model file": applied_model},
        workdir=workdir,
        allowed=("output", "input") if plan.into_image is not None and not plan.writes_image else None,
    )
    for path in (plan.written_path, model_path):
        if path is not None:
            check_writable_parent(path)


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
    elif exists(plan.work_path):
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
    """The input's identity (:func:`pixseg.io.batch_state.input_identity`: a file's realpath, size
    and modification time; every file of a zarr store) with the level and shape read, and the
    series, plane and channels when one is picked."""
    source = remote_identity(image.path) if is_url(image.path) else batch_state.input_identity(image.path)
    identity = {**source, "level": image.level, "shape": list(image.shape)}
    picked = picked_selection(image)
    return {**identity, "selection": picked} if picked else identity


def picked_selection(image: Image) -> dict[str, Any]:
    """The series, plane and channels picked to read ``image`` (only those given), JSON-ready."""
    return {key: value for key, value in dataclasses.asdict(image.selection).items() if value}


def into_input_path(input_path: str, name: str, *, output: str | None = None) -> str:
    """The output of ``--into-input NAME``: ``INPUT/labels/NAME``, the only place pixseg writes inside an input.

    Raises
    ------
    OutputError
        If ``name`` is not one plain name (see :func:`check_label_name`), or ``output`` is given
        and is another path.
    """
    check_label_name(name)
    target = os.path.join(input_path.rstrip("/") or input_path, "labels", name)
    if output is not None and os.path.normpath(output) != os.path.normpath(target):
        raise OutputError(f"--into-input {name!r} writes {target!r}; drop OUTPUT {output!r} or make it match")
    return target


def _labels_beside_image(output_path: str, image: Image) -> str | None:
    """The OME-Zarr image when ``output_path`` is ``IMAGE/labels/NAME`` of the input, else None."""
    labels_dir, name = os.path.split(output_path)
    image_dir, labels = os.path.split(labels_dir)
    if labels != "labels" or not name or os.path.realpath(image_dir) != os.path.realpath(image.path):
        return None
    if image.kind != "ome-zarr":
        raise OutputError(f"labels can only be written into an OME-Zarr image; {image.path!r} is {image.kind}")
    check_label_name(name)
    if os.path.islink(labels_dir) or (os.path.lexists(labels_dir) and not os.path.isdir(labels_dir)):
        refusal = foreign_message(labels_dir, "labels group")
        raise OutputError(f"{labels_dir!r} is not the image's labels group: {refusal}")
    return image.path


def check_model_fits(spec: FeatureSpec, image: Image, model_path: str) -> None:
    """Refuse a model fitted on another number of colour channels or dtype than ``image`` has.

    An alpha channel may differ: it only marks pixels without data (label 0), so a model fitted on
    an RGB TIFF labels an RGBA slide (OpenSlide's formats, PNG) as it labels the TIFF.
    """
    channels = image.shape[2] - int(image.has_alpha)
    if channels != spec.n_channels:
        raise ModelError(
            f"model {model_path!r} was fitted on {spec.n_channels} colour channel(s); "
            f"input {image.path!r} has {channels}"
        )
    if image.dtype.name != spec.dtype:
        raise ModelError(
            f"model {model_path!r} was fitted on {spec.dtype} pixels; input {image.path!r} is {image.dtype.name}"
        )


def provenance(image: Image) -> dict[str, Any]:
    """Where a model or output came from: the input, its level and shape, the series, plane and
    channels picked (when any), and the versions used.

    Versions are read from the installed distributions, so nothing is imported for them.
    """
    return {
        "input": public_url(image.path) if is_url(image.path) else os.path.abspath(image.path),
        "level": image.level,
        "input_shape": list(image.shape),
        **({"selection": picked_selection(image)} if picked_selection(image) else {}),
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
