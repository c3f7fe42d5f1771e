"""Model files: JSON with a format name and schema version, never pickle."""

from __future__ import annotations

import json
from typing import Any

from pixseg.errors import ModelError
from pixseg.io.atomic import write_json_atomic
from pixseg.model import SegmentationModel

MODEL_FORMAT = "pixseg-model"
#: 2 added per-channel ranges, texture sigmas and the mask mode to the feature spec (1 still reads).
SCHEMA_VERSION = 2


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
        If the file is missing, not JSON, not a pixseg model, of a newer schema, or malformed.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except FileNotFoundError as err:
        raise ModelError(f"model file {path!r} does not exist") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"model file {path!r} is not readable JSON: {err}") from err
    return model_from_document(document, path)


def model_from_document(document: Any, source: str) -> SegmentationModel:
    """Validate a model document (from a file or an output's metadata) and build the model."""
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
    except (KeyError, TypeError, ValueError) as err:
        raise ModelError(f"model {source!r} is malformed: {err!r}") from err


def model_document(model: SegmentationModel) -> dict[str, Any]:
    """The JSON document of ``model`` (as saved, without provenance)."""
    return {"format": MODEL_FORMAT, "schema_version": SCHEMA_VERSION, **model.to_dict()}
