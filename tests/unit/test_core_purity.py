"""``agent.core`` is pure: no module under it imports asyncio, nats or structlog, directly or through others.

Checked twice: statically, by reading every import in every file (top level and nested); and dynamically,
by importing every ``agent.core`` module in a fresh interpreter and looking at ``sys.modules``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import agent.core

CORE = Path(agent.core.__file__).resolve().parent
FORBIDDEN = frozenset({"asyncio", "nats", "structlog"})
CORE_FILES = sorted(CORE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = ("agent", "core", *path.relative_to(CORE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_roots(source: str) -> set[str]:
    """The top-level package of every absolute import anywhere in ``source``.

    Covers ``import x.y``, ``from x.y import z`` and ``__import__("x")`` / ``importlib.import_module("x")``
    with a literal name, at any depth (functions, classes, ``try`` and ``if TYPE_CHECKING`` blocks).
    """
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = getattr(func, "id", None) or getattr(func, "attr", "")
            if name in {"__import__", "import_module"} and isinstance(node.args[0].value, str):
                roots.add(node.args[0].value.split(".")[0])
    return roots


def test_the_import_reader_finds_imports_at_any_depth() -> None:
    source = (
        "from __future__ import annotations\n"
        "import numpy as np\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from nats.aio.client import Client\n"
        "def tick():\n"
        "    import asyncio.events\n"
        "class Actor:\n"
        "    def log(self):\n"
        "        try:\n"
        "            import structlog as log\n"
        "        except ImportError:\n"
        "            pass\n"
        "        return importlib.import_module('nats_extra.x'), __import__('signal')\n"
        "from . import sibling\n"
    )
    assert imported_roots(source) == {
        "__future__",
        "numpy",
        "typing",
        "nats",
        "asyncio",
        "structlog",
        "nats_extra",
        "signal",
    }


def test_the_core_package_has_the_modules_this_test_guards() -> None:
    names = {module_name(path) for path in CORE_FILES}
    assert {"agent.core", "agent.core.catalog", "agent.core.optimizer", "agent.core.profiler"} <= names


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(CORE)))
def test_no_core_file_imports_asyncio_nats_or_structlog(path: Path) -> None:
    assert imported_roots(path.read_text(encoding="utf-8")) & FORBIDDEN == set()


_PROBE = """
import importlib, json, pkgutil, sys
import agent.core
names = ["agent.core"] + [m.name for m in pkgutil.walk_packages(agent.core.__path__, "agent.core.")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"imported": names, "loaded": sorted(sys.modules)}))
"""


def test_importing_every_core_module_in_a_fresh_interpreter_loads_none_of_them() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["imported"]) == {module_name(path) for path in CORE_FILES}
    loaded = {name for name in report["loaded"] if name.split(".")[0] in FORBIDDEN}
    assert loaded == set()
