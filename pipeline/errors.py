"""The error hierarchy: every user mistake is a :class:`PipelineError` (exit status 2).

Each error also subclasses the matching built-in exception, so callers that catch
``ValueError`` or ``OSError`` keep working. Messages name the path or parameter and
the offending value with ``{!r}``.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error caused by a user's input, argument or environment."""


class InputError(PipelineError, ValueError):
    """An input image is missing, unreadable, corrupt or of an unsupported layout."""


class OutputError(PipelineError, OSError):
    """An output cannot be written where asked (exists, is the input, bad suffix...)."""


class ParameterError(PipelineError, ValueError):
    """A parameter (number of clusters, sample size, feature name...) is out of range."""


class ModelError(PipelineError, ValueError):
    """A model file is missing, malformed, or does not fit the image it is applied to."""


class ConfigError(PipelineError, ValueError):
    """A run configuration file is unreadable, has an unknown key, or a value of the wrong type or range."""
