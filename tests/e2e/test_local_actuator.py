"""The local actuator against NVIDIA Dynamo 1.6.1's own frontend and mocker workers (real processes) and the
session's real nats-server: plans start and stop mocker workers that register with the frontend and take
traffic; a spot notice drains a node (it leaves routing at once) and kills it at the deadline, and the
frontend's migration finishes every stream; an agent restarted mid-load adopts the running workers.

The actuator runs as it does in the agent (ActuatorActor, its own Bus on a scaled clock: 10 simulated seconds
a second, mockers sped up alike), with a DynamoSource reading the frontend's migration counter. Plans and
drain orders are published on the bus as the optimizer and the spot monitor publish them. Every wait is on
a condition with a timeout.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import msgspec
import nats
import pytest
import pytest_asyncio
from nats.aio.msg import Msg
from prometheus_client.parser import text_string_to_metric_families
from waits import eventually as wait_until

from agent.actors.actuator import FRONTEND_POLICY, ActuatorActor
from agent.actors.dynamo_source import DynamoSource
from agent.actuators.local import LocalActuator
from agent.actuators.settings import LocalSettings
from agent.bus import Bus, settle
from agent.config import DynamoSettings, resolve_catalog
from agent.core.catalog import Catalog
from agent.core.demand_bins import DemandBins
from agent.runtime.clock import ScaledClock
from agent.runtime.metrics import AgentMetrics
from agent.sim.dynamo_local import (
    COMPONENT,
    ENDPOINT,
    ChatResult,
    LocalDynamo,
    chat_request,
    metric,
    stream_chat,
)
from agent.subjects import Subjects
from schemas import AllocationPlan, DrainOrder, InstanceEvent, MigrationReport, Target, envelope

pytestmark = pytest.mark.asyncio(loop_scope="module")

WAIT_S = 60.0
SPEED = 10.0  # simulated seconds per real second, for the clock and the mockers alike
BOOT_S = 20.0  # simulated: 2 real seconds, about a mocker's start-up here
# A long stream: 3,000 tokens at ~5.8 ms each (the mocker's pace here) sped up 10x: about 1.7 real s
# (17 simulated s); a short one is done in milliseconds.
LONG_TOKENS, SHORT_TOKENS = 3000, 8
LONG_STREAM = 12_000  # about 7 real s: longer than a 30 s notice (3 real s)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dynamo(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, tiny_model_dir: Path
) -> AsyncIterator[LocalDynamo]:
    workdir = tmp_path_factory.mktemp("local-actuator")
    deployment = LocalDynamo(
        workdir, nats_url=nats_url, model_dir=tiny_model_dir, namespace=f"t{uuid.uuid4().hex[:10]}"
    )
    print(f"Dynamo logs: {workdir}")  # shown with a failing test's output
    with deployment:
        deployment.start_frontend(migration_limit=3)
        await deployment.wait_frontend(timeout_s=WAIT_S)
        yield deployment


@pytest_asyncio.fixture(loop_scope="module")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@dataclass
class Rig:
    """An actuator actor (and a DynamoSource) on one bus, and what it published."""

    bus: Bus
    clock: ScaledClock
    actor: ActuatorActor
    driver: LocalActuator
    catalog: Catalog
    events: list[InstanceEvent] = field(default_factory=list)
    reports: list[MigrationReport] = field(default_factory=list)
    plans: int = 0

    def states(self, instance_id: str) -> list[str]:
        return [e.state for e in self.events if e.instance_id == instance_id]

    def launched(self) -> list[str]:
        return [e.instance_id for e in self.events if e.state == "launched"]

    def ready(self) -> list[str]:
        """Nodes whose latest event is ``ready``."""
        latest: dict[str, str] = {}
        for e in self.events:
            latest[e.instance_id] = e.state
        return sorted(i for i, s in latest.items() if s == "ready")

    async def plan(self, count: int, tier: str = "spot") -> None:
        """A plan for ``count`` nodes of the catalog's first type in its first pool, on ``tier``."""
        name = next(iter(self.catalog.types))
        pool = self.catalog.types[name].pools[0]
        self.plans += 1
        plan = AllocationPlan(
            **envelope("test-optimizer", sent_at=self.clock.now()),
            plan_id=f"plan-{self.plans}",
            reason="manual",
            trigger_ids=[],
            targets=[Target(instance_type=name, pool=pool, tier=tier, count=count)],  # type: ignore[arg-type]
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
        applied = self.actor.plans_applied
        await self.bus.nc.publish(self.bus.subjects.plan_allocation, msgspec.json.encode(plan))
        await eventually(lambda: self.actor.plans_applied > applied, "the plan applied")

    async def notice(self, instance_id: str, notice_s: float) -> DrainOrder:
        """A drain order as the spot monitor sends it on a notice of ``notice_s`` simulated seconds."""
        order = DrainOrder(
            **envelope("test-spot-monitor", sent_at=self.clock.now()),
            instance_id=instance_id,
            worker_ids=[],
            deadline=self.clock.now() + notice_s,
            reason="notice",
        )
        await self.bus.nc.publish(self.bus.subjects.spot_drain(instance_id), msgspec.json.encode(order))
        return order


def local_settings(dynamo: LocalDynamo, state_dir: Path) -> LocalSettings:
    return LocalSettings(
        command=dynamo.worker_command(speedup_ratio=SPEED),
        env=dict(dynamo.env),
        state_dir=str(state_dir),
        release_grace_seconds=300.0,
    )


@asynccontextmanager
async def rig(
    nats_url: str, dynamo: LocalDynamo, state_dir: Path, ns: str | None = None, *, keep_workers: bool = False
) -> AsyncIterator[Rig]:
    """The actuator as an agent runs it: its own connection (an agent's stopped actors keep their
    subscriptions until the connection closes), closed at the end; its workers stopped then too, unless
    ``keep_workers`` (an agent that stops leaves its fleet running: the restart test's first agent)."""
    nc = await nats.connect(nats_url)
    clock = ScaledClock(SPEED)
    bus = Bus(
        nc, Subjects(ns or f"t{uuid.uuid4().hex[:10]}"), source="agent", clock=clock, metrics=AgentMetrics()
    )
    catalog = resolve_catalog("seed")
    source = DynamoSource(
        bus,
        clock,
        DynamoSettings(
            frontend_urls=[dynamo.frontend_url],
            namespace=dynamo.namespace,
            component=COMPONENT,
            endpoint=ENDPOINT,
            scrape_interval_seconds=2.0,  # simulated: 0.2 real s
        ),
        DemandBins(bin_seconds=60.0, close_delay_s=0.0, stale_after_s=60.0),
    )
    driver = LocalActuator(local_settings(dynamo, state_dir), clock, boot_s=BOOT_S, namespace=bus.subjects.ns)
    actor = ActuatorActor(
        bus,
        clock,
        driver,
        catalog=catalog,
        boot_s=BOOT_S,
        make_before_break=True,
        poll_s=1.0,  # simulated: 0.1 real s
        price_max_age_s=1800.0,
        frontend_migrations=source.migrations_read,
        report_after_s=100.0,
        quiet_s=30.0,  # simulated: 3 real s
    )
    r = Rig(bus, clock, actor, driver, catalog)

    async def on_event(msg: Msg) -> None:
        r.events.append(msgspec.json.decode(msg.data, type=InstanceEvent))

    async def on_report(msg: Msg) -> None:
        r.reports.append(msgspec.json.decode(msg.data, type=MigrationReport))

    _subs = [
        await nc.subscribe(bus.subjects.fleet_instance_all, cb=on_event),
        await nc.subscribe(bus.subjects.migration_report_all, cb=on_report),
    ]
    await settle(nc)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(a.run(stop)) for a in (source, actor)]
    try:
        async with asyncio.timeout(WAIT_S):
            await asyncio.gather(source.ready.wait(), actor.ready.wait())
        yield r
        assert not any(t.done() for t in tasks), "an actor stopped on its own"
    finally:
        stop.set()
        async with asyncio.timeout(WAIT_S):
            await asyncio.gather(*tasks)
        await nc.drain()
        if not keep_workers:
            await driver.stop_all()  # the test's end, passed or failed: no worker outlives it


async def eventually(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    await wait_until(condition, what, timeout_s)


def streams(
    session: aiohttp.ClientSession, url: str, count: int, tokens: int, first: int = 0
) -> list[asyncio.Task[ChatResult]]:
    return [
        asyncio.create_task(
            stream_chat(session, url, chat_request(20, tokens, first_word=first + i), timeout_s=WAIT_S)
        )
        for i in range(count)
    ]


async def frontend_migrations(session: aiohttp.ClientSession, dynamo: LocalDynamo) -> float:
    async with session.get(f"{dynamo.frontend_url}/metrics") as answer:
        return metric(await answer.text(), "dynamo_frontend_model_migration_total")


def served_by(metrics_text: str) -> set[int]:
    """The Dynamo instance ids the frontend has had a first token from."""
    return {
        int(sample.labels["worker_id"])
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == "dynamo_frontend_worker_last_time_to_first_token_seconds"
    }


def environment(pid: int) -> dict[str, str]:
    """A running process's environment (empty when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def registered_pids(dynamo: LocalDynamo, driver: LocalActuator) -> set[int]:
    """The pids of the actuator's workers that are in Dynamo's discovery now."""
    from agent.actuators.processes import listening_ports

    ports = set(dynamo.registered_instances().values())
    return {n.pid for n in driver.nodes.values() if ports & {p for _, p in listening_ports(n.pid)}}


async def test_plans_start_workers_that_register_and_serve_and_stop_them_with_no_client_error(
    nats_url: str, dynamo: LocalDynamo, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with rig(nats_url, dynamo, tmp_path / "state") as r:
        await r.plan(2)
        await eventually(lambda: len(r.launched()) == 2, "two launched")
        launched = r.launched()
        await eventually(lambda: len(r.ready()) == 2, "both workers ready")
        assert len(registered_pids(dynamo, r.driver)) == 2  # ready: registered, routable
        for node in r.driver.nodes.values():  # labelled with what the plan asked for
            environ = environment(node.pid)
            assert environ["COSTAGENT_INSTANCE_ID"] == node.instance_id
            assert environ["COSTAGENT_TIER"] == "spot"

        results = await asyncio.gather(*streams(session, dynamo.frontend_url, 6, SHORT_TOKENS))
        assert all(x.ok for x in results), results
        # Both took traffic: the frontend has a time to first token from each.
        async with session.get(f"{dynamo.frontend_url}/metrics") as answer:
            served = served_by(await answer.text())
        assert set(dynamo.registered_instances()) <= served

        # Fewer nodes while streams are running: the newest drains (SIGTERM), finishes them, and exits.
        running = streams(session, dynamo.frontend_url, 6, LONG_TOKENS // 3, first=100)
        await asyncio.sleep(0.2)  # the streams' start, not a readiness wait: they must be mid-flight
        await r.plan(1)
        newest = max(launched, key=lambda i: int(i.rsplit("-", 1)[1]))
        await eventually(lambda: "draining" in r.states(newest), "the newest draining")
        results = await asyncio.gather(*running)
        assert all(x.ok for x in results), results
        await eventually(lambda: "terminated" in r.states(newest), "the released worker gone")
        assert r.ready() == [i for i in launched if i != newest]
        assert len(registered_pids(dynamo, r.driver)) == 1

        await r.plan(0)
        await eventually(lambda: not r.driver.nodes, "every worker gone")
    assert r.reports == []  # released by plans: nothing to migrate, nothing reported


async def test_a_30s_notice_takes_the_node_out_of_routing_at_once_and_every_stream_completes(
    nats_url: str, dynamo: LocalDynamo, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with rig(nats_url, dynamo, tmp_path / "state") as r:
        await r.plan(1)
        await eventually(lambda: len(r.ready()) == 1, "the first worker ready")
        (victim,) = r.ready()
        await eventually(lambda: r.actor.frontend_migrations() is not None, "a frontend read")  # type: ignore[misc]
        before = await frontend_migrations(session, dynamo)

        # Long streams, all on the one worker: 12,000 tokens, about 70 simulated s each. A second worker
        # joins; then a 30 s notice (3 real s) on the first. On SIGTERM the worker leaves discovery at
        # once and waits for its streams, which cannot finish in time: at the deadline it dies, and the
        # frontend re-sends each to the survivor with the tokens generated so far. None fails.
        running = streams(session, dynamo.frontend_url, 8, LONG_STREAM)
        await r.plan(2)
        await eventually(lambda: len(r.ready()) == 2, "the second worker ready")
        pid = r.driver.nodes[victim].pid
        assert pid in registered_pids(dynamo, r.driver)
        loop = asyncio.get_running_loop()
        ordered = loop.time()
        order = await r.notice(victim, 30.0)
        await eventually(
            lambda: pid not in registered_pids(dynamo, r.driver), "the node out of discovery", 5.0
        )
        left_routing_s = loop.time() - ordered
        await eventually(lambda: "terminated" in r.states(victim), "the node dead at its deadline")
        results = await asyncio.gather(*running)
        await eventually(lambda: bool(r.reports), "the migration report")
        migrated = round(await frontend_migrations(session, dynamo) - before)

    print(f"out of routing {left_routing_s:.3f} s after the drain order")
    assert left_routing_s < 1.0
    assert r.states(victim)[-2:] == ["draining", "terminated"]
    dead = next(e for e in r.events if e.instance_id == victim and e.state == "terminated")
    assert order.deadline <= dead.sent_at <= order.deadline + 2.0  # killed at its deadline (a poll's slack)
    assert all(x.ok for x in results), [x for x in results if not x.ok]  # by the client's own count
    assert all(x.completion_tokens == LONG_STREAM for x in results)
    (report,) = r.reports
    assert report.instance_id == victim
    assert report.policy == FRONTEND_POLICY
    # The frontend's own count: the report sees it grow until it stays put (here 3 real s); on a loaded
    # machine a stream can still be re-sent after that, so the report may count fewer, never more.
    print(f"migrated {migrated}, reported {report.counts.frontend_migrated}")
    assert 1 <= report.counts.frontend_migrated <= migrated
    assert migrated >= 1
    assert report.lost == 0


async def test_an_agent_restarted_mid_load_adopts_its_workers_and_nothing_fails(
    nats_url: str, dynamo: LocalDynamo, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    ns = f"t{uuid.uuid4().hex[:10]}"
    async with rig(nats_url, dynamo, state, ns, keep_workers=True) as first:
        await first.plan(2)
        await eventually(lambda: len(first.ready()) == 2, "both workers ready")
        pids = {n.instance_id: n.pid for n in first.driver.nodes.values()}
        running = streams(session, dynamo.frontend_url, 8, LONG_TOKENS)
        await asyncio.sleep(0.3)  # the streams' start, not a readiness wait
    # The agent is gone (its actors stopped, as when it is killed: the workers are not its children any
    # more in spirit: they run in their own sessions), and a new one starts from the same state directory.
    assert all(environment(pid) for pid in pids.values())  # still running
    async with rig(nats_url, dynamo, state, ns) as second:
        assert {n.instance_id: n.pid for n in second.driver.nodes.values()} == pids  # adopted
        await eventually(lambda: sorted(second.ready()) == sorted(pids), "their states said again")
        results = await asyncio.gather(*running)
        assert all(x.ok for x in results), results
        await second.plan(3)  # planning resumes: one more, none twice
        await eventually(lambda: len(second.launched()) == 1, "one launched")
        await eventually(lambda: len(second.ready()) == 3, "the third worker ready")
        await second.plan(0)
        await eventually(lambda: not second.driver.nodes, "every worker gone")
