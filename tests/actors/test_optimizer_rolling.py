"""The optimizer on a real nats-server plans a frontend's arrivals by the backtest's rolling rule
(``agent.core.rolling_demand``): the busiest minute of the last hour, held at the profile's expectation
through an outage, times the headroom; the minutes it learnt from survive a restart."""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import nats
import pytest
from aiohttp import web
from harness import START, Inbox, Peer, fresh_namespace
from test_optimizer_actor import Frontend, arrive, completions, next_manual, replan

from agent.actors.optimizer import OptimizerState
from agent.actors.spot_quotes import SavedQuote
from agent.config import BusSettings, DynamoSettings, Settings, resolve_catalog
from agent.core.demand import Demand
from agent.core.fleet_state import FleetSnapshot
from agent.core.rolling_demand import expected_over
from agent.runtime.clock import FakeClock
from agent.runtime.state_store import JetStreamStore, bucket_name, encode_state, pack
from agent.service import Agent, build_agent
from schemas import AllocationPlan

WEEK_S = 7 * 86400.0
NATS_MAX_PAYLOAD = 1024 * 1024


@asynccontextmanager
async def serving(frontend: Frontend) -> AsyncIterator[str]:
    """The frontend's ``/metrics`` over real HTTP; yields its URL."""
    app = web.Application()
    app.router.add_get("/metrics", frontend.metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def started(nats_url: str, ns: str, clock: FakeClock, frontend_url: str | None) -> tuple[Agent, Peer]:
    """An agent on namespace ``ns`` reading ``frontend_url``'s arrivals (a second one on the same namespace
    is a restart of the first: it loads what the first saved in JetStream)."""
    urls = [] if frontend_url is None else [frontend_url]
    settings = Settings(bus=BusSettings(namespace=ns), dynamo=DynamoSettings(frontend_urls=urls))
    agent = build_agent(await nats.connect(nats_url), settings, resolve_catalog(settings.catalog), clock)
    await agent.start()
    return agent, Peer(await nats.connect(nats_url), agent.bus.subjects, clock)


async def stopped(agent: Agent, peer: Peer) -> None:
    await agent.stop()
    await peer.nc.close()


@pytest.fixture
async def arriving(nats_url: str) -> AsyncIterator[tuple[Agent, Peer, Frontend]]:
    """An agent with its default settings whose demand is one frontend's arrivals."""
    frontend = Frontend()
    async with serving(frontend) as url:
        agent, peer = await started(nats_url, fresh_namespace(), FakeClock(START), url)
        try:
            yield agent, peer, frontend
        finally:
            await stopped(agent, peer)


def covered(agent: Agent, now: float) -> float:
    """What the rolling rule says a plan at ``now`` covers: the base window's busiest minute × headroom."""
    rolling = agent.optimizer.rolling
    _, window = rolling.history()
    return max(d.rps for d in window) * rolling.headroom(now)


async def test_with_arrivals_a_plan_covers_the_busiest_minute_times_the_headroom(
    arriving: tuple[Agent, Peer, Frontend],
) -> None:
    agent, peer, frontend = arriving
    plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
    await arrive(agent, peer, frontend, rps=12.0, seconds=240)
    await replan(peer)
    plan = await next_manual(plans, [])

    minutes, window = agent.optimizer.rolling.history()
    assert minutes == pytest.approx([12.0] * 4)  # one observation a minute, each the minute's mean
    assert [d.rps for d in window] == pytest.approx(minutes)
    assert agent.optimizer.rolling.headroom(peer.clock.now()) == 1.0  # flat demand asks for none
    assert plan.demand_now_rps == pytest.approx(covered(agent, peer.clock.now())) == pytest.approx(12.0)
    assert plan.demand_next_rps == plan.demand_now_rps  # the tick covers the same now and over the lead
    assert "demand from rolling: the observed peak × headroom 1.00" in plan.detail


async def test_with_worker_reports_only_a_plan_follows_the_old_rule_and_learns_no_minutes(
    nats_url: str,
) -> None:
    agent, peer = await started(nats_url, fresh_namespace(), FakeClock(START), None)
    try:
        plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
        await completions(agent, peer, rps=12.0, seconds=240)
        await replan(peer)
        plan = await next_manual(plans, [])
        assert "rolling" not in plan.detail
        assert "completions: the latest observation" in plan.detail
        assert agent.optimizer.rolling.history() == ([], [])  # completions never feed the rolling rule
    finally:
        await stopped(agent, peer)


async def test_a_minute_busier_than_the_covered_base_plans_at_once_and_a_quieter_one_does_not(
    arriving: tuple[Agent, Peer, Frontend],
) -> None:
    agent, peer, frontend = arriving
    plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
    await arrive(agent, peer, frontend, rps=12.0, seconds=120)
    await replan(peer)
    assert (await next_manual(plans, [])).demand_now_rps == pytest.approx(12.0)

    # Minute 3 is quieter than the base (no plan at its surge check), minute 4 busier (a plan at its end).
    await arrive(agent, peer, frontend, rps=6.0, seconds=60)
    await arrive(agent, peer, frontend, rps=24.0, seconds=60)
    surge = await plans.next()
    assert surge.reason == "demand"
    assert surge.sent_at == START + 240  # not START + 180 (the quiet minute), nor the tick at START + 300
    minutes, _ = agent.optimizer.rolling.history()
    assert minutes[2] < 12.0 < minutes[3]
    assert surge.demand_now_rps == pytest.approx(covered(agent, surge.sent_at)) == pytest.approx(minutes[3])
    assert "rolling: the observed peak" in surge.detail


def record_past_weeks(agent: Agent, rps: float, weeks: int = 3) -> None:
    """The profile has seen ``rps`` around this time of the week for ``weeks`` weeks: it expects it now."""
    profiler = agent.optimizer.profiler
    step = profiler.bin_minutes * 60.0
    for week in range(weeks, 0, -1):
        t = START - week * WEEK_S - 3600.0
        while t < START - week * WEEK_S + 3 * 3600.0:
            profiler.record(t, rps, 1500.0, 500.0)
            t += step


async def test_arrivals_falling_to_nothing_while_the_profile_expects_traffic_are_planned_as_an_outage(
    arriving: tuple[Agent, Peer, Frontend],
) -> None:
    agent, peer, frontend = arriving
    record_past_weeks(agent, rps=40.0)
    plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
    await arrive(agent, peer, frontend, rps=40.0, seconds=120)
    await replan(peer)
    before = await next_manual(plans, [])
    assert before.demand_now_rps == pytest.approx(40.0)
    assert "rolling: the observed peak" in before.detail

    # The frontend answers but nothing arrives, for longer than the base window (an hour of minutes).
    ticks: list[AllocationPlan] = []
    await arrive(agent, peer, frontend, rps=0.0, seconds=3600 + 300, every=60.0)
    await replan(peer)
    plan = await next_manual(plans, ticks)
    now = peer.clock.now()

    rolling = agent.optimizer.rolling
    _, window = rolling.history()
    assert max(d.rps for d in window) == 0.0  # nothing observed in the last hour
    expected = expected_over(agent.optimizer.profiler, now, rolling.lead_s)
    assert expected is not None
    assert expected.rps == pytest.approx(40.0)
    assert "rolling: the profile's expectation (an outage) × headroom" in plan.detail
    assert plan.demand_now_rps == pytest.approx(expected.rps * rolling.headroom(now))
    # Within the hour the ticks held the hour's peak, the observed 40 requests/s: no outage yet.
    assert "rolling: the observed peak" in ticks[0].detail
    assert ticks[0].demand_now_rps == pytest.approx(40.0)


async def test_the_minutes_survive_a_restart_and_the_restarted_agent_plans_the_same_demand(
    nats_url: str,
) -> None:
    ns, clock, frontend = fresh_namespace(), FakeClock(START), Frontend()
    async with serving(frontend) as url:
        agent, peer = await started(nats_url, ns, clock, url)
        plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
        await arrive(agent, peer, frontend, rps=12.0, seconds=60)
        await arrive(agent, peer, frontend, rps=24.0, seconds=60)  # a busy minute, held for the hour
        await arrive(agent, peer, frontend, rps=12.0, seconds=60)
        await replan(peer)
        plan = await next_manual(plans, [])
        assert plan.demand_now_rps > 12.0
        saved = agent.optimizer.rolling.history()
        assert len(saved[0]) == 3
        await stopped(agent, peer)

        agent, peer = await started(nats_url, ns, clock, url)
        try:
            assert agent.optimizer.rolling.history() == saved
            plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
            # Two scrapes give the restarted agent the frontend's rate again (the first gives no interval);
            # no minute ends in between, so what it covers can only come from the minutes it restored.
            await arrive(agent, peer, frontend, rps=12.0, seconds=15)
            await replan(peer)
            again = await next_manual(plans, [])
            assert agent.optimizer.rolling.history() == saved
            assert again.demand_now_rps == pytest.approx(plan.demand_now_rps)
            assert "rolling: the observed peak" in again.detail
        finally:
            await stopped(agent, peer)


async def test_after_a_restart_a_minute_busier_than_the_restored_base_still_plans_at_once(
    nats_url: str,
) -> None:
    ns, clock, frontend = fresh_namespace(), FakeClock(START), Frontend()
    # Two days at 10/s with a 30/s minute every hour: the headroom fitted on them is well above 1.5.
    minutes = [30.0 if m % 60 == 59 else 10.0 for m in range(2 * 1440)]
    base_window = [Demand(10.0, 1500.0, 500.0)] * 10
    async with serving(frontend) as url:
        agent, peer = await started(nats_url, ns, clock, url)
        agent.optimizer.rolling.restore(minutes, base_window)
        plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
        await arrive(agent, peer, frontend, rps=10.0, seconds=15)
        await replan(peer)
        plan = await next_manual(plans, [])
        assert plan.demand_now_rps > 15.0  # 10/s × the headroom
        await stopped(agent, peer)

        agent, peer = await started(nats_url, ns, clock, url)
        try:
            plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
            # 15/s: above the base the last plan covered (10/s), below what it planned for (10/s × headroom).
            await arrive(agent, peer, frontend, rps=15.0, seconds=60)
            surge = await plans.next()
            assert surge.reason == "demand"
            assert surge.sent_at < START + 15 + 300  # at the minute's end, not at the next tick
        finally:
            await stopped(agent, peer)


class OptimizerStateBeforeRolling(msgspec.Struct, frozen=True, tag="optimizer.v1", tag_field="kind"):
    """The snapshot as saved before the rolling rule's fields (minutes, base_window, minute_due)."""

    last_plan: AllocationPlan | None
    fleet: FleetSnapshot
    prices: list[SavedQuote] = msgspec.field(default_factory=list)
    recent: list[tuple[float, float, float, float]] = msgspec.field(default_factory=list)


async def test_a_snapshot_saved_before_the_rolling_rule_restores_with_no_minutes(nats_url: str) -> None:
    ns, clock = fresh_namespace(), FakeClock(START)
    agent, peer = await started(nats_url, ns, clock, None)
    plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
    await replan(peer)
    plan = await plans.next()
    fleet = agent.optimizer.fleet.snapshot()
    await stopped(agent, peer)

    old = OptimizerStateBeforeRolling(plan, fleet, [], [(START, 12.0, 1500.0, 500.0)])
    nc = await nats.connect(nats_url)
    try:
        await JetStreamStore(nc, bucket_name(ns)).put("optimizer", pack(encode_state(old)))
    finally:
        await nc.close()
    agent, peer = await started(nats_url, ns, clock, None)
    try:
        rejected = agent.bus.metrics.registry.get_sample_value(
            "costagent_state_snapshots_rejected_total", {"key": "optimizer"}
        )
        assert not rejected
        assert agent.optimizer.last_plan == plan
        assert agent.optimizer.rolling.history() == ([], [])
    finally:
        await stopped(agent, peer)


@pytest.mark.parametrize(
    ("minutes", "base_window", "minute_due"),
    [
        ([12.0], [(-1.0, 1500.0, 500.0)], None),  # a negative rate in the base window
        ([12.0, math.nan], [], None),  # a minute's rate that is no number
        ([12.0], [], math.nan),  # no minute would ever be due again
    ],
    ids=["negative-base", "nan-minute", "nan-minute-due"],
)
async def test_a_snapshot_with_an_unusable_rolling_history_is_refused_and_takes_nothing_over(
    nats_url: str,
    minutes: list[float],
    base_window: list[tuple[float, float, float]],
    minute_due: float | None,
) -> None:
    ns = fresh_namespace()
    fleet = FleetSnapshot(live=[("s-1", "h100_8x", "default", "spot", "ready", START)], gone=[])
    bad = OptimizerState(None, fleet, [], [], minutes, base_window, minute_due)
    nc = await nats.connect(nats_url)
    try:
        await JetStreamStore(nc, bucket_name(ns)).put("optimizer", pack(encode_state(bad)))
    finally:
        await nc.close()
    agent, peer = await started(nats_url, ns, FakeClock(START), None)
    try:
        rejected = agent.bus.metrics.registry.get_sample_value(
            "costagent_state_snapshots_rejected_total", {"key": "optimizer"}
        )
        assert rejected == 1
        assert len(agent.optimizer.fleet) == 0  # not the snapshot's fleet: a refused snapshot changes nothing
        assert agent.optimizer.rolling.history() == ([], [])
    finally:
        await stopped(agent, peer)


async def test_a_week_of_minutes_is_saved_well_under_the_nats_message_limit_and_restored(
    nats_url: str,
) -> None:
    ns, clock = fresh_namespace(), FakeClock(START)
    agent, peer = await started(nats_url, ns, clock, None)
    rolling = agent.optimizer.rolling
    assert rolling.history_steps == 10_080  # a week of minutes
    # Full-precision rates that do not repeat: the worst case for compression.
    rng = random.Random(7)
    week = [rng.uniform(5.0, 50.0) for _ in range(rolling.history_steps)]
    window = [Demand(rps, 1500.0, 500.0) for rps in week[-rolling.base_window_steps :]]
    rolling.restore(week, window)
    raw = agent.optimizer.encode_state()
    packed = pack(raw)
    print(f"optimizer snapshot with a week of minutes: {len(raw)} bytes, {len(packed)} bytes packed")
    assert len(packed) < NATS_MAX_PAYLOAD / 4
    await agent.optimizer.save_now()
    await stopped(agent, peer)

    agent, peer = await started(nats_url, ns, clock, None)
    try:
        assert agent.optimizer.rolling.history() == (week, window)
    finally:
        await stopped(agent, peer)
