"""``deploy/agent.example.toml``, written from the settings' own definitions: every field of
:class:`agent.config.Settings` with its default and its description, each section with its docstring.

Rewrite the file with ``cost-agent schemas`` (:mod:`agent.generated`, with the other generated files); a test
fails when the file and the definitions differ.
"""

from __future__ import annotations

import inspect
import json
import textwrap
from typing import Any

import msgspec
import msgspec.inspect

from agent.config import Settings

WIDTH = 120  # an inline description fits within this
COMMENT_WIDTH = 110  # a description too long to fit inline is wrapped to this, above its field
COMMENT_COLUMN = 33  # where an inline description starts (later after a long field)


def example_toml() -> str:
    """The example settings file: the defaults of :class:`Settings`, described."""
    lines = _comment(_summary(Settings))
    _section(_struct_info(Settings), "", lines)
    return "\n".join(lines) + "\n"


def _section(info: msgspec.inspect.StructType, name: str, lines: list[str]) -> None:
    """A section's own fields, then each of its sub-sections as ``[name.sub]`` (``[sub]`` at the top)."""
    scalars = [f for f in info.fields if not isinstance(f.type, msgspec.inspect.StructType)]
    sections = [f for f in info.fields if isinstance(f.type, msgspec.inspect.StructType)]
    for field in scalars:
        lines += ([""] if not name else []) + _field_lines(field)
    for section in sections:
        assert isinstance(section.type, msgspec.inspect.StructType)
        lines.append("")
        lines += _comment(_summary(section.type.cls))
        qualified = f"{name}.{section.name}" if name else section.name
        lines.append(f"[{qualified}]")
        _section(section.type, qualified, lines)


def _struct_info(cls: type[msgspec.Struct]) -> msgspec.inspect.StructType:
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    return info


def _summary(cls: type) -> str:
    """A section's docstring up to its first blank line (the rest is for readers of the code)."""
    own = cls.__dict__.get("__doc__")
    return inspect.cleandoc(own).split("\n\n")[0] if own else ""


def description(field: msgspec.inspect.Field) -> str:
    """A field's description, from the ``Meta`` of its type (empty when it has none)."""
    if isinstance(field.type, msgspec.inspect.Metadata) and field.type.extra_json_schema:
        return str(field.type.extra_json_schema.get("description", ""))
    return ""


def _field_lines(field: msgspec.inspect.Field) -> list[str]:
    """``name = default``, described inline when it fits, else by comment lines above it."""
    default = field.default_factory() if field.default is msgspec.NODEFAULT else field.default
    line = f"{field.name} = {_literal(default)}"
    text = description(field)
    pad = COMMENT_COLUMN - 1 if len(line) < COMMENT_COLUMN - 2 else len(line) + 3
    inline = f"{line.ljust(pad)} # {text}"
    if not text or len(inline) <= WIDTH:
        return [inline if text else line]
    return [*_comment(text), line]


def _comment(text: str) -> list[str]:
    paragraphs = text.split("\n")
    return [f"# {line}" for paragraph in paragraphs for line in textwrap.wrap(paragraph, COMMENT_WIDTH - 2)]


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_literal(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML literal for the default {value!r}")
