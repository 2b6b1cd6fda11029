"""Fixtures for the tests against NVIDIA Dynamo's own processes (frontend, mocker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.sim.dynamo_local import write_tiny_model
from agent.sim.traces import TraceError, find_data_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny offline model directory (tokenizer, chat template, config) that Dynamo's frontend and
    mocker load, built once per session. Dynamo must be installed: a missing install fails, never skips."""
    return write_tiny_model(tmp_path_factory.mktemp("dynamo-model"))


@pytest.fixture(scope="module")
def demo_traces() -> None:
    """The demos replay the shared traces; without them (a clone outside the workspace) they cannot run:
    the test is skipped, saying which is missing."""
    try:
        directory = find_data_dir()
    except TraceError as exc:
        pytest.skip(f"shared data directory not found: {exc}")
    for path in (
        directory / "traces" / "servegen",
        directory / "spot" / "skypilot" / "availability" / "16-node" / "aws-08-27-2023",
    ):
        if not path.exists():
            pytest.skip(f"{path} not present")
