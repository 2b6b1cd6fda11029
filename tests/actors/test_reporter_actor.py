"""The cost reporter on a real nats-server: instance-hours from fleet events, priced per type and tier."""

from __future__ import annotations

import pytest
from harness import SEED, Inbox, Peer, counter, handled, rejected

from agent.service import Agent
from schemas import (
    AllocationPlan,
    CostReport,
    CostReportRequest,
    ErrorReply,
    InstanceEvent,
    ReplanRequest,
    SpotPrice,
    Target,
    WorkerMetrics,
)

H100 = SEED.type("h100_8x")
A100 = SEED.type("a100_8x")


async def event(peer: Peer, iid: str, state: str, type_: str, tier: str, pool: str = "default") -> None:
    await peer.send(
        peer.subjects.fleet_instance(iid),
        InstanceEvent(
            **peer.env("actuator"),
            instance_id=iid,
            instance_type=type_,
            pool=pool,
            tier=tier,  # type: ignore[arg-type]
            state=state,  # type: ignore[arg-type]
        ),
    )


async def served(
    peer: Peer, worker: str, instance_id: str, type_: str, tier: str, requests: int, tokens: tuple[int, int]
) -> None:
    """A worker's 5 s report: ``requests`` completed, ``tokens`` (prompt, output) processed."""
    await peer.send(
        peer.subjects.worker_metrics(worker),
        WorkerMetrics(
            **peer.env(worker),
            worker_id=worker,
            instance_id=instance_id,
            instance_type=type_,
            pool="default",
            tier=tier,  # type: ignore[arg-type]
            interval_s=5.0,
            requests_completed=requests,
            prompt_tokens=tokens[0],
            output_tokens=tokens[1],
        ),
    )


async def ask(agent: Agent, peer: Peer) -> CostReport:
    reply = await agent.bus.request(
        peer.subjects.cost_report_request, CostReportRequest(**peer.env("operator")), CostReport
    )
    assert isinstance(reply, CostReport), reply
    return reply


async def test_an_hour_of_a_mixed_fleet_is_priced_at_each_types_own_tier_price(
    running: tuple[Agent, Peer],
) -> None:
    agent, peer = running
    await event(peer, "r1", "ready", "h100_8x", "reserved", pool="us-east-1a")
    await event(peer, "s1", "launched", "a100_8x", "spot")
    await event(peer, "s2", "launched", "a100_8x", "spot")
    await event(peer, "o1", "ready", "h100_8x", "ondemand")
    await handled(agent, "cost_reporter", "evt.fleet.instance.*", 4)
    peer.clock.advance(3600)

    report = await ask(agent, peer)
    expected = H100.reserved_hourly + 2 * A100.spot_hourly + H100.ondemand_hourly
    assert report.total_cost == pytest.approx(expected)
    assert report.hours == pytest.approx(1.0)
    assert report.instance_hours == pytest.approx({"reserved": 1.0, "spot": 2.0, "ondemand": 1.0})
    assert report.cost_by_type == pytest.approx(
        {"h100_8x": H100.reserved_hourly + H100.ondemand_hourly, "a100_8x": 2 * A100.spot_hourly}
    )
    assert report.spot_fraction == pytest.approx(0.5)
    all_ondemand = 2 * H100.ondemand_hourly + 2 * A100.ondemand_hourly
    assert report.ondemand_equivalent_cost == pytest.approx(all_ondemand)
    assert report.savings == pytest.approx(all_ondemand - expected)


async def test_a_terminated_node_stops_costing_and_a_draining_one_still_costs(
    running: tuple[Agent, Peer],
) -> None:
    agent, peer = running
    await event(peer, "o1", "ready", "h100_8x", "ondemand")
    await event(peer, "o2", "ready", "h100_8x", "ondemand")
    await handled(agent, "cost_reporter", "evt.fleet.instance.*", 2)
    peer.clock.advance(1800)
    await event(peer, "o1", "draining", "h100_8x", "ondemand")
    await event(peer, "o2", "terminated", "h100_8x", "ondemand")
    await handled(agent, "cost_reporter", "evt.fleet.instance.*", 4)
    peer.clock.advance(1800)

    report = await ask(agent, peer)
    assert report.instance_hours["ondemand"] == pytest.approx(0.5 + 0.5 + 0.5)
    assert report.total_cost == pytest.approx(1.5 * H100.ondemand_hourly)


async def test_spot_is_charged_at_the_latest_quote_for_the_pool_it_runs_in(
    running: tuple[Agent, Peer],
) -> None:
    agent, peer = running
    await event(peer, "s1", "ready", "h100_8x", "spot")
    await peer.send(
        peer.subjects.spot_price("default"),
        SpotPrice(**peer.env("feed"), instance_type="h100_8x", pool="default", price_hourly=12.5),
    )
    await handled(agent, "cost_reporter", "evt.spot.price.*", 1)
    peer.clock.advance(3600)
    assert (await ask(agent, peer)).total_cost == pytest.approx(12.5)


async def test_served_tokens_give_the_cost_per_million_tokens_and_per_request(
    running: tuple[Agent, Peer],
) -> None:
    agent, peer = running
    await event(peer, "o1", "ready", "a100_8x", "ondemand")
    for k in range(4):
        await served(peer, "w1", "o1", "a100_8x", "ondemand", 100 + k, (200_000, 50_000))
    await handled(agent, "cost_reporter", "evt.worker.metrics.*", 4)
    peer.clock.advance(3600)
    report = await ask(agent, peer)
    assert report.tokens == 1_000_000
    assert report.requests == 406
    assert report.cost_per_mtok == pytest.approx(A100.ondemand_hourly)
    assert report.cost_per_request == pytest.approx(A100.ondemand_hourly / 406)


async def test_a_report_is_published_every_interval(running: tuple[Agent, Peer]) -> None:
    from harness import Inbox

    agent, peer = running
    reports = await Inbox.open(peer.nc, peer.subjects.cost_report, CostReport)
    await event(peer, "o1", "ready", "a100_8x", "ondemand")
    await handled(agent, "cost_reporter", "evt.fleet.instance.*", 1)
    peer.clock.advance(agent.reporter.interval_s or 0)
    report = await reports.next()
    assert report.total_cost == pytest.approx(A100.ondemand_hourly * 60 / 3600)


async def test_a_bad_request_gets_an_error_reply_naming_the_problem(running: tuple[Agent, Peer]) -> None:
    agent, peer = running
    msg = await peer.nc.request(
        peer.subjects.cost_report_request, b'{"type": "cost.report_request.v1"}', timeout=5
    )
    reply = agent.bus.decoder(ErrorReply).decode(msg.data)
    assert "msg_id" in reply.error
    await rejected(agent, "cost_reporter", "req.cost.report", "malformed", 1)
    # Still answering.
    assert (await ask(agent, peer)).total_cost == 0


# --- the fleet against the plan ----------------------------------------------------------------------


async def publish_plan(
    peer: Peer, plan_id: str, counts: dict[tuple[str, str, str], int], sent_at: float | None = None
) -> AllocationPlan:
    """A plan as an agent publishes it; ``hourly_cost`` is left at 0 to show the reporter prices it itself."""
    env = peer.env("cost-agent")
    if sent_at is not None:
        env["sent_at"] = sent_at
    plan = AllocationPlan(
        **env,
        plan_id=plan_id,
        reason="manual",
        trigger_ids=[],
        targets=[
            Target(instance_type=name, pool=pool, tier=tier, count=count)  # type: ignore[arg-type]
            for (name, pool, tier), count in counts.items()
        ],
        hourly_cost=0.0,
        status="optimal",
        binding=[],
        detail="",
        demand_now_rps=0.0,
        demand_next_rps=0.0,
        capacity_now_rps=0.0,
        capacity_next_rps=0.0,
        solve_seconds=0.0,
    )
    await peer.send(peer.subjects.plan_allocation, plan)
    return plan


async def test_before_any_plan_the_report_prices_the_fleet_and_has_no_plan(
    running: tuple[Agent, Peer],
) -> None:
    agent, peer = running
    await event(peer, "o1", "ready", "h100_8x", "ondemand")
    await handled(agent, "cost_reporter", "evt.fleet.instance.*", 1)

    report = await ask(agent, peer)
    assert report.fleet_hourly_cost == pytest.approx(H100.ondemand_hourly)
    assert report.fleet_nodes == {"reserved": 0, "spot": 0, "ondemand": 1}
    assert (report.plan_id, report.plan_hourly_cost, report.plan_gap_hourly) == (None, None, None)
    assert report.plan_nodes == {"reserved": 0, "spot": 0, "ondemand": 0}


async def test_the_report_compares_the_fleet_paid_for_with_the_plan_at_the_same_prices(
    running: tuple[Agent, Peer],
) -> None:
    agent, peer = running
    # Running: a reserved node, two spot nodes, an on-demand node and one still draining (paid for).
    await event(peer, "r1", "ready", "h100_8x", "reserved", pool="us-east-1a")
    await event(peer, "s1", "ready", "a100_8x", "spot")
    await event(peer, "s2", "launched", "a100_8x", "spot")
    await event(peer, "o1", "ready", "h100_8x", "ondemand")
    await event(peer, "o2", "draining", "h100_8x", "ondemand")
    await peer.send(
        peer.subjects.spot_price("default"),
        SpotPrice(**peer.env("feed"), instance_type="a100_8x", pool="default", price_hourly=7.25),
    )
    # The plan: the reserved node, three spot nodes, no on-demand.
    plan = await publish_plan(
        peer,
        "plan-1",
        {
            ("h100_8x", "us-east-1a", "reserved"): 1,
            ("a100_8x", "default", "spot"): 3,
            ("h100_8x", "default", "ondemand"): 0,
        },
    )
    await handled(agent, "cost_reporter", "evt.fleet.instance.*", 5)
    await handled(agent, "cost_reporter", "evt.spot.price.*", 1)
    await handled(agent, "cost_reporter", "evt.plan.allocation", 1)

    report = await ask(agent, peer)
    fleet = H100.reserved_hourly + 2 * 7.25 + 2 * H100.ondemand_hourly
    planned = H100.reserved_hourly + 3 * 7.25
    assert report.plan_id == plan.plan_id
    assert report.fleet_hourly_cost == pytest.approx(fleet)
    assert report.plan_hourly_cost == pytest.approx(planned)
    assert report.plan_gap_hourly == pytest.approx(fleet - planned)
    assert report.plan_gap_hourly is not None
    assert report.plan_gap_hourly > 0  # the running fleet costs more than the plan
    assert report.fleet_nodes == {"reserved": 1, "spot": 2, "ondemand": 2}
    assert report.plan_nodes == {"reserved": 1, "spot": 3, "ondemand": 0}
    # The same figures on the agent's Prometheus endpoint.
    assert counter(agent, "costagent_fleet_hourly_cost_dollars") == pytest.approx(fleet)
    assert counter(agent, "costagent_plan_hourly_cost_dollars") == pytest.approx(planned)


async def test_the_agents_own_plan_is_priced_as_the_optimizer_priced_it(running: tuple[Agent, Peer]) -> None:
    agent, peer = running
    await event(peer, "r1", "ready", "h100_8x", "reserved")
    await peer.send(
        peer.subjects.spot_price("default"),
        SpotPrice(**peer.env("feed"), instance_type="h100_8x", pool="default", price_hourly=11.0),
    )
    for w in range(3):  # demand for the optimizer to plan for
        await served(peer, f"w{w}", "r1", "h100_8x", "reserved", 100, (150_000, 50_000))
    await handled(agent, "optimizer_tick", "evt.spot.price.*", 1)
    await handled(agent, "demand_profiler", "evt.worker.metrics.*", 3)
    plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
    await peer.send(peer.subjects.plan_tick, ReplanRequest(**peer.env("operator")))
    plan = await plans.next()
    await handled(agent, "cost_reporter", "evt.plan.allocation", 1)

    report = await ask(agent, peer)
    assert report.plan_id == plan.plan_id
    assert report.plan_hourly_cost == pytest.approx(plan.hourly_cost)
    by_tier = {tier: sum(t.count for t in plan.targets if t.tier == tier) for tier in report.plan_nodes}
    assert report.plan_nodes == by_tier
    assert by_tier["reserved"] == 1
    assert by_tier["spot"] + by_tier["ondemand"] >= 1
    assert report.plan_gap_hourly == pytest.approx(H100.reserved_hourly - plan.hourly_cost)


async def test_a_plan_older_than_the_one_held_is_ignored(running: tuple[Agent, Peer]) -> None:
    agent, peer = running
    newer = await publish_plan(peer, "plan-new", {("h100_8x", "default", "ondemand"): 2})
    await publish_plan(peer, "plan-old", {("h100_8x", "default", "ondemand"): 5}, sent_at=newer.sent_at - 30)
    await handled(agent, "cost_reporter", "evt.plan.allocation", 2)

    report = await ask(agent, peer)
    assert report.plan_id == "plan-new"
    assert report.plan_nodes == {"reserved": 0, "spot": 0, "ondemand": 2}
    assert report.plan_hourly_cost == pytest.approx(2 * H100.ondemand_hourly)


async def test_a_bad_plan_is_refused_and_counted_and_the_reporter_keeps_the_last_good_one(
    running: tuple[Agent, Peer],
) -> None:
    agent, peer = running
    await publish_plan(peer, "plan-good", {("a100_8x", "default", "spot"): 1})
    await handled(agent, "cost_reporter", "evt.plan.allocation", 1)

    await peer.send_raw(peer.subjects.plan_allocation, b'{"type": "plan.allocation.v1", "plan_id": 7}')
    await rejected(agent, "cost_reporter", "evt.plan.allocation", "malformed", 1)
    peer.clock.advance(1)  # newer than plan-good, so only its content can make the reporter refuse it
    await publish_plan(peer, "plan-b200", {("b200_8x", "default", "spot"): 4})
    await rejected(agent, "cost_reporter", "evt.plan.allocation", "invalid", 1)

    report = await ask(agent, peer)
    assert report.plan_id == "plan-good"
    assert report.plan_hourly_cost == pytest.approx(A100.spot_hourly)
    # Still listening: the next good plan replaces it.
    await publish_plan(peer, "plan-next", {("a100_8x", "default", "spot"): 2})
    await handled(agent, "cost_reporter", "evt.plan.allocation", 2)
    assert (await ask(agent, peer)).plan_id == "plan-next"
