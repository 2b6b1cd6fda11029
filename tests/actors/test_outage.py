"""A NATS outage of the agent's own link is not node loss, and its missed ticks make one plan.

Each test runs its own nats-server on a fixed port, stops it for longer than the workers' silence window
(15 s of the fake clock: 3 missed 5-second reports) and starts it again on the same port; the agent's and
the peer's connections reconnect by themselves.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from harness import Inbox, Peer, counter, eventually, handled, start_agent, stop_agent
from restartable_nats import RestartableServer
from test_spot_monitor import fleet, report

from agent.config import OptimizerSettings, Settings
from agent.service import Agent
from schemas import AllocationPlan, DrainOrder

RECONNECT_S = 30.0  # nats-py retries every 2 s by default: generous


@pytest.fixture
def server() -> Iterator[RestartableServer]:
    with tempfile.TemporaryDirectory(prefix="cost-agent-outage-") as workdir:
        s = RestartableServer(Path(workdir), jetstream=True)  # the agent keeps its state in JetStream
        s.start()
        try:
            yield s
        finally:
            s.stop()


async def connected(server: RestartableServer, settings: Settings | None = None) -> tuple[Agent, Peer]:
    """An agent and a peer on ``server``, retrying while the server process starts listening."""
    last: Exception | None = None
    for _ in range(50):
        try:
            return await start_agent(server.url, settings)
        except Exception as err:  # not listening yet
            last = err
    raise AssertionError(f"no nats-server at {server.url}: {last}")


@pytest.fixture
async def outage_agent(server: RestartableServer) -> AsyncIterator[tuple[Agent, Peer]]:
    agent, peer = await connected(server)
    try:
        yield agent, peer
    finally:
        await stop_agent(agent, peer)


async def advance(agent: Agent, peer: Peer, seconds: float, step: float = 5.0) -> None:
    """Move the fake clock in steps, each seen by the spot monitor's and the optimizer's timers."""
    for _ in range(round(seconds / step)):
        before = (agent.spot_monitor.ticks, agent.optimizer.ticks)
        peer.clock.advance(step)
        # Every step passes a 5 s optimizer wake; every other one a 10 s health check.
        await eventually(lambda b=before: agent.optimizer.ticks > b[1])  # type: ignore[misc]


async def go_down(server: RestartableServer, agent: Agent) -> None:
    server.stop()
    await eventually(lambda: not agent.bus.link.connected, RECONNECT_S)


async def come_back(server: RestartableServer, agent: Agent, peer: Peer) -> None:
    server.start()
    await eventually(lambda: agent.bus.link.connected and peer.nc.is_connected, RECONNECT_S)


def preemption_plans(agent: Agent) -> float:
    return counter(agent, "costagent_plans_published_total", reason="preemption")


async def node_reporting_then_outage(
    server: RestartableServer, agent: Agent, peer: Peer, workers: list[str], outage_s: float
) -> Inbox[DrainOrder]:
    """``workers`` of spot node-a report once; the server is then down for ``outage_s`` of the clock."""
    drains = await Inbox.open(peer.nc, peer.subjects.spot_drain_all, DrainOrder)
    await fleet(peer, "node-a", "spot")
    for worker in workers:
        await report(peer, worker, "node-a")
    await handled(agent, "spot_monitor", "evt.worker.metrics.*", len(workers))
    await go_down(server, agent)
    await advance(agent, peer, outage_s)  # every health check in between sees the silence
    await come_back(server, agent, peer)
    return drains


async def test_silence_while_the_agent_is_disconnected_declares_nobody_lost(
    server: RestartableServer, outage_agent: tuple[Agent, Peer]
) -> None:
    agent, peer = outage_agent
    drains = await node_reporting_then_outage(server, agent, peer, ["a-0", "a-1"], 60)  # 4 windows
    assert agent.spot_monitor.drains == 0
    assert counter(agent, "costagent_nats_disconnections_total") == 1  # the outage is counted instead

    # Both report again; then a-1 alone keeps reporting. Within a silence window of the reconnection
    # nobody is lost; past it, a-0 (really silent now) is.
    await report(peer, "a-0", "node-a")
    await report(peer, "a-1", "node-a")
    await handled(agent, "spot_monitor", "evt.worker.metrics.*", 4)
    for _ in range(3):
        await advance(agent, peer, 5)
        await report(peer, "a-1", "node-a")
    assert agent.spot_monitor.drains == 0
    assert preemption_plans(agent) == 0

    await advance(agent, peer, 10)
    order = await drains.next()
    assert (order.instance_id, order.worker_ids, order.reason) == ("node-a", ["a-0"], "lost")


async def test_the_grace_after_a_reconnection_is_one_silence_window_for_a_worker_that_never_returns(
    server: RestartableServer, outage_agent: tuple[Agent, Peer]
) -> None:
    agent, peer = outage_agent
    drains = await node_reporting_then_outage(server, agent, peer, ["a-0"], 30)
    await advance(agent, peer, 10)
    assert agent.spot_monitor.drains == 0  # 10 s of the 15 s window since the reconnection
    await advance(agent, peer, 10)
    order = await drains.next()
    assert (order.worker_ids, order.reason) == (["a-0"], "lost")


async def test_ticks_missed_while_disconnected_make_one_plan_after_the_reconnection(
    server: RestartableServer,
) -> None:
    settings = Settings(optimizer=OptimizerSettings(interval_seconds=30.0))
    agent, peer = await connected(server, settings)
    try:
        plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
        await advance(agent, peer, 30)
        first = await plans.next()
        assert first.reason == "tick"
        published = agent.optimizer.plans

        await go_down(server, agent)
        await advance(agent, peer, 120)  # four ticks' worth
        assert agent.optimizer.plans == published  # nothing planned into a dead link
        await come_back(server, agent, peer)
        await advance(agent, peer, 5)  # the first timer wake after the reconnection
        await eventually(lambda: agent.optimizer.plans == published + 1)
        after = await plans.next()
        assert after.reason == "tick"
        assert len(after.trigger_ids) == 1  # the held ticks collapsed to one trigger
        await advance(agent, peer, 20)  # up to the next tick's due time, not past it
        assert agent.optimizer.plans == published + 1
        assert plans.pending == 0
    finally:
        await stop_agent(agent, peer)
