"""JSON Schema files for every wire message, generated from the Structs (``cost-agent schemas``).

One file per message, named by its tag (``worker.metrics.v1.json``), so that a worker or actuator
written in any language can validate what it sends. The files are checked in; a test fails when they no
longer match the Structs.

What we publish must depend on our Structs only, not on the msgspec that generated it: msgspec 0.23
began to dedent the docstrings it copies into ``description``, which made every file with a multi-line
docstring "drift" on a fresh install, and before 0.22 it listed ``X | None`` as ``anyOf`` in the other
order. :func:`normalised` makes both canonical, so the files are the same under every msgspec from
0.18.6 to 0.23.0 (checked) and a real change to a Struct still shows.

Every generated file (these, the tables of ``docs/protocol.md``, the example settings) is written and
checked in one place, :mod:`agent.generated` (``cost-agent schemas [--check]``).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import msgspec

from schemas import MESSAGE_TYPES, tag_of

SCHEMA_DIR = Path(__file__).parent / "jsonschema"
_DRAFT = "https://json-schema.org/draft/2020-12/schema"


def schema_documents() -> dict[str, dict[str, Any]]:
    """File name → schema document, for every message type."""
    out: dict[str, dict[str, Any]] = {}
    for kind in MESSAGE_TYPES:
        tag = tag_of(kind)
        schema = normalised(msgspec.json.schema(kind))
        doc: dict[str, Any] = {"$schema": _DRAFT, "$id": f"https://cost-agent.dev/schemas/{tag}.json"}
        doc["title"] = tag
        doc.update(schema)
        out[f"{tag}.json"] = doc
    return out


def normalised(node: Any) -> Any:
    """``node`` with what msgspec's version decides and our Structs do not made canonical, recursively:
    every ``description`` cleaned by :func:`inspect.cleandoc`, and every ``anyOf`` (whose order means
    nothing) sorted by its alternatives' JSON text."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                out[key] = inspect.cleandoc(value)
            elif key == "anyOf" and isinstance(value, list):
                out[key] = sorted((normalised(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
            else:
                out[key] = normalised(value)
        return out
    if isinstance(node, list):
        return [normalised(item) for item in node]
    return node


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every schema file into ``directory`` and remove stale ones."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    documents = schema_documents()
    for name, doc in documents.items():
        path = directory / name
        path.write_text(render(doc), encoding="utf-8")
        written.append(path)
    for stale in directory.glob("*.json"):
        if stale.name not in documents:
            stale.unlink()
    return written


def drift(directory: Path = SCHEMA_DIR) -> list[str]:
    """File names that are missing, stale or different from what the Structs generate."""
    documents = schema_documents()
    problems = []
    for name, doc in documents.items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != render(doc):
            problems.append(name)
    problems += sorted(p.name for p in directory.glob("*.json") if p.name not in documents)
    return problems
