"""Running the real ``cost-agent`` console script from the project root, as a user would."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import agent

ROOT = Path(agent.__file__).resolve().parent.parent


def cost_agent_command(*args: str) -> list[str]:
    """``cost-agent ARGS`` through the installed console script (``python -m agent`` without one)."""
    script = Path(sys.executable).parent / "cost-agent"
    return [*([str(script)] if script.is_file() else [sys.executable, "-m", "agent"]), *args]


def cost_agent_env() -> dict[str, str]:
    """Settings come from the command line only: no COST_AGENT_* override from the calling shell."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith("COST_AGENT_") or k == "COST_AGENT_DATA_DIR"
    }


def run_cost_agent(*args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """``cost-agent ARGS`` run to its end."""
    return subprocess.run(
        cost_agent_command(*args),
        cwd=ROOT,
        env=cost_agent_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def run_bench(script: str, *args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """``python bench/SCRIPT ARGS`` run to its end, from the project root."""
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def load_bench(script: str) -> ModuleType:
    """``bench/SCRIPT`` imported as a module (``bench_<name>``), to test its pure helpers."""
    spec = importlib.util.spec_from_file_location(f"bench_{Path(script).stem}", ROOT / "bench" / script)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name while its classes are built
    spec.loader.exec_module(module)
    return module


class LoggedProcess:
    """A running ``cost-agent`` subprocess whose stderr is JSON log lines, read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self._logged = asyncio.Condition()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "unparsed", "line": line.decode(errors="replace")}
            async with self._logged:
                self.events.append(event)
                self._logged.notify_all()

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]

    def event(self, name: str) -> dict[str, Any]:
        return self.named(name)[0]

    async def wait_logged(self, name: str, timeout_s: float) -> dict[str, Any]:
        """The first log line with this event name, waiting for it up to ``timeout_s``."""
        async with asyncio.timeout(timeout_s), self._logged:
            await self._logged.wait_for(lambda: bool(self.named(name)))
        return self.event(name)

    async def finish(self) -> int:
        code = await self.proc.wait()
        await self._reader
        return code


async def start_cost_agent(*args: str) -> LoggedProcess:
    """``cost-agent ARGS`` started as a user would, its JSON log lines read as they come."""
    proc = await asyncio.create_subprocess_exec(
        *cost_agent_command(*args, "--log-format", "json"),
        cwd=ROOT,
        env=cost_agent_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    return LoggedProcess(proc)
