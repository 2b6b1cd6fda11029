"""Running the real ``cost-agent`` console script from the project root, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import agent

ROOT = Path(agent.__file__).resolve().parent.parent


def run_cost_agent(*args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """``cost-agent ARGS`` through the installed console script (``python -m agent`` without one)."""
    script = Path(sys.executable).parent / "cost-agent"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "agent"]
    # Settings come from the command line only: no COST_AGENT_* override from the calling shell.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("COST_AGENT_") or k == "COST_AGENT_DATA_DIR"
    }
    return subprocess.run(
        [*command, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
