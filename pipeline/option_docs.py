"""The option reference of ``docs/cli.md``, generated from the option declarations.

``python -m pixseg.option_docs`` prints it; a test checks that ``docs/cli.md`` holds exactly this
text between its ``options:start`` and ``options:end`` markers, so the reference cannot drift
from the code.
"""

from __future__ import annotations

from typing import Any

from pixseg.option_types import OptionSpec, format_number, option_fields
from pixseg.options import (
    BatchOptions,
    ComputeOptions,
    ConvertOptions,
    FitOptions,
    OutputOptions,
    ReadOptions,
)

#: The reference's sections: title and options class.
SECTIONS = (
    ("Input (`segment`, `apply`, `demo`; config `read:`)", ReadOptions),
    ("Fit (`segment`, `demo`; config top level and `sampling:`)", FitOptions),
    ("Output (`segment`, `apply`; config `output:`)", OutputOptions),
    ("Compute (`segment`, `apply`, `run`, `demo`; config `compute:`)", ComputeOptions),
    ("Batch (config only: `pixseg run`)", BatchOptions),
    ("Conversion (`convert`)", ConvertOptions),
)
START, END = "<!-- options:start -->", "<!-- options:end -->"


def options_reference() -> str:
    """Markdown tables of every option: Python name, CLI flag, config key, default, allowed values, help."""
    parts = []
    for title, cls in SECTIONS:
        rows = [
            f"### {title}",
            "",
            "| Python | CLI | config key | default | allowed | meaning |",
            "|---|---|---|---|---|---|",
        ]
        for item, spec, _ in option_fields(cls):
            flag = " ".join(f"`{f}`" for f in (spec.flag, spec.short) if f) or "-"
            key = f"`{spec.config}`" if spec.config else "-"
            rows.append(
                f"| `{item.name}` | {flag} | {key} | {_default(item.default, item.default_factory)} "
                f"| {_allowed(spec)} | {_cell(spec.help)} |"
            )
        parts.append("\n".join(rows))
    return "\n\n".join(parts) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default(default: Any, factory: Any) -> str:
    import dataclasses

    if default is dataclasses.MISSING:
        default = factory()
    if default is None or default == () or default == {}:
        return "-"
    if isinstance(default, tuple):
        return "`" + ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default) + "`"
    return f"`{default}`"


def _allowed(spec: OptionSpec) -> str:
    if spec.choices is not None:
        return ", ".join(f"`{c}`" for c in spec.allowed() or ())
    bounds = []
    if spec.minimum is not None:
        bounds.append(f">= {format_number(spec.minimum)}")
    if spec.above is not None:
        bounds.append(f"> {format_number(spec.above)}")
    if spec.maximum is not None:
        bounds.append(f"<= {format_number(spec.maximum)}")
    words = " and ".join(bounds)
    if spec.keywords:
        words = ", ".join(f"`{k}`" for k in spec.keywords) + " or a path"
    return words or "-"


if __name__ == "__main__":  # pragma: no cover
    print(options_reference(), end="")
