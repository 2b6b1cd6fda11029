"""Durable state on a real nats-server with JetStream: the agent's actors save what they know in a KV bucket
of their namespace and a new agent on that namespace (a restart, a new leader) takes it back when it starts.
"""

from __future__ import annotations

import msgspec
import nats
import pytest
from harness import SEED, START, Inbox, Peer, eventually, fresh_namespace, settle
from structlog.testing import capture_logs
from test_spot_monitor import fleet, notice, report

from agent.config import BusSettings, Settings, SpotMonitorSettings, StateSettings
from agent.runtime.clock import FakeClock
from agent.runtime.nats_server import NatsServer
from agent.runtime.state_store import JetStreamStore, StateStoreError, bucket_name, pack
from agent.service import Agent, build_agent
from schemas import AllocationPlan, CostReport, CostReportRequest, DrainOrder, ReplanRequest, SpotPrice


async def started(nats_url: str, ns: str, clock: FakeClock) -> tuple[Agent, Peer]:
    """An agent on namespace ``ns`` (a second one on the same namespace is a restart of the first)."""
    settings = Settings(
        bus=BusSettings(namespace=ns),
        state=StateSettings(snapshot_seconds=1.0),
        spot_monitor=SpotMonitorSettings(missed_intervals=1e6),  # the clock jumps; the worker is not lost
    )
    agent = build_agent(await nats.connect(nats_url), settings, SEED, clock)
    await agent.start()
    return agent, Peer(await nats.connect(nats_url), agent.bus.subjects, clock)


async def stopped(agent: Agent, peer: Peer) -> None:
    await agent.stop()
    await peer.nc.close()


async def cost(peer: Peer) -> CostReport:
    reply = await peer.nc.request(
        peer.subjects.cost_report_request,
        msgspec.json.encode(CostReportRequest(**peer.env())),
        timeout=5,
    )
    return msgspec.json.decode(reply.data, type=CostReport)


async def test_a_stopped_agent_saves_what_it_knows_and_the_next_one_on_its_namespace_resumes_it(
    nats_url: str,
) -> None:
    ns, clock = fresh_namespace(), FakeClock(START)
    agent, peer = await started(nats_url, ns, clock)
    plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
    await fleet(peer, "r-1", "reserved")
    await fleet(peer, "s-1", "spot")
    await report(peer, "w-1", "s-1")
    quote = SpotPrice(**peer.env("feed"), instance_type="h100_8x", pool="default", price_hourly=7.5)
    await peer.send(peer.subjects.spot_price("default"), quote)
    await settle(peer.nc)
    clock.advance(1800.0)  # half an hour of the fleet, and the optimizer's ticks
    request = ReplanRequest(**peer.env())
    await peer.send(peer.subjects.plan_tick, request)
    plan = await plans.next()
    while request.msg_id not in plan.trigger_ids:
        plan = await plans.next()
    before = await cost(peer)
    await stopped(agent, peer)

    clock.advance(600.0)  # the agent is down for ten minutes; its nodes are not
    agent, peer = await started(nats_url, ns, clock)
    try:
        after = await cost(peer)
        assert after.period_start == before.period_start
        assert after.tokens == before.tokens == 25_000
        assert after.instance_hours["reserved"] == pytest.approx(
            before.instance_hours["reserved"] + 600 / 3600
        )
        assert after.plan_id == plan.plan_id
        assert agent.optimizer.last_plan == plan
        assert agent.profiler.profiler.sample_count >= 1  # the bins closed in that half hour
        for prices in (agent.optimizer.prices, agent.reporter.prices):  # spot quotes: the gap's price
            assert prices.quotes()[("h100_8x", "default")].price_hourly == 7.5
        assert agent.spot_monitor.registry.describe("s-1") == ("h100_8x", "default", "spot")
        drains = await Inbox.open(peer.nc, peer.subjects.spot_drain_all, DrainOrder)
        await notice(peer, "s-1")
        assert (await drains.next()).worker_ids == ["w-1"]
    finally:
        await stopped(agent, peer)


async def test_a_corrupt_or_foreign_snapshot_is_logged_counted_and_ignored(nats_url: str) -> None:
    ns = fresh_namespace()
    nc = await nats.connect(nats_url)
    store = JetStreamStore(nc, bucket_name(ns))
    await store.put("cost_reporter", b"\x00 not a snapshot")
    foreign = msgspec.msgpack.encode({"kind": "optimizer.v9", "last_plan": None})  # a later version
    await store.put("optimizer", pack(foreign))
    with capture_logs() as logs:
        agent, peer = await started(nats_url, ns, FakeClock(START))
    try:
        rejected = {e["key"]: e["error"] for e in logs if e["event"] == "state_snapshot_rejected"}
        assert rejected.keys() == {"cost_reporter", "optimizer"}
        assert "optimizer.v9" in rejected["optimizer"]
        metrics = agent.bus.metrics.registry
        for key in rejected:
            assert metrics.get_sample_value("costagent_state_snapshots_rejected_total", {"key": key}) == 1
        assert all(agent.supervisor.running.values())
        assert (await cost(peer)).intervals >= 0  # the reporter answers, starting empty
    finally:
        await stopped(agent, peer)
        await nc.close()


async def test_a_server_without_jetstream_stops_start_up_with_one_line_naming_the_setting() -> None:
    with NatsServer(jetstream=False) as server:
        nc = await nats.connect(server.url)
        settings = Settings(bus=BusSettings(namespace=fresh_namespace()))
        agent = build_agent(nc, settings, SEED, FakeClock(START))
        with pytest.raises(StateStoreError) as raised:
            await agent.start()
        message = str(raised.value)
        assert "\n" not in message
        assert '[state] store = "jetstream"' in message
        assert "no JetStream" in message
        assert not any(agent.supervisor.running.values())  # no actor ran on an empty state
        await nc.close()


async def test_with_store_none_nothing_is_saved_and_a_server_without_jetstream_will_do() -> None:
    with NatsServer(jetstream=False) as server:
        nc = await nats.connect(server.url)
        settings = Settings(bus=BusSettings(namespace=fresh_namespace()), state=StateSettings(store="none"))
        agent = build_agent(nc, settings, SEED, FakeClock(START))
        await agent.start()
        await eventually(lambda: all(agent.supervisor.running.values()))
        await agent.stop()
