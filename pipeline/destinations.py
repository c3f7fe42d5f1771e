"""What pixseg may write, and where: only its own outputs, never an input, never a file another tool made.

Every check here runs before any work and refuses by raising :class:`~pixseg.errors.OutputError`
(or :class:`~pixseg.errors.OutputExistsError`) with one line naming the path and what is there.
:mod:`pixseg.plan` decides where a run writes; this module decides whether it may.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping

from pixseg.errors import OutputError, OutputExistsError
from pixseg.io.json_files import read_json_object
from pixseg.io.label_groups import read_label_zarr_status
from pixseg.io.label_tiff import read_label_tiff_status
from pixseg.io.model_file import MODEL_FORMAT
from pixseg.io.remote import check_bucket, exists, is_dir, is_url, join, public_url
from pixseg.io.side_files import SIDE_SUFFIXES, is_own_side_file

#: A label name (``--into-input NAME``): one path component of letters, digits, ``.``, ``_`` and
#: ``-``, not hidden (never ``..``, ``/``, empty or a dotfile).
_LABEL_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
#: The kinds of pixseg output :func:`check_own_output` recognises.
LABEL_OUTPUT, LABEL_TIFF, CONVERTED_IMAGE = "label output", "label TIFF", "converted image"
#: The label group of a ``--with-image`` output: ``OUT.zarr/labels/labels``.
WITH_IMAGE_LABEL = "labels"


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
        raise OutputError(foreign_message(labels_dir, "labels group"))
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
        raise OutputError(foreign_message(path, "output"))
    if kind == LABEL_TIFF:
        own = os.path.isfile(path) and read_label_tiff_status(path) is not None
    else:
        status = read_label_zarr_status(path) if is_dir(path) else None
        own = status is not None and ("model" in status if kind == LABEL_OUTPUT else "source" in status)
    if not own:
        raise OutputError(foreign_message(path, "output", expected=kind))


def check_lock_path(path: str) -> None:
    """Refuse a lock path holding a symlink or a directory: a lock is a plain file pixseg creates."""
    if not is_url(path) and (os.path.islink(path) or os.path.isdir(path)):
        raise OutputError(foreign_message(path, "lock"))


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
            raise OutputError(foreign_message(path, "side file"))


def foreign_message(path: str, what: str, *, expected: str = "") -> str:
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


def _overlap(first: str, second: str) -> bool:
    separator = "/" if is_url(first) else os.sep
    return first == second or first.startswith(second + separator) or second.startswith(first + separator)


def _canonical(path: str) -> str:
    """``path`` as paths are compared: the real path of a local one, a URL without credentials or trailing ``/``."""
    return public_url(path).rstrip("/") if is_url(path) else os.path.realpath(path)


def check_label_name(name: str) -> None:
    """Refuse a label name that is not one plain path component: letters, digits, ``.``, ``_``
    and ``-``, not starting with ``.`` (so never empty, ``..``, a path or a hidden name)."""
    if not _LABEL_NAME.fullmatch(name):
        raise OutputError(
            f"label name {name!r} is not a plain name: use letters, digits, '.', '_' and '-', not starting with '.'"
        )


def check_model_path(model_path: str, *, overwrite: bool) -> None:
    """Refuse a ``--save-model`` path that is not ``.json``, or where something is that is not a
    pixseg model file (a symlink included), or a model file without ``overwrite``. Collisions
    with the input and the output, and its directory, are :func:`check_run_paths`'s."""
    if not model_path.lower().endswith(".json"):
        raise OutputError(f"--save-model {model_path!r}: model files end in .json")
    if exists(model_path):
        document = None if os.path.islink(model_path) else read_json_object(model_path)
        if document is None or document.get("format") != MODEL_FORMAT:
            raise OutputError(foreign_message(model_path, "--save-model", expected="model file"))
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
