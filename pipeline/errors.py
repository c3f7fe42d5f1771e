"""The error hierarchy: every user mistake is a :class:`PipelineError` (exit status 2).

Each error also subclasses the matching built-in exception, so callers that catch
``ValueError`` or ``OSError`` keep working, and callers that must tell cases apart (the batch
runner) decide by type, never by message text. Messages name the path or parameter and the
offending value with ``{!r}``. Anything that is not a :class:`PipelineError` is a bug in pixseg
and surfaces with its traceback.

This module imports nothing from the rest of the package.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error caused by a user's input, argument or environment."""


class InputError(PipelineError, ValueError):
    """An input image is unreadable, corrupt or of an unsupported layout."""


class InputNotFoundError(InputError, FileNotFoundError):
    """An input path does not exist."""


class UnsupportedFormatError(InputError):
    """An input exists but no reader of pixseg's reads its format."""


class OutputError(PipelineError, OSError):
    """An output cannot be written where asked (is the input, bad suffix, disk full...)."""


class OutputExistsError(OutputError, FileExistsError):
    """An output (or a model or side file) already exists and ``overwrite`` was not given."""


class ResumeMismatchError(OutputError):
    """``resume`` found an output that is not an interrupted run of the same job."""


class LockedError(OutputError):
    """Another live run holds the output's lock."""


class ParameterError(PipelineError, ValueError):
    """A parameter (number of clusters, sample size, feature name...) is out of range."""


class ModelError(PipelineError, ValueError):
    """A model file is missing, malformed, or does not fit the image it is applied to."""


class ConfigError(PipelineError, ValueError):
    """A run configuration file is unreadable, has an unknown key, or a value of the wrong type or range."""


class MissingDependencyError(PipelineError, ImportError):
    """An input, output or option needs an optional package that is not installed (the message names
    the pixseg extra that installs it)."""
