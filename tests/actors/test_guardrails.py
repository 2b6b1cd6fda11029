"""Guardrails a team sets (issue 14), on a real nats-server: ``[limits]`` clamp what made-up demand can
plan, a burst of notices is held at ``max_notices_per_minute`` and replanned once, and a notice for a node
that is not spot is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest
from harness import Inbox, Peer, counter, eventually, handled, rejected, start_agent, stop_agent
from spot_messages import instance_event, notice_message

from agent.bus import settle
from agent.config import LimitsSettings, Settings
from agent.service import Agent
from schemas import AllocationPlan, DrainOrder, ReplanRequest, WorkerMetrics


async def worker_load(peer: Peer, worker: str, rps: float, tier: str = "ondemand") -> None:
    """A worker's report of ``rps`` requests a second over 5 s, 1,500 prompt and 500 output tokens each."""
    requests = int(rps * 5)
    await peer.send(
        peer.subjects.worker_metrics(worker),
        WorkerMetrics(
            **peer.env(worker),
            worker_id=worker,
            instance_id=f"node-{worker}",
            instance_type="h100_8x",
            pool="default",
            tier=tier,  # type: ignore[arg-type]
            interval_s=5.0,
            requests_completed=requests,
            prompt_tokens=requests * 1500,
            output_tokens=requests * 500,
        ),
    )


async def plan_now(peer: Peer, plans: Inbox[AllocationPlan]) -> AllocationPlan:
    await peer.send(peer.subjects.plan_tick, ReplanRequest(**peer.env("operator"), note="test"))
    return await plans.next()


async def fake_workers_plan(agent: Agent, peer: Peer) -> tuple[AllocationPlan, AllocationPlan]:
    """The probe of issue 14: one real worker's modest load is planned for, then three made-up workers
    each report 100 req/s and the next plan follows them."""
    plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
    await worker_load(peer, "real", 2.0)
    await handled(agent, "demand_profiler", "evt.worker.metrics.*", 1)
    honest = await plan_now(peer, plans)
    for k in range(3):
        await worker_load(peer, f"fake-{k}", 100.0, tier="spot")
    await handled(agent, "demand_profiler", "evt.worker.metrics.*", 4)
    return honest, await plan_now(peer, plans)


@pytest.fixture
async def limited(nats_url: str) -> AsyncIterator[tuple[Agent, Peer]]:
    settings = Settings(limits=LimitsSettings(max_total_instances=6))
    agent, peer = await start_agent(nats_url, settings)
    try:
        yield agent, peer
    finally:
        await stop_agent(agent, peer)


async def test_made_up_workers_take_an_unlimited_plan_many_times_over(running: tuple[Agent, Peer]) -> None:
    agent, peer = running
    honest, flooded = await fake_workers_plan(agent, peer)
    assert flooded.hourly_cost > 10 * honest.hourly_cost  # no cap: the failure the limits are for
    assert not [b for b in flooded.binding if b.startswith("limit:")]
    assert counter(agent, "costagent_plan_limited_total", limit="total") == 0


async def test_limits_clamp_the_plan_made_up_workers_ask_for_and_say_so(limited: tuple[Agent, Peer]) -> None:
    agent, peer = limited
    honest, flooded = await fake_workers_plan(agent, peer)
    assert "limit:" not in honest.detail  # within the limits, nothing said
    assert sum(t.count for t in flooded.targets) == 6
    # The SLO cannot be met within the limits: the best fleet within them, and the plan says why.
    assert flooded.status == "fallback"
    assert "limit:total" in flooded.binding
    assert "clamped by [limits] (limit:total)" in flooded.detail
    assert counter(agent, "costagent_plan_limited_total", limit="total") == 1


# -- notices ------------------------------------------------------------------------------------------


async def known(peer: Peer, instance: str, tier: str) -> None:
    """The actuator reports the instance ready: the registry knows it and its tier."""
    await peer.send(peer.subjects.fleet_instance(instance), instance_event(peer, instance, tier))


@pytest.mark.parametrize("tier", ["reserved", "ondemand"])
async def test_a_notice_for_a_healthy_node_that_is_not_spot_is_refused_and_never_drained(
    running: tuple[Agent, Peer], tier: str
) -> None:
    agent, peer = running
    drains = await Inbox.open(peer.nc, peer.subjects.spot_drain_all, DrainOrder)
    await worker_load(peer, "w0", 2.0, tier=tier)  # node-w0, known from its worker's reports
    await known(peer, "node-b", tier)  # node-b, known from the fleet's events
    await handled(agent, "spot_monitor", "evt.worker.metrics.*", 1)
    await handled(agent, "spot_monitor", "evt.fleet.instance.*", 1)

    await peer.send(peer.subjects.spot_notice("node-w0"), notice_message(peer, "node-w0"))
    await peer.send(peer.subjects.spot_notice("node-b"), notice_message(peer, "node-b"))
    await rejected(agent, "spot_monitor", "evt.spot.notice.*", "invalid", 2)
    peer.clock.advance(agent.spot_monitor.settings.notice_batch_seconds)
    await eventually(lambda: agent.spot_monitor.ticks >= 1)

    assert agent.spot_monitor.drains == 0
    assert drains.pending == 0
    assert agent.spot_monitor.registry.life("node-w0") == "active"
    assert agent.spot_monitor.registry.life("node-b") == "active"
    assert agent.optimizer.plans == 0


async def test_a_forged_worker_report_cannot_relabel_a_reserved_node_as_spot_to_drain_it(
    running: tuple[Agent, Peer],
) -> None:
    agent, peer = running
    await known(peer, "node-w0", "reserved")  # the actuator's word
    await handled(agent, "spot_monitor", "evt.fleet.instance.*", 1)
    await worker_load(peer, "w0", 2.0, tier="spot")  # a forged report: node-w0 "is spot"
    await handled(agent, "spot_monitor", "evt.worker.metrics.*", 1)
    await peer.send(peer.subjects.spot_notice("node-w0"), notice_message(peer, "node-w0"))
    await rejected(agent, "spot_monitor", "evt.spot.notice.*", "invalid", 1)
    assert agent.spot_monitor.drains == 0
    assert agent.spot_monitor.registry.life("node-w0") == "active"


BURST = 200


async def burst_of_notices(agent: Agent, peer: Peer, count: int = BURST) -> None:
    """``count`` spot nodes the agent knows, then a notice for each, published back to back (also
    ``bench/guardrails.py``)."""
    for i in range(count):
        event = instance_event(peer, f"spot-{i}", "spot")
        await peer.nc.publish(peer.subjects.fleet_instance(f"spot-{i}"), msgspec.json.encode(event))
    await settle(peer.nc)
    await handled(agent, "spot_monitor", "evt.fleet.instance.*", count)
    await handled(agent, "optimizer_tick", "evt.fleet.instance.*", count)
    for i in range(count):
        sent = notice_message(peer, f"spot-{i}")
        await peer.nc.publish(peer.subjects.spot_notice(f"spot-{i}"), msgspec.json.encode(sent))
    await settle(peer.nc)
    await handled(agent, "spot_monitor", "evt.spot.notice.*", count)


async def test_a_burst_of_notices_drains_at_the_rate_holds_the_rest_and_makes_one_plan(
    running: tuple[Agent, Peer],
) -> None:
    agent, peer = running
    monitor = agent.spot_monitor
    rate = monitor.settings.max_notices_per_minute
    assert rate < BURST  # the default lets a zone's wave through at once, not a flood
    plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
    await burst_of_notices(agent, peer)

    # A minute's worth at once (a zone-wide reclaim is real); the rest held, counted, not drained yet.
    assert monitor.drains == rate
    assert counter(agent, "costagent_spot_notices_held_total") == BURST - rate
    assert monitor.gate.held == BURST - rate
    assert agent.optimizer.plans == 0

    # One plan for the whole burst, without every node that is going.
    peer.clock.advance(monitor.settings.notice_batch_seconds)
    plan = await plans.next()
    assert plan.reason == "preemption"
    assert agent.optimizer.plans == 1
    draining = [i for i in range(BURST) if agent.optimizer.fleet.state(f"spot-{i}") == "draining"]
    assert len(draining) == monitor.drains

    # The held notices are released at the rate, the earliest deadline first, none lost.
    peer.clock.advance(60.0)
    await eventually(lambda: monitor.drains == BURST, 20)  # 80 drain orders: generous on a loaded machine
    assert monitor.gate.held == 0
    assert counter(agent, "costagent_spot_notices_dropped_total") == 0
