"""Every number on the wire has a physical range: a message outside it is refused, counted and (for a
request) answered like any malformed message, and values at the edges of the ranges break nothing.

Each failure of issue 14 is reproduced here against a running agent on a real nats-server: before the
ranges, a 400-digit count raised OverflowError in an actor, ``interval_s = 5e-324`` made the demand NaN,
a spot price of 1e308 crashed the optimizer on every plan, counts of 2^64 − 1 made a plan for 633 trillion
nodes, and JSON nested 1,000 deep was neither counted nor answered.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from harness import Inbox, Peer, counter, eventually, handled, rejected

from agent.bus import MAX_MESSAGE_BYTES
from agent.core.tick_program import MAX_POOL_NODES
from agent.service import Agent
from schemas import AllocationPlan, CostReport, ErrorReply, ReplanRequest
from schemas.envelope import (
    MAX_KV_BLOCKS,
    MAX_NODES,
    MAX_PRICE_HOURLY,
    MAX_REQUESTS,
    MAX_TIMESTAMP,
    MAX_TOKENS,
)

HUGE = int("9" * 400)


def metrics(peer: Peer, worker: str = "w0", **fields: Any) -> dict[str, Any]:
    """A worker's report as JSON would carry it (so that values no Struct would hold can be sent)."""
    return {
        "type": "worker.metrics.v1",
        **peer.env(worker),
        "worker_id": worker,
        "instance_id": f"i-{worker}",
        "instance_type": "h100_8x",
        "pool": "default",
        "tier": "ondemand",
        "interval_s": 5.0,
        "requests_completed": 50,
        "prompt_tokens": 50 * 1500,
        "output_tokens": 50 * 500,
        **fields,
    }


def price(peer: Peer, **fields: Any) -> dict[str, Any]:
    return {
        "type": "spot.price.v1",
        **peer.env("feed"),
        "instance_type": "h100_8x",
        "pool": "default",
        "price_hourly": 9.0,
        **fields,
    }


async def send_json(peer: Peer, subject: str, document: dict[str, Any]) -> None:
    await peer.send_raw(subject, json.dumps(document).encode())


def restarts(agent: Agent) -> float:
    return sum(
        sample.value
        for family in agent.bus.metrics.registry.collect()
        if family.name == "costagent_actor_restarts"
        for sample in family.samples
        if sample.name == "costagent_actor_restarts_total"
    )


async def a_plan_is_made(agent: Agent, peer: Peer) -> AllocationPlan:
    """The optimizer still answers a request with a plan whose every figure is within its range."""
    plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
    try:
        await peer.send(peer.subjects.plan_tick, ReplanRequest(**peer.env("operator")))
        plan = await plans.next(timeout_s=10)  # decoded with the schema: every range checked
    finally:
        await plans.close()
    assert restarts(agent) == 0
    return plan


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("requests_completed", HUGE),
        ("prompt_tokens", HUGE),
        ("requests_completed", 2**64 - 1),
        ("output_tokens", 2**64 - 1),
        ("kv_blocks_total", 2**64 - 1),
        ("interval_s", 5e-324),
        ("interval_s", 1e308),
        ("sent_at", 0.0),
        ("sent_at", 1e300),
    ],
    ids=lambda v: "400 digits" if v == HUGE else str(v),
)
async def test_a_worker_report_out_of_its_physical_range_is_refused_and_counted(
    running: tuple[Agent, Peer], field: str, value: float
) -> None:
    agent, peer = running
    await send_json(peer, peer.subjects.worker_metrics("w0"), metrics(peer, **{field: value}))

    await rejected(agent, "demand_profiler", "evt.worker.metrics.*", "malformed", 1)
    await rejected(agent, "cost_reporter", "evt.worker.metrics.*", "malformed", 1)
    await rejected(agent, "spot_monitor", "evt.worker.metrics.*", "malformed", 1)
    plan = await a_plan_is_made(agent, peer)
    assert plan.demand_now_rps == 0.0  # nothing of it was taken in


@pytest.mark.parametrize("value", [1e308, 10_000.01, 0.0, -1.0])
async def test_a_spot_price_out_of_range_is_refused_and_plans_go_on(
    running: tuple[Agent, Peer], value: float
) -> None:
    agent, peer = running
    await send_json(peer, peer.subjects.spot_price("default"), price(peer, price_hourly=value))

    await rejected(agent, "optimizer_tick", "evt.spot.price.*", "malformed", 1)
    await rejected(agent, "cost_reporter", "evt.spot.price.*", "malformed", 1)
    await a_plan_is_made(agent, peer)


async def test_spot_availability_above_a_hundred_thousand_nodes_is_refused(
    running: tuple[Agent, Peer],
) -> None:
    agent, peer = running
    await send_json(peer, peer.subjects.spot_price("default"), price(peer, available=2**64 - 1))

    await rejected(agent, "optimizer_tick", "evt.spot.price.*", "malformed", 1)


async def test_a_request_nested_a_thousand_deep_is_answered_with_our_reason_and_counted(
    running: tuple[Agent, Peer],
) -> None:
    agent, peer = running
    request = {"type": "cost.report_request.v1", **peer.env("cli")}
    deep = json.dumps(request)[:-1] + ', "extra": ' + "[" * 1000 + "]" * 1000 + "}"

    reply = await peer.nc.request(peer.subjects.cost_report_request, deep.encode(), timeout=5)

    error = msgspec.json.decode(reply.data, type=ErrorReply)
    assert error.error == "cost.report_request.v1: nested too deep"
    await rejected(agent, "cost_reporter", "req.cost.report", "malformed", 1)
    # The reporter still answers a sound request.
    sound = await peer.nc.request(peer.subjects.cost_report_request, json.dumps(request).encode(), timeout=5)
    msgspec.json.decode(sound.data, type=CostReport)
    assert restarts(agent) == 0


async def test_an_event_nested_a_thousand_deep_is_counted_and_nothing_else_happens(
    running: tuple[Agent, Peer],
) -> None:
    agent, peer = running
    document = metrics(peer)
    deep = json.dumps(document)[:-1] + ', "extra": ' + '{"a": ' * 1000 + "1" + "}" * 1000 + "}"

    await peer.send_raw(peer.subjects.worker_metrics("w0"), deep.encode())

    await rejected(agent, "demand_profiler", "evt.worker.metrics.*", "malformed", 1)
    await a_plan_is_made(agent, peer)


async def test_a_message_over_the_size_limit_is_refused_unread_and_answered(
    running: tuple[Agent, Peer],
) -> None:
    agent, peer = running
    request = {"type": "cost.report_request.v1", **peer.env("cli"), "padding": "x" * MAX_MESSAGE_BYTES}

    reply = await peer.nc.request(peer.subjects.cost_report_request, json.dumps(request).encode(), timeout=5)

    error = msgspec.json.decode(reply.data, type=ErrorReply).error
    assert error.startswith("cost.report_request.v1: too large: ")
    assert error.endswith(f" bytes, at most {MAX_MESSAGE_BYTES}")
    await rejected(agent, "cost_reporter", "req.cost.report", "malformed", 1)


async def test_an_error_reply_quoting_a_huge_bad_value_stays_short(running: tuple[Agent, Peer]) -> None:
    _, peer = running
    request = {"type": "x" * 100_000, **peer.env("cli")}

    reply = await peer.nc.request(peer.subjects.cost_report_request, json.dumps(request).encode(), timeout=5)

    assert len(msgspec.json.decode(reply.data, type=ErrorReply).error) <= 1024


async def test_reports_at_the_edges_of_every_range_are_taken_in_and_plans_stay_in_range(
    running: tuple[Agent, Peer],
) -> None:
    agent, peer = running
    edges = [
        metrics(
            peer,
            "w-max",
            interval_s=0.001,
            requests_completed=MAX_REQUESTS,
            prompt_tokens=MAX_TOKENS,
            output_tokens=MAX_TOKENS,
            in_flight=MAX_REQUESTS,
            queued=MAX_REQUESTS,
            kv_blocks_used=MAX_KV_BLOCKS,
            kv_blocks_total=MAX_KV_BLOCKS,
        ),
        metrics(peer, "w-tokens", requests_completed=1, prompt_tokens=MAX_TOKENS, output_tokens=0),
        metrics(peer, "w-long", interval_s=86_400.0, requests_completed=0, prompt_tokens=0, output_tokens=0),
        metrics(peer, "w-late", sent_at=MAX_TIMESTAMP),
    ]
    for document in edges:
        await send_json(peer, peer.subjects.worker_metrics(document["worker_id"]), document)
    await send_json(
        peer,
        peer.subjects.spot_price("default"),
        price(peer, price_hourly=MAX_PRICE_HOURLY, available=MAX_NODES, reclaim_per_hour=1.0),
    )
    await send_json(
        peer, peer.subjects.spot_price("default"), price(peer, instance_type="a100_8x", price_hourly=5e-324)
    )
    await handled(agent, "demand_profiler", "evt.worker.metrics.*", len(edges))
    await handled(agent, "optimizer_tick", "evt.spot.price.*", 2)

    plan = await a_plan_is_made(agent, peer)

    assert all(target.count <= MAX_NODES for target in plan.targets)
    reply = await peer.nc.request(
        peer.subjects.cost_report_request,
        json.dumps({"type": "cost.report_request.v1", **peer.env("cli")}).encode(),
        timeout=5,
    )
    msgspec.json.decode(reply.data, type=CostReport)  # every figure within its range
    await eventually(lambda: counter(agent, "costagent_messages_rejected_total") == 0)
    assert restarts(agent) == 0


def test_the_optimizer_holds_a_pool_to_the_count_a_plan_can_carry() -> None:
    assert MAX_POOL_NODES == MAX_NODES


@pytest.mark.parametrize("sent_at", [0.0, 1e300, 946_684_799.0, 7_258_118_400.5])
async def test_a_request_sent_outside_the_years_2000_to_2200_is_answered_naming_the_field(
    running: tuple[Agent, Peer], sent_at: float
) -> None:
    agent, peer = running
    request = {"type": "cost.report_request.v1", **peer.env("cli"), "sent_at": sent_at}

    reply = await peer.nc.request(peer.subjects.cost_report_request, json.dumps(request).encode(), timeout=5)

    assert msgspec.json.decode(reply.data, type=ErrorReply).error.startswith(
        "cost.report_request.v1: sent_at: "
    )
    await rejected(agent, "cost_reporter", "req.cost.report", "malformed", 1)
