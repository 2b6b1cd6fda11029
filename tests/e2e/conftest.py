"""Fixtures for the tests against NVIDIA Dynamo's own processes (frontend, mocker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.sim.dynamo_local import write_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny offline model directory (tokenizer, chat template, config) that Dynamo's frontend and
    mocker load, built once per session. Dynamo must be installed: a missing install fails, never skips."""
    return write_tiny_model(tmp_path_factory.mktemp("dynamo-model"))
