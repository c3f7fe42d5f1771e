"""Model files: JSON with a format name and schema version, never pickle."""

from __future__ import annotations

import json
from typing import Any

from pixseg.errors import ModelError
from pixseg.io.atomic import write_json_atomic
from pixseg.io.remote import read_file
from pixseg.model import SegmentationModel

MODEL_FORMAT = "pixseg-model"
#: 2 added per-channel ranges, texture sigmas and the mask mode to the feature spec; 3 the optional
#: class table (``classes``, see :mod:`pixseg.classes`). Versions 1 and 2 still read.
SCHEMA_VERSION = 3
#: Largest model file read (16 MiB): refused before parsing. A model of ``MAX_CLUSTERS`` clusters
#: and hundreds of feature columns stays well below it.
MAX_MODEL_BYTES = 16 * 2**20


def save_model(model: SegmentationModel, path: str, *, provenance: dict[str, Any]) -> None:
    """Write ``model`` as JSON, atomically (see :func:`pixseg.io.atomic.atomic_file`).

    Parameters
    ----------
    model : SegmentationModel
        The fitted model.
    path : str
        Destination ``.json`` file.
    provenance : dict
        Where the model came from (input path, versions...), stored as-is.

    Raises
    ------
    ModelError
        If the file cannot be written (``path`` is then left as it was).
    """
    document = {**model_document(model), "provenance": provenance}
    try:
        write_json_atomic(path, document)
    except OSError as err:
        raise ModelError(f"cannot write model file {path!r}: {err}") from err


def load_model(path: str) -> SegmentationModel:
    """Read a model written by :func:`save_model`.

    Raises
    ------
    ModelError
        If the file is missing, larger than ``MAX_MODEL_BYTES``, not JSON (or nested too deeply
        to parse), not a pixseg model, of a newer schema, or malformed; the message names the
        file and the first bad field.
    """
    return model_from_document(read_model_document(path), path)


def read_model_document(path: str) -> Any:
    """The parsed JSON of a model file, not yet checked (see :func:`load_model` for the errors)."""
    try:
        raw = read_file(path, limit=MAX_MODEL_BYTES + 1)
    except FileNotFoundError as err:
        raise ModelError(f"model file {path!r} does not exist") from err
    except OSError as err:
        raise ModelError(f"model file {path!r} cannot be read: {err}") from err
    if len(raw) > MAX_MODEL_BYTES:
        raise ModelError(f"model file {path!r} is larger than {MAX_MODEL_BYTES // 2**20} MiB; it is not a pixseg model")
    try:
        document = json.loads(raw.decode("utf-8"))
    except RecursionError as err:
        raise ModelError(f"model file {path!r} is nested too deeply to be a pixseg model") from err
    except (UnicodeDecodeError, ValueError) as err:  # ValueError: JSONDecodeError, or an integer too long
        raise ModelError(f"model file {path!r} is not readable JSON: {err}") from err
    return document


def model_from_document(document: Any, source: str) -> SegmentationModel:
    """Validate a model document (from a file or an output's metadata) and build the model.

    Raises
    ------
    ModelError
        Naming ``source`` and the first bad field (see :meth:`SegmentationModel.from_dict`).
    """
    if not isinstance(document, dict) or document.get("format") != MODEL_FORMAT:
        raise ModelError(f'{source!r} is not a pixseg model (no "format": {MODEL_FORMAT!r})')
    version = document.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
        raise ModelError(
            f"model {source!r} has schema_version {version!r}; this pixseg reads versions 1..{SCHEMA_VERSION} "
            "(upgrade pixseg to read newer models)"
        )
    try:
        return SegmentationModel.from_dict(document)
    except ValueError as err:
        raise ModelError(f"model {source!r} is malformed: {err}") from err


def model_document(model: SegmentationModel) -> dict[str, Any]:
    """The JSON document of ``model`` (as saved, without provenance)."""
    return {"format": MODEL_FORMAT, "schema_version": SCHEMA_VERSION, **model.to_dict()}
