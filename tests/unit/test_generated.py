"""Every generated file matches the code, and the drift check names each one that does not: the JSON
Schema files, the tables of docs/protocol.md, the example settings and the Kubernetes manifests generated
from deploy/nats.conf, deploy/kubernetes/agent.toml and a template (``cost-agent schemas [--check]``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.deploy_manifests import AGENT_CONFIGMAP, AGENT_TOML, NATS_CONF, NATS_CONFIGMAP, sidecar_path
from agent.generated import PROTOCOL_DOC, ROOT, SCHEMA_DIR, SETTINGS_EXAMPLE, drift, write

# The generated manifests and the files they are generated from.
MANIFESTS = (NATS_CONFIGMAP, AGENT_CONFIGMAP, *(sidecar_path(p) for p in ("aws", "gcp", "azure")))
SOURCES = (NATS_CONF, AGENT_TOML)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the generated files, as they are checked in."""
    shutil.copytree(ROOT / SCHEMA_DIR, tmp_path / SCHEMA_DIR)
    for path in (PROTOCOL_DOC, SETTINGS_EXAMPLE, *MANIFESTS, *SOURCES):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / path, tmp_path / path)
    return tmp_path


def test_the_checked_in_generated_files_match_the_code() -> None:
    # On failure: run `cost-agent schemas` and commit the files it names.
    assert drift() == []


def test_every_kind_of_generated_file_is_checked_and_rewritten(tree: Path) -> None:
    schema = tree / SCHEMA_DIR / "spot.price.v1.json"
    document = json.loads(schema.read_text(encoding="utf-8"))
    document["title"] = "edited"
    schema.write_text(json.dumps(document), encoding="utf-8")
    (tree / SCHEMA_DIR / "worker.ack.v1.json").unlink()
    (tree / SCHEMA_DIR / "old.thing.v0.json").write_text("{}\n", encoding="utf-8")
    page = tree / PROTOCOL_DOC
    page.write_text(
        page.read_text(encoding="utf-8").replace("Gauge at `sent_at`: requests waiting.", "Waiting.", 1),
        encoding="utf-8",
    )
    example = tree / SETTINGS_EXAMPLE
    example.write_text(example.read_text(encoding="utf-8").replace("= 300.0", "= 60.0", 1), encoding="utf-8")
    # A source edited (its ConfigMap is now stale), a generated manifest edited, another removed.
    nats = tree / NATS_CONF
    nats.write_text(nats.read_text(encoding="utf-8") + "# a team's note\n", encoding="utf-8")
    aws = tree / sidecar_path("aws")
    aws.write_text(aws.read_text(encoding="utf-8").replace("cpu: 10m", "cpu: 1", 1), encoding="utf-8")
    (tree / AGENT_CONFIGMAP).unlink()

    assert sorted(drift(tree)) == sorted(
        [
            str(SCHEMA_DIR / "spot.price.v1.json"),
            str(SCHEMA_DIR / "worker.ack.v1.json"),
            str(SCHEMA_DIR / "old.thing.v0.json"),
            str(PROTOCOL_DOC),
            str(SETTINGS_EXAMPLE),
            str(NATS_CONFIGMAP),
            str(AGENT_CONFIGMAP),
            str(sidecar_path("aws")),
        ]
    )

    write(tree)

    assert drift(tree) == []
    assert not (tree / SCHEMA_DIR / "old.thing.v0.json").exists()
    for path in (PROTOCOL_DOC, SETTINGS_EXAMPLE, AGENT_CONFIGMAP, sidecar_path("aws")):
        assert (tree / path).read_text(encoding="utf-8") == (ROOT / path).read_text(encoding="utf-8")
    assert (tree / NATS_CONFIGMAP).read_text(encoding="utf-8").endswith("    # a team's note\n")


def test_writing_an_up_to_date_tree_changes_nothing(tree: Path) -> None:
    assert write(tree) == []


def test_cost_agent_schemas_check_passes_on_the_repository() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "schemas", "--check"], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
