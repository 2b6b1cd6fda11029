"""The spot monitor on a real nats-server: notices become drain orders and an immediate plan; silent
workers are declared lost; repeats and strangers change nothing."""

from __future__ import annotations

import pytest
from harness import START, Inbox, Peer, counter, eventually, handled, rejected
from made_up_workers import flood_made_up_workers
from spot_messages import instance_event, notice_message

from agent.service import Agent
from schemas import AllocationPlan, DrainOrder, PreemptionNotice, WorkerMetrics


async def report(peer: Peer, worker: str, instance: str, tier: str = "spot") -> None:
    await peer.send(
        peer.subjects.worker_metrics(worker),
        WorkerMetrics(
            **peer.env(worker),
            worker_id=worker,
            instance_id=instance,
            instance_type="h100_8x",
            pool="default",
            tier=tier,  # type: ignore[arg-type]
            interval_s=5.0,
            requests_completed=20,
            prompt_tokens=20_000,
            output_tokens=5_000,
        ),
    )


async def notice(peer: Peer, instance: str, kind: str = "terminate", in_s: float = 120.0) -> PreemptionNotice:
    message = notice_message(peer, instance, kind, in_s)
    await peer.send(peer.subjects.spot_notice(instance), message)
    return message


async def fleet(peer: Peer, instance: str, tier: str, state: str = "ready") -> None:
    await peer.send(peer.subjects.fleet_instance(instance), instance_event(peer, instance, tier, state))


async def test_a_notice_orders_a_drain_of_every_worker_at_once_and_a_plan_within_the_batch_window(
    running: tuple[Agent, Peer],
) -> None:
    agent, peer = running
    drains = await Inbox.open(peer.nc, peer.subjects.spot_drain_all, DrainOrder)
    plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
    await fleet(peer, "node-a", "spot")
    await fleet(peer, "node-b", "ondemand")
    await report(peer, "a-0", "node-a")
    await report(peer, "a-1", "node-a")
    await report(peer, "b-0", "node-b", tier="ondemand")
    await handled(agent, "spot_monitor", "evt.worker.metrics.*", 3)
    await handled(agent, "optimizer_tick", "evt.fleet.instance.*", 2)

    sent = await notice(peer, "node-a", in_s=120)
    order = await drains.next()
    assert order.instance_id == "node-a"
    assert sorted(order.worker_ids) == ["a-0", "a-1"]
    assert order.deadline == START + 120
    assert order.reason == "notice"
    assert order.correlation_id == sent.msg_id

    # The optimizer plans on the notice, without the node that is going, once the batch window (every
    # node going within it in one plan) has passed.
    await handled(agent, "spot_monitor", "evt.spot.notice.*", 1)
    assert plans.pending == 0
    peer.clock.advance(agent.spot_monitor.settings.notice_batch_seconds)
    plan = await plans.next()
    assert plan.reason == "preemption"
    assert plan.trigger_ids == [sent.msg_id]
    assert agent.optimizer.fleet.state("node-a") == "draining"
    assert "node-a" not in {w.instance_id for w in agent.spot_monitor.registry.routable()}


async def test_a_repeated_notice_changes_nothing(running: tuple[Agent, Peer]) -> None:
    agent, peer = running
    drains = await Inbox.open(peer.nc, peer.subjects.spot_drain_all, DrainOrder)
    await report(peer, "a-0", "node-a")
    await report(peer, "c-0", "node-c")
    await handled(agent, "spot_monitor", "evt.worker.metrics.*", 2)
    first = await notice(peer, "node-a")
    await notice(peer, "node-a")
    await notice(peer, "node-c")
    assert (await drains.next()).correlation_id == first.msg_id
    assert (await drains.next()).instance_id == "node-c"  # the repeat produced nothing in between
    assert agent.spot_monitor.drains == 2


async def test_a_notice_for_an_unknown_instance_is_refused_and_counted(running: tuple[Agent, Peer]) -> None:
    agent, peer = running
    await notice(peer, "nobody-knows-me")
    await peer.send_raw(peer.subjects.spot_notice("x"), b'{"type": "spot.notice.v1", "deadline": "soon"}')
    await rejected(agent, "spot_monitor", "evt.spot.notice.*", "invalid", 1)
    await rejected(agent, "spot_monitor", "evt.spot.notice.*", "malformed", 1)
    assert agent.spot_monitor.drains == 0


async def test_a_rebalance_recommendation_drains_nothing(running: tuple[Agent, Peer]) -> None:
    agent, peer = running
    await report(peer, "a-0", "node-a")
    await handled(agent, "spot_monitor", "evt.worker.metrics.*", 1)
    await notice(peer, "node-a", kind="rebalance")
    await handled(agent, "spot_monitor", "evt.spot.notice.*", 1)
    assert agent.spot_monitor.drains == 0
    assert agent.spot_monitor.registry.life("node-a") == "active"


async def test_a_worker_that_stops_reporting_is_declared_lost_and_replaced(
    running: tuple[Agent, Peer],
) -> None:
    agent, peer = running
    drains = await Inbox.open(peer.nc, peer.subjects.spot_drain_all, DrainOrder)
    plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
    await fleet(peer, "node-a", "spot")
    await report(peer, "a-0", "node-a")
    await report(peer, "b-0", "node-b", tier="ondemand")
    await handled(agent, "spot_monitor", "evt.worker.metrics.*", 2)
    await handled(agent, "optimizer_tick", "evt.fleet.instance.*", 1)

    # b-0 keeps reporting; a-0 falls silent for more than 3 of its 5-second intervals (checks every 10 s).
    reports = 2
    for _ in range(3):
        peer.clock.advance(5)
        await report(peer, "b-0", "node-b", tier="ondemand")
        reports += 1
        await handled(agent, "spot_monitor", "evt.worker.metrics.*", reports)
        peer.clock.advance(5)

    order = await drains.next()
    assert (order.instance_id, order.worker_ids, order.reason) == ("node-a", ["a-0"], "lost")
    plan = await plans.next()
    assert plan.reason == "preemption"
    assert agent.optimizer.fleet.state("node-a") == "draining"
    assert agent.spot_monitor.drains == 1  # declared once, not at every later check


@pytest.mark.parametrize("kind", ["terminate", "stop"])
async def test_after_its_deadline_a_drained_instance_is_forgotten(
    running: tuple[Agent, Peer], kind: str
) -> None:
    agent, peer = running
    await report(peer, "a-0", "node-a")
    await handled(agent, "spot_monitor", "evt.worker.metrics.*", 1)
    await notice(peer, "node-a", kind=kind, in_s=30)
    await handled(agent, "spot_monitor", "evt.spot.notice.*", 1)
    assert agent.spot_monitor.registry.life("node-a") == "draining"
    peer.clock.advance(30)
    await eventually(lambda: agent.spot_monitor.registry.life("node-a") == "gone")
    assert agent.spot_monitor.registry.workers_of("node-a") == []


async def test_twenty_thousand_made_up_worker_ids_keep_the_registry_bounded_and_make_one_plan(
    running: tuple[Agent, Peer],
) -> None:
    agent, peer = running
    registry = agent.spot_monitor.registry
    flood = 20_000
    # A generous bound for 20,000 messages (about 1 s here); the quadratic check took minutes.
    await flood_made_up_workers(agent, peer, flood, timeout_s=120)
    assert len(registry) == registry.max_workers
    assert registry.instances() == registry.max_instances
    assert counter(agent, "costagent_registry_evicted_total") == flood - registry.max_instances

    # Every held worker falls silent at one health check: a drain order each, and one plan for all.
    plans = agent.optimizer.plans
    peer.clock.advance(20)
    await eventually(lambda: agent.spot_monitor.drains == registry.max_workers, timeout_s=120)
    await eventually(lambda: agent.optimizer.plans == plans + 1)
    assert counter(agent, "costagent_plans_published_total", reason="preemption") == 1
