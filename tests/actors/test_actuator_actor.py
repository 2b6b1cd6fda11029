"""The actuator actor in the agent (``[actuator] mode``), on a real nats-server and a fake clock: plans become
processes (the local driver, here with ``sleep`` standing in for a worker), the spot market's room comes
from the latest quote, an older plan is ignored, and shadow mode changes nothing while the cost report
compares the running fleet with the plan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from harness import SEED, Inbox, Peer, eventually, start_agent, stop_agent

from agent.actuators.processes import alive
from agent.actuators.settings import ActuatorSettings, LocalSettings
from agent.bus import settle
from agent.config import Settings
from agent.service import Agent
from schemas import AllocationPlan, CostReport, CostReportRequest, InstanceEvent, SpotPrice, Target

NAME = "h100_8x"
POOL = SEED.types[NAME].pools[0]


def plan(peer: Peer, spot: int, *, plan_id: str, at: float | None = None) -> AllocationPlan:
    return AllocationPlan(
        **peer.env("test-optimizer") if at is None else {**peer.env("test-optimizer"), "sent_at": at},
        plan_id=plan_id,
        reason="manual",
        trigger_ids=[],
        targets=[Target(instance_type=NAME, pool=POOL, tier="spot", count=spot)],
        hourly_cost=spot * SEED.types[NAME].spot_hourly,
        status="optimal",
        binding=[],
        detail="",
        demand_now_rps=0.0,
        demand_next_rps=0.0,
        capacity_now_rps=0.0,
        capacity_next_rps=0.0,
        solve_seconds=0.0,
    )


@pytest.fixture
async def local_agent(nats_url: str, tmp_path: Path) -> AsyncIterator[tuple[Agent, Peer]]:
    actuator = ActuatorSettings(
        mode="local",
        boot_seconds=60.0,
        poll_seconds=1.0,
        local=LocalSettings(
            command=["sleep", "600"], state_dir=str(tmp_path / "state"), ready_when_listening=False
        ),
    )
    agent, peer = await start_agent(nats_url, Settings(actuator=actuator))
    try:
        yield agent, peer
    finally:
        assert agent.actuator is not None
        driver = agent.actuator.driver
        await stop_agent(agent, peer)
        await driver.stop_all()  # type: ignore[attr-defined]


async def test_plans_launch_a_process_per_node_and_release_the_newest(
    local_agent: tuple[Agent, Peer],
) -> None:
    agent, peer = local_agent
    actor = agent.actuator
    assert actor is not None
    events = await Inbox.open(peer.nc, peer.subjects.fleet_instance_all, InstanceEvent)
    await peer.send(peer.subjects.plan_allocation, plan(peer, 2, plan_id="p1"))
    launched = [await events.next(), await events.next()]
    assert [e.state for e in launched] == ["launched", "launched"]
    assert {(e.instance_type, e.pool, e.tier) for e in launched} == {(NAME, POOL, "spot")}
    nodes = actor.driver.nodes  # type: ignore[attr-defined]
    assert len(nodes) == 2
    assert all(alive(n.process) for n in nodes.values())  # a process per node

    peer.clock.advance(61.0)  # past the boot: the next poll reports them ready
    assert {(await events.next()).state, (await events.next()).state} == {"ready"}

    await peer.send(peer.subjects.plan_allocation, plan(peer, 1, plan_id="p2"))
    newest = max(launched, key=lambda e: int(e.instance_id.rsplit("-", 1)[1])).instance_id
    draining = await events.next()
    assert (draining.instance_id, draining.state) == (newest, "draining")
    process = nodes[newest].process
    await eventually(lambda: not alive(process))  # SIGTERM ends `sleep` ...
    peer.clock.advance(1.0)  # ... and the next poll sees it gone
    gone = await events.next()
    assert (gone.instance_id, gone.state) == (newest, "terminated")
    assert actor.plans_applied == 2


async def test_the_latest_quote_bounds_spot_launches_and_an_older_plan_is_ignored(
    local_agent: tuple[Agent, Peer],
) -> None:
    agent, peer = local_agent
    actor = agent.actuator
    assert actor is not None
    quote = SpotPrice(**peer.env("price-feed"), instance_type=NAME, pool=POOL, price_hourly=9.0, available=1)
    await peer.send(peer.subjects.spot_price(POOL), quote)
    await eventually(lambda: bool(actor._quotes))  # the quote reached the actor
    await peer.send(peer.subjects.plan_allocation, plan(peer, 3, plan_id="p1"))
    await eventually(lambda: actor.plans_applied == 1)
    assert len(actor.driver.nodes) == 1  # type: ignore[attr-defined]
    assert actor.launches_refused == 2

    late = plan(peer, 0, plan_id="p0", at=peer.clock.now() - 10.0)  # made before p1, arriving after it
    await peer.send(peer.subjects.plan_allocation, late)
    await eventually(lambda: actor.plans_ignored == 1)
    assert len(actor.driver.nodes) == 1  # type: ignore[attr-defined]


async def test_shadow_mode_changes_nothing_and_the_cost_report_shows_the_gap(nats_url: str) -> None:
    agent, peer = await start_agent(nats_url, Settings(actuator=ActuatorSettings(mode="shadow")))
    try:
        actor = agent.actuator
        assert actor is not None
        for i in range(3):  # the fleet the team's own autoscaler runs
            event = InstanceEvent(
                **peer.env("their-autoscaler"),
                instance_id=f"i-{i}",
                instance_type=NAME,
                pool=POOL,
                tier="spot",
                state="ready",
            )
            await peer.send(peer.subjects.fleet_instance(f"i-{i}"), event)
        ours = await Inbox.open(peer.nc, peer.subjects.fleet_instance_all, InstanceEvent)
        await eventually(lambda: len(actor.driver.fleet(peer.clock.now())) == 3)
        await peer.send(peer.subjects.plan_allocation, plan(peer, 1, plan_id="p1"))
        await eventually(lambda: actor.plans_applied == 1)
        assert actor.driver.would["release"] == 2  # type: ignore[attr-defined]
        await settle(peer.nc)
        assert ours.pending == 0  # it published no change of its own

        reply = await peer.nc.request(
            peer.subjects.cost_report_request, msgspec.json.encode(CostReportRequest(**peer.env())), timeout=5
        )
        report = msgspec.json.decode(reply.data, type=CostReport)
        assert report.plan_id == "p1"
        assert report.plan_gap_hourly == pytest.approx(2 * SEED.types[NAME].spot_hourly)
    finally:
        await stop_agent(agent, peer)
