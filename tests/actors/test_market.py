"""The Dynamo demo's simulated spot market (agent/sim/market.py) on a real nats-server and a fake clock: it
learns the fleet from an actuator's InstanceEvents, reclaims what the market no longer allows and what a
storm hits, the busiest first, with sidecar-shaped notices of two lengths, and bills each node from launched
to terminated."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import msgspec
import nats
import pytest
from harness import SEED, START, Inbox, eventually, fresh_namespace, settle

from agent.bus import Bus
from agent.runtime.clock import FakeClock
from agent.runtime.metrics import AgentMetrics
from agent.sim.market import MarketConfig, SimMarket
from agent.subjects import Subjects
from schemas import InstanceEvent, PreemptionNotice, SpotPrice, envelope

NAME = "h100_8x"
POOL = SEED.types[NAME].pools[0]


@dataclass
class Rig:
    market: SimMarket
    clock: FakeClock
    bus: Bus
    available: dict[tuple[str, str], int | None]
    loads: dict[str, float]

    async def event(self, instance_id: str, state: str, tier: str = "spot") -> None:
        message = InstanceEvent(
            **envelope("actuator", sent_at=self.clock.now()),
            instance_id=instance_id,
            instance_type=NAME,
            pool=POOL,
            tier=tier,  # type: ignore[arg-type]
            state=state,  # type: ignore[arg-type]
        )
        await self.bus.nc.publish(self.bus.subjects.fleet_instance(instance_id), msgspec.json.encode(message))
        await settle(self.bus.nc)

    async def check(self, seconds: float = 15.0) -> None:
        """One market check ``seconds`` later."""
        ticks = self.market.ticks
        self.clock.advance(seconds)
        await eventually(lambda: self.market.ticks > ticks)


@asynccontextmanager
async def make_rig(nats_url: str, config: MarketConfig) -> AsyncIterator[Rig]:
    nc = await nats.connect(nats_url)
    clock = FakeClock(START)
    bus = Bus(nc, Subjects(fresh_namespace()), source="sim-cloud", clock=clock, metrics=AgentMetrics())
    available: dict[tuple[str, str], int | None] = {}
    loads: dict[str, float] = {}
    market = SimMarket(
        bus,
        clock,
        catalog=SEED,
        config=config,
        spot_available=lambda name, pool, _t: available.get((name, pool)),
        load=lambda instance_id: loads.get(instance_id, 0.0),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(market.run(stop))
    await market.ready.wait()
    try:
        yield Rig(market, clock, bus, available, loads)
    finally:
        stop.set()
        await task
        await nc.close()


@pytest.fixture
async def rig(nats_url: str) -> AsyncIterator[Rig]:
    async with make_rig(nats_url, MarketConfig(short_share=0.0, seed=1)) as r:
        yield r


async def test_a_market_drop_reclaims_the_busiest_spot_node_first(rig: Rig) -> None:
    notices = await Inbox.open(rig.bus.nc, rig.bus.subjects.spot_notice_all, PreemptionNotice)
    for i in (1, 2, 3):
        await rig.event(f"n{i}", "launched")
        await rig.event(f"n{i}", "ready")
    rig.loads.update({"n1": 10.0, "n2": 500.0, "n3": 20.0})
    rig.available[(NAME, POOL)] = 2
    await rig.check()
    notice = await notices.next()
    assert notice.instance_id == "n2"  # the busiest, not the newest
    assert notice.deadline == pytest.approx(rig.clock.now() + 120.0)
    assert (notice.source, notice.provider, notice.kind) == ("sidecar:n2", "sim", "terminate")
    await rig.check()
    assert notices.pending == 0  # no node is reclaimed twice; the other two fit


async def test_quotes_say_what_the_market_allows_at_once_when_it_changes(rig: Rig) -> None:
    quotes = await Inbox.open(rig.bus.nc, rig.bus.subjects.spot_price_all, SpotPrice)
    rig.available[(NAME, POOL)] = 0
    await rig.check()
    await settle(rig.bus.nc)  # the quotes published at the check have been delivered
    seen = [q for q in await quotes.take_pending() if (q.instance_type, q.pool) == (NAME, POOL)]
    assert [q.available for q in seen] == [0]
    assert seen[0].price_hourly == SEED.types[NAME].spot_hourly


async def test_a_storm_hits_busy_nodes_with_a_seeded_share_of_short_notices(nats_url: str) -> None:
    config = MarketConfig(
        short_share=0.5, storm_start_s=0.0, storm_duration_s=3600.0, storm_rate_per_hour=1.0, seed=3
    )
    async with make_rig(nats_url, config) as r:
        notices = await Inbox.open(r.bus.nc, r.bus.subjects.spot_notice_all, PreemptionNotice)
        for i in range(8):
            await r.event(f"s{i}", "launched")
            await r.event(f"s{i}", "ready")
        await r.event("booting", "launched")
        await r.check(60.0)
        assert notices.pending == 0  # ready for less than storm_min_uptime_s (600 s): not running work yet
        await r.check(600.0)
        await eventually(lambda: notices.pending >= 8)  # published by the market, delivered by the server
        hit = await notices.take_pending()
        assert {n.instance_id for n in hit} == {f"s{i}" for i in range(8)}  # rate 1: every busy node
        lengths = sorted(round(n.deadline - n.received_at) for n in hit)
        assert set(lengths) == {30, 120}  # both lengths, drawn from the seed
        assert r.market.preemptions[0].why == "storm"


async def test_the_bill_prices_each_node_from_launched_to_terminated(rig: Rig) -> None:
    await rig.market.add_reserved("r1", NAME, POOL)
    await rig.event("s1", "launched")
    rig.clock.advance(1800.0)
    await rig.event("s1", "terminated")
    rig.clock.advance(1800.0)
    bill = rig.market.bill()
    t = SEED.types[NAME]
    assert bill["spot"] == pytest.approx(0.5 * t.spot_hourly)
    assert bill["reserved"] == pytest.approx(1.0 * t.reserved_hourly)
    assert bill["total"] == pytest.approx(bill["spot"] + bill["reserved"])
    assert rig.market.max_running == 2
