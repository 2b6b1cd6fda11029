"""Every file the code generates, written and checked in one place (``cost-agent schemas [--check]``).

- ``schemas/jsonschema/*.json``: one JSON Schema per wire message (:mod:`schemas.jsonschema_files`);
- ``docs/protocol.md``: its field and subject tables, between marker comments (:mod:`agent.protocol_doc`);
  the prose around them is hand-written and kept;
- ``deploy/agent.example.toml``: every setting with its default and description
  (:mod:`agent.settings_example`);
- ``deploy/kubernetes/nats-config.yaml`` and ``agent-config.yaml``: the ConfigMaps carrying
  ``deploy/nats.conf`` and ``deploy/kubernetes/agent.toml``; ``sidecar-*.yaml``: the notice sidecar's
  DaemonSet per cloud (:mod:`agent.deploy_manifests`).

Each is checked in, so that a reader without the code has them; a test and CI's ``--check`` fail when one
no longer matches the code, and ``cost-agent schemas`` rewrites them all. Paths are the source tree's
(the files are not part of an installed wheel).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.deploy_manifests import manifests
from agent.protocol_doc import render_doc
from agent.settings_example import example_toml
from schemas.jsonschema_files import render, schema_documents

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_DIR = Path("schemas") / "jsonschema"
PROTOCOL_DOC = Path("docs") / "protocol.md"
SETTINGS_EXAMPLE = Path("deploy") / "agent.example.toml"


@dataclass(frozen=True, slots=True)
class Generated:
    """What the code generates under ``root``: each file's expected text, and files to remove."""

    expected: dict[Path, str]
    stale: list[Path]


def generate(root: Path = ROOT) -> Generated:
    expected = {root / SCHEMA_DIR / name: render(doc) for name, doc in schema_documents().items()}
    page = root / PROTOCOL_DOC
    if page.is_file():
        expected[page] = render_doc(page.read_text(encoding="utf-8"))
    expected[root / SETTINGS_EXAMPLE] = example_toml()
    expected |= manifests(root)
    stale = sorted(p for p in (root / SCHEMA_DIR).glob("*.json") if p not in expected)
    return Generated(expected, stale)


def drift(root: Path = ROOT) -> list[str]:
    """Paths (relative to ``root``) that are missing, differ from what the code generates, or are stale."""
    generated = generate(root)
    different = [
        path
        for path, text in generated.expected.items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    ]
    return [str(p.relative_to(root)) for p in [*different, *generated.stale]]


def write(root: Path = ROOT) -> list[Path]:
    """Rewrite what differs and remove stale files; the paths changed."""
    generated = generate(root)
    changed = []
    for path, text in generated.expected.items():
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    for path in generated.stale:
        path.unlink()
        changed.append(path)
    return changed
