"""Durable state: a real ``cost-agent run`` on a real nats-server with JetStream, killed with SIGKILL and
started again, or stopped with SIGTERM in the middle of a drain.

The test plays everyone else on the bus (tests/e2e/durable_rig.py): the actuator, the workers, the router
and the notice sidecar. Before the kill it answers none of the coordinator's commands, so that its drains
are still running when the agent dies.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cli import LoggedProcess, run_cost_agent
from durable_rig import Bus, agent_config, kill_9, saves, start_agent
from waits import eventually

from agent.runtime.nats_server import NatsServer

WAIT_S = 30.0  # generous: every wait is for a condition, never for the time itself


@pytest.fixture(scope="module")
def jetstream_url() -> Iterator[str]:
    with NatsServer(jetstream=True) as server:
        yield server.url


@pytest.fixture
async def rig(jetstream_url: str, tmp_path: Path) -> AsyncIterator[tuple[Bus, Path]]:
    """The test's connection on a fresh namespace, and the settings file of the agent it runs there."""
    ns = f"dur{uuid.uuid4().hex[:8]}"
    bus = await Bus.open(jetstream_url, ns)
    config = agent_config(tmp_path, jetstream_url, ns)
    # One agent, restarted: without the lease it is back in about a second instead of waiting out its old
    # lease (~10 s). The lease's own restart path is the store_dir test's (defaults) and the leader tests'.
    config.write_text(config.read_text() + "[leader]\nenabled = false\n")
    yield bus, config
    await bus.nc.close()


@pytest.fixture
async def agents() -> AsyncIterator[list[LoggedProcess]]:
    """Every agent process a test starts; killed at the end if still running."""
    started: list[LoggedProcess] = []
    yield started
    for agent in started:
        if agent.proc.returncode is None:
            agent.proc.kill()  # an embedded nats-server goes with it (it dies with its parent)
            await agent.finish()


async def test_after_kill_9_the_agent_bills_the_gap_accepts_a_notice_and_finishes_or_reports_its_drains(
    rig: tuple[Bus, Path], agents: list[LoggedProcess]
) -> None:
    bus, config = rig
    agents.append(first := await start_agent(config))

    await bus.node("r-1", "reserved")
    for instance in ("s-1", "s-2", "s-3"):
        await bus.node(instance, "spot")
    # s-1 has two minutes left, s-2 a few seconds: the agent is killed while both drains wait on the
    # workers, and comes back after s-2's deadline.
    long_deadline, short_deadline = time.time() + 120, time.time() + 6
    await bus.notice("s-1", long_deadline)
    await bus.notice("s-2", short_deadline)
    await eventually(
        lambda: {"router.stop_routing"} <= set(bus.commands) and bus.drained("s-1") and bus.drained("s-2"),
        "both drains under way",
        WAIT_S,
    )
    before = await bus.cost_report()
    assert before["instance_hours"]["reserved"] > 0
    # The drains were saved when they started, the fleet at each event; the tokens served within
    # [state] snapshot_seconds: once a save follows the report, the report's figures are all saved.
    port = first.event("metrics_serving")["port"]
    saved = saves(port, "cost_reporter")
    await eventually(lambda: saves(port, "cost_reporter") > saved, "a save after the report", WAIT_S)
    await kill_9(first)
    assert not bus.reported("s-1")
    assert not bus.reported("s-2")

    await eventually(lambda: time.time() > short_deadline, "s-2's deadline passed", WAIT_S)
    bus.answering = True
    agents.append(second := await start_agent(config))

    # A drain whose deadline passed while the agent was down: reported, saying so, with what it knew.
    await eventually(lambda: bool(bus.reported("s-2")), "s-2 reported", WAIT_S)
    (interrupted,) = bus.reported("s-2")
    assert interrupted["interrupted_by"] == "restart"
    assert interrupted["deadline"] == pytest.approx(short_deadline)
    # A drain with time left: finished (stop routing, read in-flight, report).
    await eventually(lambda: bool(bus.reported("s-1")), "s-1 finished", WAIT_S)
    (finished,) = bus.reported("s-1")
    assert finished["interrupted_by"] is None
    assert finished["lost"] == 0
    assert "w-1.inflight" in bus.commands

    # A notice for a node the agent knew before the kill is accepted: a drain order, not "unknown".
    await bus.notice("s-3", time.time() + 120)
    await eventually(lambda: bus.drained("s-3"), "a drain order for s-3", WAIT_S)
    assert not [e for e in second.named("bad_message") if "s-3" in str(e)]

    # The ledger goes on from before the kill, and the nodes running across it are billed for the gap.
    after = await bus.cost_report()
    assert after["period_start"] == pytest.approx(before["period_start"])
    gap_h = (after["period_end"] - before["period_end"]) / 3600
    assert gap_h > 0
    reserved_h = after["instance_hours"]["reserved"] - before["instance_hours"]["reserved"]
    assert reserved_h == pytest.approx(gap_h, rel=0.02)
    spot_h = after["instance_hours"]["spot"] - before["instance_hours"]["spot"]
    assert spot_h == pytest.approx(3 * gap_h, rel=0.02)
    assert after["total_cost"] > before["total_cost"]
    assert after["tokens"] == before["tokens"] == 3 * 15_000  # served before the kill, counted once

    loaded = {e["key"] for e in second.named("state_loaded")}
    assert {"cost_reporter", "spot_monitor", "migration", "optimizer"} <= loaded
    assert not second.named("state_snapshot_rejected")

    second.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(second.finish(), timeout=30) == 0


async def test_sigterm_during_a_drain_reports_it_and_a_restart_finishes_it(
    rig: tuple[Bus, Path], agents: list[LoggedProcess]
) -> None:
    bus, config = rig
    agents.append(first := await start_agent(config))
    await bus.node("s-1", "spot")
    await bus.notice("s-1", time.time() + 120)
    await eventually(lambda: "router.stop_routing" in bus.commands, "the drain under way", WAIT_S)

    first.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(first.finish(), timeout=30) == 0
    await eventually(lambda: bool(bus.reported("s-1")), "a report of the drain", WAIT_S)
    (report,) = bus.reported("s-1")
    assert report["interrupted_by"] == "shutdown"
    assert first.named("drain_interrupted")

    # Its deadline has not passed: a restarted agent finishes it.
    bus.answering = True
    agents.append(second := await start_agent(config))
    await eventually(lambda: len(bus.reported("s-1")) == 2, "the drain finished", WAIT_S)
    assert bus.reported("s-1")[1]["interrupted_by"] is None
    assert second.named("drain_resumed")
    second.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(second.finish(), timeout=30) == 0


async def test_the_embedded_server_keeps_the_state_in_store_dir_for_the_next_cost_agent_run(
    tmp_path: Path, agents: list[LoggedProcess]
) -> None:
    ns = f"dur{uuid.uuid4().hex[:8]}"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[bus]\nnamespace = "{ns}"\n[metrics]\nport = 0\n[state]\nstore_dir = "{tmp_path / "js"}"\n'
    )
    agents.append(first := await start_agent(config))
    bus = await Bus.open(first.event("nats_embedded")["url"], ns)
    await bus.node("r-1", "reserved")
    port = first.event("metrics_serving")["port"]
    await eventually(lambda: saves(port, "cost_reporter") > 0, "the fleet saved", WAIT_S)
    before = await bus.cost_report()
    await bus.nc.close()
    # Its embedded nats-server goes with it (else it would still hold the store dir).
    await kill_9(first)

    agents.append(second := await start_agent(config))
    assert "cost_reporter" in {e["key"] for e in second.named("state_loaded")}
    bus = await Bus.open(second.event("nats_embedded")["url"], ns)
    after = await bus.cost_report()
    assert after["period_start"] == pytest.approx(before["period_start"])
    assert after["instance_hours"]["reserved"] > before["instance_hours"]["reserved"]
    await bus.nc.close()


def test_a_server_without_jetstream_stops_cost_agent_run_with_one_line_naming_state_store(
    tmp_path: Path,
) -> None:
    with NatsServer(jetstream=False) as server:
        config = tmp_path / "agent.toml"
        config.write_text(f'[bus]\nurl = "{server.url}"\n[metrics]\nport = 0\n[leader]\nenabled = false\n')
        done = run_cost_agent("run", "--config", str(config), timeout_s=60)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]  # after the log lines of start-up: the error, in one line
    assert last.startswith('cost-agent: [state] store = "jetstream": the NATS server has no JetStream')
    assert "Traceback" not in done.stderr
