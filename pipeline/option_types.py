"""The machinery behind :mod:`pixseg.options`: how an option is declared, converted and checked.

An option is a field of a frozen dataclass declared with :func:`option`, which stores an
:class:`OptionSpec` in the field's metadata. :class:`Validated` checks every field against its
declaration when the object is made; :func:`check_value` converts a value (a string from the
command line or a YAML value) to the field's type and checks its range and choices. Imports
nothing heavy.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pixseg.errors import ParameterError


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


class Validated:
    """Validates every field against its declaration when the options object is made."""

    @classmethod
    def implied_defaults(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults that the explicitly given ``values`` imply (a preset's settings); none here."""
        return {}

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for item in dataclasses.fields(self):  # type: ignore[arg-type]
            value = check_value(item.name, spec_of(item), hints[item.name], getattr(self, item.name))
            object.__setattr__(self, item.name, value)


def build_options(cls: type, values: Mapping[str, Any]) -> Any:
    """``cls(**values)`` over the defaults ``values`` imply (:meth:`Validated.implied_defaults`):
    the one place the CLI, configs and the Python API make an options object, so an explicitly
    given value always wins over a preset's."""
    implied = cls.implied_defaults(values) if issubclass(cls, Validated) else {}
    return cls(**{**implied, **values})


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
            _check_range(name, spec, float(item), value)
    return value


def _check_range(name: str, spec: OptionSpec, item: float, value: Any) -> None:
    shown = list(value) if isinstance(value, tuple) else value
    low, high = spec.minimum, spec.maximum
    if low is not None and high is not None and not low <= item <= high:
        raise OptionError(name, f"must be between {format_number(low)} and {format_number(high)}, got {shown!r}")
    if spec.minimum is not None and item < spec.minimum:
        raise OptionError(name, f"must be >= {format_number(spec.minimum)}, got {shown!r}")
    if spec.above is not None and item <= spec.above:
        raise OptionError(name, f"must be > {format_number(spec.above)}, got {shown!r}")
    if spec.maximum is not None and item > spec.maximum:
        raise OptionError(name, f"must be <= {format_number(spec.maximum)}, got {shown!r}")


def format_number(value: float) -> str:
    """``value`` as an integer when it is one, else in ``%g`` form."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _convert(name: str, hint: Any, value: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        # int | str (``clusters``: 5 or "auto:2-12"): the first plain type the value already has
        plain = (a for a in inner if isinstance(a, type) and isinstance(value, a))
        return _convert(name, next(plain, inner[0]), value)
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
    except ValueError as err:
        kind = {int: "an integer", float: "a number"}.get(parse, str(err))  # type: ignore[call-overload]
        raise OptionError(name, f"must be {kind}, got {text!r}") from None


def _describe(value: Any) -> str:
    kind = "null" if value is None else type(value).__name__
    return f"{value!r} ({kind})" if not isinstance(value, dict | list) else kind
