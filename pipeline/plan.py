"""Planning a run before it computes: where the output goes, whether it may be written, what an
interrupted run left, and the fingerprint that ties a resumed run to the one it continues."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pixseg.errors import InputError, ModelError, OutputError, OutputExistsError, ParameterError, ResumeMismatchError
from pixseg.features import FeatureSpec
from pixseg.graphs import MASK_KEYWORDS
from pixseg.io import batch_state
from pixseg.io.json_files import read_json_object
from pixseg.io.label_groups import label_side_base, read_label_zarr_status
from pixseg.io.label_tiff import read_label_tiff_status
from pixseg.io.locks import lock_path_for
from pixseg.io.model_file import MODEL_FORMAT, model_from_document
from pixseg.io.readers import Image
from pixseg.io.remote import check_bucket, exists, is_dir, is_url, join, public_url
from pixseg.io.remote import identity as remote_identity
from pixseg.io.side_files import SIDE_SUFFIXES, is_own_side_file
from pixseg.model import SegmentationModel

OUTPUT_KINDS = {".zarr": "zarr", ".tif": "tiff", ".tiff": "tiff"}
WORK_SUFFIX = ".pixseg-work.zarr"
CONVERTED_SUFFIX = ".pixseg-input.zarr"
#: A label name (``--into-input NAME``): one path component of letters, digits, ``.``, ``_`` and
#: ``-``, not hidden (never ``..``, ``/``, empty or a dotfile).
_LABEL_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
#: The kinds of pixseg output :func:`check_own_output` recognises.
LABEL_OUTPUT, LABEL_TIFF, CONVERTED_IMAGE = "label output", "label TIFF", "converted image"
#: The label group of a ``--with-image`` output: ``OUT.zarr/labels/labels``.
WITH_IMAGE_LABEL = "labels"


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


def check_own_image_store(path: str) -> None:
    """Refuse ``path`` unless nothing is there or it is a ``--with-image`` output pixseg wrote (or
    is writing): a converted image whose ``labels`` group holds nothing but its own metadata and
    pixseg's label output ``labels``. A label another tool added there is never replaced.

    Raises
    ------
    OutputError
        Naming what is not pixseg's.
    """
    check_own_output(path, CONVERTED_IMAGE)
    labels_dir = os.path.join(path, "labels")
    if not os.path.lexists(labels_dir):
        return
    if os.path.islink(labels_dir) or not os.path.isdir(labels_dir):
        raise OutputError(_foreign(labels_dir, "labels group"))
    for name in sorted(os.listdir(labels_dir)):
        entry = os.path.join(labels_dir, name)
        if name == WITH_IMAGE_LABEL:
            check_own_output(entry, LABEL_OUTPUT)
        elif name != "zarr.json" or os.path.islink(entry) or not os.path.isfile(entry):
            raise OutputError(
                f"{entry!r} in the labels group of {path!r} was not written by pixseg; pixseg replaces only its "
                "own files, even with --overwrite: move it away or choose another output"
            )


def check_own_output(path: str, kind: str) -> None:
    """Refuse ``path`` unless nothing is there or it is a pixseg output of ``kind``, which pixseg may
    replace: a label output (a zarr group with pixseg's metadata, finished or interrupted), a label
    TIFF (pixseg's private tag) or a converted image (``attrs["pixseg"]["source"]``).

    Raises
    ------
    OutputError
        Naming what is there: a symlink (never followed nor replaced), a directory, a foreign
        zarr store or image, any other file, or a pixseg output of another kind.
    """
    if not exists(path):
        return
    if os.path.islink(path):
        raise OutputError(_foreign(path, "output"))
    if kind == LABEL_TIFF:
        own = os.path.isfile(path) and read_label_tiff_status(path) is not None
    else:
        status = read_label_zarr_status(path) if is_dir(path) else None
        own = status is not None and ("model" in status if kind == LABEL_OUTPUT else "source" in status)
    if not own:
        raise OutputError(_foreign(path, "output", expected=kind))


def check_lock_path(path: str) -> None:
    """Refuse a lock path holding a symlink or a directory: a lock is a plain file pixseg creates."""
    if not is_url(path) and (os.path.islink(path) or os.path.isdir(path)):
        raise OutputError(_foreign(path, "lock"))


def check_side_files(side_base: str) -> None:
    """Refuse a side file at ``side_base`` + any of :data:`~pixseg.io.side_files.SIDE_SUFFIXES` that
    pixseg did not write (:func:`~pixseg.io.side_files.is_own_side_file`; a symlink never is), with or
    without ``--overwrite``; pixseg's own may be replaced.

    Raises
    ------
    OutputError
        Naming the first such file and what is there.
    """
    for suffix in SIDE_SUFFIXES:
        path = side_base + suffix
        if exists(path) and not is_own_side_file(path):
            raise OutputError(_foreign(path, "side file"))


def _foreign(path: str, what: str, *, expected: str = "") -> str:
    """The message refusing to replace ``path``: what is there, and that pixseg leaves it alone."""
    if os.path.islink(path):
        there = f"a symlink to {os.readlink(path)!r}"
    elif is_dir(path):
        status = read_label_zarr_status(path)
        if status is not None:
            there = f"a pixseg {CONVERTED_IMAGE if 'source' in status else LABEL_OUTPUT}"
        elif any(exists(join(path, n)) for n in ("zarr.json", ".zgroup", ".zarray")):
            there = "a zarr store pixseg did not write"
        else:
            there = "a directory pixseg did not write"
    else:
        there = "a file pixseg did not write"
    return (
        f"{what} {path!r} already exists and is {there}, not a pixseg {expected or what}; pixseg replaces only "
        "its own files, even with --overwrite: move it away or choose another output"
    )


def check_destinations(
    destinations: Mapping[str, str | None],
    inputs: Mapping[str, str | None],
    *,
    workdir: str | None = None,
    allowed: tuple[str, str] | None = None,
) -> None:
    """Refuse, before any work, destinations that collide with an input or with one another.

    Paths are compared by :func:`os.path.realpath` (a symlink counts as its target; URLs as they
    are, without credentials): no
    destination may be, contain or lie inside an input, nor another destination; the work
    directory may hold the destinations and the inputs, but may not be, or lie inside, any of them.

    Parameters
    ----------
    destinations : mapping of str to str or None
        What a run writes, by the name the message gives it (``"--save-model"``); None is skipped.
    inputs : mapping of str to str or None
        What it reads (the input, ``--mask``, an applied model file), likewise.
    workdir : str, optional
        ``--workdir``, where converted inputs are written.
    allowed : tuple of str, optional
        One (destination, input) pair allowed to overlap: the output written into an OME-Zarr
        input's ``labels/NAME``, checked by :func:`plan_output`.

    Raises
    ------
    OutputError
        Naming both paths.
    """
    written = {what: (path, _canonical(path)) for what, path in destinations.items() if path}
    read = {what: (path, _canonical(path)) for what, path in inputs.items() if path}
    for (what, (path, real)), (source, (given, real_source)) in itertools.product(written.items(), read.items()):
        if (what, source) != allowed and _overlap(real, real_source):
            raise OutputError(
                f"{what} {path!r} is, or is inside, the {source} {given!r} (or contains it); inputs are never modified"
            )
    for (first, (path, real)), (second, (other, real_other)) in itertools.combinations(written.items(), 2):
        if _overlap(real, real_other):
            raise OutputError(
                f"{first} {path!r} and {second} {other!r} are the same path, or one lies inside the other: "
                "give each its own place"
            )
    if workdir is not None:
        real_workdir = _canonical(workdir)
        for what, (path, real) in {**written, **read}.items():
            if real_workdir == real or real_workdir.startswith(real + os.sep):
                raise OutputError(f"--workdir {workdir!r} is, or lies inside, the {what} {path!r}")


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


def _overlap(first: str, second: str) -> bool:
    separator = "/" if is_url(first) else os.sep
    return first == second or first.startswith(second + separator) or second.startswith(first + separator)


def _canonical(path: str) -> str:
    """``path`` as paths are compared: the real path of a local one, a URL without credentials or trailing ``/``."""
    return public_url(path).rstrip("/") if is_url(path) else os.path.realpath(path)


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


def check_label_name(name: str) -> None:
    """Refuse a label name that is not one plain path component: letters, digits, ``.``, ``_``
    and ``-``, not starting with ``.`` (so never empty, ``..``, a path or a hidden name)."""
    if not _LABEL_NAME.fullmatch(name):
        raise OutputError(
            f"label name {name!r} is not a plain name: use letters, digits, '.', '_' and '-', not starting with '.'"
        )


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
        raise OutputError(f"{labels_dir!r} is not the image's labels group: {_foreign(labels_dir, 'labels group')}")
    return image.path


def check_model_path(model_path: str, *, overwrite: bool) -> None:
    """Refuse a ``--save-model`` path that is not ``.json``, or where something is that is not a
    pixseg model file (a symlink included), or a model file without ``overwrite``. Collisions
    with the input and the output, and its directory, are :func:`check_run_paths`'s."""
    if not model_path.lower().endswith(".json"):
        raise OutputError(f"--save-model {model_path!r}: model files end in .json")
    if exists(model_path):
        document = None if os.path.islink(model_path) else read_json_object(model_path)
        if document is None or document.get("format") != MODEL_FORMAT:
            raise OutputError(_foreign(model_path, "--save-model", expected="model file"))
        if not overwrite:
            raise OutputExistsError(f"model file {model_path!r} already exists; pass --overwrite to replace it")


def check_not_input(path: str, input_path: str, what: str) -> None:
    """Refuse writing ``path`` when it is the input or lies inside it (or contains it)."""
    if _overlap(_canonical(path), _canonical(input_path)):
        raise OutputError(f"{what} {path!r} is, or is inside, the input {input_path!r}; inputs are never modified")


def check_writable_parent(path: str) -> None:
    """Make the parent directory of ``path`` (if needed), refusing a file in the way or no permission;
    for a URL, check that its bucket exists and the credentials are accepted."""
    if is_url(path):
        check_bucket(path)
        return
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
