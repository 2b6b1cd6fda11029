"""The cost reporter on a real nats-server: instance-hours from fleet events, priced per type and tier."""

from __future__ import annotations

import pytest
from harness import SEED, Peer, handled, rejected

from agent.service import Agent
from schemas import CostReport, CostReportRequest, ErrorReply, InstanceEvent, SpotPrice, WorkerMetrics

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
        await peer.send(
            peer.subjects.worker_metrics("w1"),
            WorkerMetrics(
                **peer.env("w1"),
                worker_id="w1",
                instance_id="o1",
                instance_type="a100_8x",
                pool="default",
                tier="ondemand",
                interval_s=5.0,
                requests_completed=100 + k,
                prompt_tokens=200_000,
                output_tokens=50_000,
            ),
        )
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
