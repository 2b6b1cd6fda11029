"""``cost-agent demo`` as CI runs it: an hour and a half of the whole system with a reclaim storm of 30 s
notices that moves requests off the nodes it hits, judged from its JSON summary; two hours with the agent
process killed mid-run; and Ctrl-C in the middle."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import nats
import pytest
from cli import ROOT, cost_agent_command, cost_agent_env, run_cost_agent

from agent.subjects import Subjects

# The demos run at many times real speed, so a starved CPU stretches their simulated minutes (a request
# was lost once beside another test process): `make unit` runs them on their own, after the rest.
pytestmark = [pytest.mark.usefixtures("demo_traces"), pytest.mark.accelerated_demo]


def demo(tmp_path: Path, *extra: str, hours: str = "2", speed: str = "240") -> dict[str, object]:
    summary_path = tmp_path / "summary.json"
    plot_path = tmp_path / "demo.png"
    result = run_cost_agent(
        "demo",
        "--duration",
        hours,
        "--speed",
        speed,
        "--storm-at",
        "0.25",
        "--no-live",
        "--json",
        str(summary_path),
        "--plot",
        str(plot_path),
        *extra,
        timeout_s=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    summary: dict[str, object] = json.loads(summary_path.read_text())
    assert summary["plot"] == str(plot_path)
    assert plot_path.stat().st_size > 10_000
    return summary


def test_a_reclaim_storm_of_short_notices_moves_requests_loses_nothing_and_the_costs_agree(
    tmp_path: Path,
) -> None:
    # A storm that takes most spot nodes within its hour, every notice 30 s, and 5% long generations (the
    # default 1% leaves a node holding one on only a few of a short run's notices): they cannot finish in
    # place on the busy nodes the storm hits first, so requests move. A 30 s notice is 190 ms of real
    # time at 160×: enough for the agent to drain on a loaded machine (at 240×, 125 ms, the worker's
    # in-flight list came too late twice in ten runs with other suites running).
    summary = demo(
        tmp_path,
        *("--short-notice-share", "1", "--storm-rate", "0.9", "--long-share", "0.05"),
        hours="1.5",
        speed="160",
    )
    assert summary["requests_served"] > 100
    assert summary["requests_long"] > 0
    assert summary["requests_lost"] == 0
    assert summary["preemptions"] >= 1
    assert summary["short_notices"] == summary["preemptions"]
    assert summary["migration_reports"] >= 1
    assert summary["migration_lost"] == 0
    assert summary["requests_moved_on_notice"] > 0
    counts = summary["migration_counts"]
    assert isinstance(counts, dict)
    assert summary["requests_moved"] == sum(
        counts[k] for k in counts if k not in ("finished_in_place", "failed")
    )
    assert summary["plans"] >= 10
    assert summary["plans_applied"] == summary["plans"]
    assert summary["plan_violations"] == 0
    assert summary["cost_agreement"] is not None
    assert summary["cost_agreement"] <= 0.01


def test_the_system_keeps_serving_while_the_agent_is_down_and_the_restarted_agent_plans_again(
    tmp_path: Path,
) -> None:
    # Nobody drains a node whose notice comes while the agent is down; with neither long generations nor
    # short notices, whatever such a node holds finishes in place all the same.
    summary = demo(tmp_path, "--kill-agent-at", "1.0", "--long-share", "0", "--short-notice-share", "0")
    assert summary["agent_restarts"] == 1
    assert summary["requests_lost"] == 0
    assert summary["plans_after_agent_restart"] >= 1
    assert summary["requests_served"] > 100


@pytest.mark.parametrize(
    "flag",
    ["--speed=0", "--duration=-1", "--short-notice-share=1.5", "--long-tokens=0", "--storm-rate=nan"],
)
def test_bad_options_stop_the_demo_with_one_line(flag: str) -> None:
    result = run_cost_agent("demo", flag, "--no-live", timeout_s=60)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert flag.split("=")[0] in result.stderr


def children(pid: int) -> dict[int, str]:
    """The processes whose parent is ``pid``, with their command lines."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found[int(stat.parent.name)] = (
                    (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
        except (OSError, IndexError, ValueError):
            continue  # it ended while we looked
    return found


def wait_for_children(pid: int, *needles: str, timeout_s: float) -> dict[int, str]:
    """``pid``'s children once one of them matches each needle (polled: no event tells us from outside)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = children(pid)
        if all(any(n in cmd for cmd in found.values()) for n in needles):
            return found
        time.sleep(0.1)  # a poll of /proc: a child process's start has no event to wait on from outside
    raise AssertionError(f"no children matching {needles} after {timeout_s} s: {children(pid)}")


def wait_for_first_plan(agent_pid: int, agent_cmdline: str, timeout_s: float) -> None:
    """Wait for the agent to publish a plan on the demo's own nats-server: the demo is then mid-run."""
    args = agent_cmdline.split()
    url = args[args.index("--nats-url") + 1]
    pairs = Path(f"/proc/{agent_pid}/environ").read_text().split("\0")
    environ = dict(item.split("=", 1) for item in pairs if "=" in item)

    async def first_plan() -> None:
        nc = await nats.connect(url)
        try:
            sub = await nc.subscribe(Subjects(environ["COST_AGENT_BUS__NAMESPACE"]).plan_allocation)
            await sub.next_msg(timeout=timeout_s)
        finally:
            await nc.close()

    asyncio.run(first_plan())


def wait_noting_children(proc: subprocess.Popen[str], started: dict[int, str], timeout_s: float) -> str:
    """Wait for ``proc`` to end, adding to ``started`` every child it has meanwhile; return its stderr."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        started.update(children(proc.pid))
        time.sleep(0.1)  # a poll: every child must be seen while it lives, and /proc has no event for it
    _out, err = proc.communicate(timeout=5)
    return err


@pytest.mark.timeout(240)
@pytest.mark.parametrize("when", ["start-up", "mid-run"])
def test_ctrl_c_ends_the_demo_with_a_summary_and_leaves_no_nats_server_or_agent(
    tmp_path: Path, when: str
) -> None:
    summary_path = tmp_path / "summary.json"
    args = ("demo", "--duration", "2", "--speed", "240", "--no-live", "--json", str(summary_path))
    proc = subprocess.Popen(
        cost_agent_command(*args, "--plot", str(tmp_path / "demo.png")),
        cwd=ROOT,
        env=cost_agent_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started: dict[int, str] = {}
    try:
        if when == "start-up":  # the server is up, the agent process may not be yet
            started = wait_for_children(proc.pid, "nats-server", timeout_s=120)
        else:
            started = wait_for_children(proc.pid, "nats-server", " run ", timeout_s=120)
            wait_for_first_plan(
                *next((p, cmd) for p, cmd in started.items() if " run " in cmd), timeout_s=120
            )
        proc.send_signal(signal.SIGINT)
        err = wait_noting_children(proc, started, timeout_s=90)
    finally:
        if proc.poll() is None:  # the test failed: leave nothing running
            proc.kill()
            proc.wait()
            for pid in started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    summary = json.loads(summary_path.read_text())
    assert summary["interrupted"] is True
    if when == "mid-run":
        assert 0 < summary["simulated_hours"] < 2
        assert summary["plans"] >= 1
    left = [cmd for pid, cmd in started.items() if Path(f"/proc/{pid}").exists()]
    assert left == []
