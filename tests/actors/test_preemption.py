"""Spot preemption end to end on a real nats-server: the agent's five actors, emulated GPU workers and an
emulated router, on a scaled clock. "Lost" is the router's own count, not the agent's."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import msgspec
import nats
import pytest
from harness import START, Inbox, eventually, fresh_namespace

from agent.bus import Bus
from agent.config import BusSettings, MigrationSettings, Settings, resolve_catalog
from agent.runtime.clock import ScaledClock
from agent.runtime.metrics import AgentMetrics
from agent.service import Agent, build_agent
from agent.sim.router import RouterEmulator
from agent.sim.worker import WorkerEmulator
from agent.subjects import Subjects
from schemas import MigrationReport, PreemptionNotice, envelope

SEED = resolve_catalog("seed")
SPEED = 20.0  # clock seconds per real second: a 120 s notice takes 6 s
GB = 1e9


@dataclass
class World:
    agent: Agent
    bus: Bus
    clock: ScaledClock
    router: RouterEmulator
    workers: dict[str, WorkerEmulator] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    cross_node_bytes_per_s: float = 3.125 * GB

    async def start_worker(
        self, worker_id: str, instance_id: str, type_name: str, tier: str
    ) -> WorkerEmulator:
        worker = WorkerEmulator(
            self.bus,
            self.clock,
            worker_id=worker_id,
            instance_id=instance_id,
            instance_type=SEED.type(type_name),
            pool="default",
            tier=tier,  # type: ignore[arg-type]
            same_node_bytes_per_s=100 * GB,
            cross_node_bytes_per_s=self.cross_node_bytes_per_s,
            step_s=0.2,
        )
        self.workers[worker_id] = worker
        self.tasks.append(asyncio.ensure_future(worker.run(self.stop)))
        await eventually(worker.ready.is_set)
        await worker.sync()  # its first metrics: the agent and the router learn of it
        return worker

    async def admit(
        self, count: int, prefix: str, rng: random.Random, outputs: tuple[int, int] = (600, 2000)
    ) -> None:
        """``count`` requests; their outputs are long enough to be in flight when the notice comes."""
        for k in range(count):
            await self.router.admit(
                f"{prefix}-{k}",
                prompt_tokens=rng.randint(200, 3000),
                expected_output_tokens=rng.randint(*outputs),
                prefix_blocks=[f"sys-{k % 4}-{b}" for b in range(4)],
            )
        await eventually(self.dispatched, timeout_s=10)

    def dispatched(self) -> bool:
        summary = self.router.summary()
        return summary["waiting"] == 0 and summary["dispatching"] == 0

    async def known_to_agent(self, *instances: str) -> None:
        registry = self.agent.spot_monitor.registry
        await eventually(lambda: all(registry.life(i) == "active" for i in instances), timeout_s=10)

    async def notice(self, instance_id: str, in_s: float) -> float:
        deadline = self.clock.now() + in_s
        for worker in self.workers.values():
            if worker.instance_id == instance_id:
                worker.kill_at(deadline)
        notice = PreemptionNotice(
            **envelope("sim-cloud", sent_at=self.clock.now()),
            instance_id=instance_id,
            kind="terminate",
            deadline=deadline,
            provider="sim",
            received_at=self.clock.now(),
        )
        await self.bus.nc.publish(self.bus.subjects.spot_notice(instance_id), msgspec.json.encode(notice))
        return deadline

    async def all_served(self, timeout_s: float = 60.0) -> dict[str, int]:
        await eventually(self.router.all_done, timeout_s=timeout_s)
        return self.router.summary()


@pytest.fixture
async def world_factory(nats_url: str) -> AsyncIterator[Callable[..., asyncio.Future[World]]]:
    made: list[tuple[World, nats.aio.client.Client]] = []

    async def make(policy: str = "deadline", cross_node_gbytes_per_s: float = 3.125) -> World:
        ns = fresh_namespace()
        clock = ScaledClock(SPEED, start=START)
        settings = Settings(
            bus=BusSettings(namespace=ns),
            migration=MigrationSettings(policy=policy, cross_node_gbytes_per_s=cross_node_gbytes_per_s),  # type: ignore[arg-type]
        )
        agent_nc = await nats.connect(nats_url)
        agent = build_agent(agent_nc, settings, SEED, clock)
        await agent.start()
        sim_nc = await nats.connect(nats_url)
        bus = Bus(sim_nc, Subjects(ns), source="sim", clock=clock, metrics=AgentMetrics())
        router = RouterEmulator(bus, clock)
        world = World(agent, bus, clock, router, cross_node_bytes_per_s=cross_node_gbytes_per_s * GB)
        world.tasks.append(asyncio.ensure_future(router.run(world.stop)))
        await eventually(router.ready.is_set)
        made.append((world, sim_nc))
        return world

    yield make  # type: ignore[misc]
    for world, sim_nc in made:
        world.stop.set()
        await world.agent.stop()
        await sim_nc.close()
        await asyncio.wait(world.tasks, timeout=5)


async def test_256_requests_on_a_node_with_a_two_minute_notice_are_all_served(world_factory) -> None:  # type: ignore[no-untyped-def]
    world: World = await world_factory()
    reports = await Inbox.open(world.bus.nc, world.bus.subjects.migration_report_all, MigrationReport)
    await world.start_worker("spot-0", "node-spot", "h100_8x", "spot")
    await world.admit(256, "r", random.Random(1))
    await world.start_worker("od-0", "node-od-0", "h100_8x", "ondemand")
    await world.start_worker("od-1", "node-od-1", "h100_8x", "ondemand")
    await world.known_to_agent("node-spot", "node-od-0", "node-od-1")

    deadline = await world.notice("node-spot", in_s=120)
    report = await reports.next(timeout_s=30)
    summary = await world.all_served()

    assert summary["lost"] == 0
    assert summary["completed"] == 256
    assert report.lost == 0
    assert report.requests == 256  # all still in flight when the notice came
    c = report.counts
    assert c.finished_in_place + c.kv_moved + c.reprefilled + c.requeued == 256
    assert c.finished_in_place > 0  # a two-minute notice lets most of them end where they are
    assert report.completed_at <= deadline
    assert world.workers["spot-0"].lost == 0


async def test_a_30_s_notice_with_a_slow_link_mixes_reprefill_and_requeue_and_loses_nothing(
    world_factory,
) -> None:  # type: ignore[no-untyped-def]
    world: World = await world_factory(cross_node_gbytes_per_s=0.5)
    reports = await Inbox.open(world.bus.nc, world.bus.subjects.migration_report_all, MigrationReport)
    await world.start_worker("spot-0", "node-spot", "h100_8x", "spot")
    await world.admit(200, "r", random.Random(2))
    # One smaller survivor: not enough free slots for everything that cannot finish in 25 s.
    await world.start_worker("od-0", "node-od-0", "a100_8x", "ondemand")
    await world.known_to_agent("node-spot", "node-od-0")

    await world.notice("node-spot", in_s=30)
    report = await reports.next(timeout_s=30)
    summary = await world.all_served(timeout_s=90)

    assert summary["lost"] == 0
    assert summary["completed"] == 200
    assert report.counts.reprefilled > 0
    assert report.counts.requeued > 0
    assert report.lost == 0


async def test_a_fifth_of_the_spot_fleet_reclaimed_at_once_loses_nothing(world_factory) -> None:  # type: ignore[no-untyped-def]
    world: World = await world_factory()
    reports = await Inbox.open(world.bus.nc, world.bus.subjects.migration_report_all, MigrationReport)
    rng = random.Random(3)
    for n in range(5):
        await world.start_worker(f"spot-{n}", f"node-spot-{n}", "a100_8x", "spot")
    await world.admit(200, "r", rng)
    await world.start_worker("od-0", "node-od-0", "h100_8x", "ondemand")
    await world.known_to_agent(*(f"node-spot-{n}" for n in range(5)), "node-od-0")

    await world.notice("node-spot-0", in_s=30)
    first = await reports.next(timeout_s=30)
    summary = await world.all_served(timeout_s=90)

    assert summary["lost"] == 0
    assert summary["completed"] == 200
    assert first.lost == 0


async def test_a_target_that_dies_mid_migration_is_replaced_and_nothing_is_lost(world_factory) -> None:  # type: ignore[no-untyped-def]
    world: World = await world_factory(cross_node_gbytes_per_s=25.0)
    reports = await Inbox.open(world.bus.nc, world.bus.subjects.migration_report_all, MigrationReport)
    await world.start_worker("spot-0", "node-spot", "h100_8x", "spot")
    await world.admit(160, "r", random.Random(4))
    doomed = await world.start_worker("od-0", "node-od-0", "h100_8x", "ondemand")
    await world.start_worker("od-1", "node-od-1", "h100_8x", "ondemand")
    await world.known_to_agent("node-spot", "node-od-0", "node-od-1")

    await world.notice("node-spot", in_s=30)
    # The first target crashes silently as soon as it has taken some of the migrated requests.
    await eventually(lambda: doomed.started > 0, timeout_s=10)
    doomed.kill_now()
    reports_seen = [await reports.next(timeout_s=30)]
    summary = await world.all_served(timeout_s=90)

    assert summary["lost"] == 0
    assert summary["completed"] == 160
    assert all(r.lost == 0 for r in reports_seen)


async def test_a_worker_killed_without_notice_has_its_requests_requeued_and_served(world_factory) -> None:  # type: ignore[no-untyped-def]
    world: World = await world_factory()
    reports = await Inbox.open(world.bus.nc, world.bus.subjects.migration_report_all, MigrationReport)
    victim = await world.start_worker("spot-0", "node-spot", "h100_8x", "spot")
    await world.admit(100, "r", random.Random(5))
    await world.start_worker("od-0", "node-od-0", "h100_8x", "ondemand")
    await world.known_to_agent("node-spot", "node-od-0")

    victim.kill_now()
    report = await reports.next(timeout_s=30)  # declared lost after three missed reports
    summary = await world.all_served(timeout_s=90)

    assert report.reason == "lost"
    assert report.counts.requeued > 0
    assert summary["lost"] == 0
    assert summary["completed"] == 100
    assert summary["requeued"] >= report.counts.requeued
