"""The runtime on a real nats-server: typed bus, timers on a fake clock, the supervisor, drain-first stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import nats
import pytest
import structlog
from harness import START, eventually, fresh_namespace
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from agent.bus import Bus, Rejected, settle
from agent.runtime.actor import Actor, Listen
from agent.runtime.clock import FakeClock, ScaledClock
from agent.runtime.metrics import AgentMetrics
from agent.runtime.supervisor import RestartPolicy, Supervisor
from agent.subjects import Subjects
from schemas import ErrorReply, ReplanRequest, envelope

FAST = RestartPolicy(max_restarts=2, window_s=60, backoff_initial_s=0.0, backoff_max_s=0.0)


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    nc = await nats.connect(nats_url)
    yield Bus(nc, Subjects(fresh_namespace()), source="test", clock=FakeClock(START), metrics=AgentMetrics())
    await nc.drain()


class Recorder(Actor):
    """Records replan requests; crashes on a request whose note is 'crash', refuses one noted 'refuse'."""

    name = "recorder"

    def __init__(self, bus: Bus, clock: FakeClock, interval_s: float | None = None) -> None:
        super().__init__(bus, clock, interval_s=interval_s)
        self.seen: list[str] = []
        self.starts = 0
        self.timer_times: list[float] = []

    def subscriptions(self) -> Sequence[Listen]:
        return [Listen(self.bus.subjects.plan_tick, ReplanRequest, self.on_request)]

    async def on_start(self) -> None:
        self.starts += 1

    async def on_request(self, request: ReplanRequest, raw: Msg) -> None:
        if request.note == "crash":
            raise RuntimeError("boom")
        if request.note == "refuse":
            raise Rejected("note: 'refuse' is not accepted here")
        self.seen.append(request.note)

    async def on_timer(self) -> None:
        self.timer_times.append(self.clock.now())


async def send(nc: NATS, subject: str, note: str) -> None:
    await nc.publish(
        subject,
        b'{"type":"plan.replan.v1","msg_id":"m","sent_at":1767225600,"source":"t","note":"%s"}'
        % note.encode(),
    )
    await settle(nc)


def sample(bus: Bus, name: str, **labels: str) -> float:
    return bus.metrics.registry.get_sample_value(name, labels) or 0.0


async def run_until_ready(actor: Actor, supervisor: Supervisor) -> asyncio.Task[None]:
    task = asyncio.ensure_future(supervisor.run())
    await eventually(actor.ready.is_set)
    return task


async def test_a_malformed_message_is_counted_logged_once_and_the_actor_goes_on(bus: Bus) -> None:
    stop = asyncio.Event()
    actor = Recorder(bus, FakeClock(START))
    task = await run_until_ready(actor, Supervisor([actor], stop, bus.metrics, FAST))
    subject = bus.subjects.plan_tick
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            await bus.nc.publish(subject, b"{not json")
        await bus.nc.publish(
            subject, b'{"type":"plan.replan.v1","msg_id":"","sent_at":1767225600,"source":"t"}'
        )
        await send(bus.nc, subject, "hello")
        await eventually(lambda: actor.seen == ["hello"])
    labels = {"actor": "recorder", "subject": "cmd.plan.tick", "type": "plan.replan.v1"}
    assert sample(bus, "costagent_messages_rejected_total", **labels, reason="malformed") == 4
    bad = [e for e in logs if e["event"] == "bad_message"]
    assert len(bad) == 2  # one per kind: not JSON, and an empty msg_id
    assert "msg_id" in bad[1]["error"]
    stop.set()
    await task


async def test_a_refused_request_gets_an_error_reply_at_once(bus: Bus) -> None:
    stop = asyncio.Event()
    actor = Recorder(bus, FakeClock(START))
    task = await run_until_ready(actor, Supervisor([actor], stop, bus.metrics, FAST))
    request = ReplanRequest(**envelope("t"), note="refuse")
    reply = await bus.request(bus.subjects.plan_tick, request, ReplanRequest)
    assert isinstance(reply, ErrorReply)
    assert "note" in reply.error
    assert reply.correlation_id == request.msg_id
    stop.set()
    await task


async def test_a_crashed_actor_is_restarted_and_handles_the_next_message(bus: Bus) -> None:
    stop = asyncio.Event()
    actor = Recorder(bus, FakeClock(START))
    supervisor = Supervisor([actor], stop, bus.metrics, FAST)
    task = await run_until_ready(actor, supervisor)
    with structlog.testing.capture_logs() as logs:
        await send(bus.nc, bus.subjects.plan_tick, "crash")
        await eventually(lambda: actor.starts == 2 and actor.ready.is_set())
    await send(bus.nc, bus.subjects.plan_tick, "after")
    await eventually(lambda: actor.seen == ["after"])
    assert sample(bus, "costagent_actor_restarts_total", actor="recorder") == 1
    crashes = [e for e in logs if e["event"] == "actor_crashed"]
    assert len(crashes) == 1
    assert crashes[0]["exc_info"] is True
    assert supervisor.failed is None
    stop.set()
    await task


async def test_an_actor_crashing_past_its_budget_stops_the_agent(bus: Bus) -> None:
    stop = asyncio.Event()
    actor = Recorder(bus, FakeClock(START))
    supervisor = Supervisor([actor], stop, bus.metrics, FAST)
    task = await run_until_ready(actor, supervisor)
    for _ in range(FAST.max_restarts + 1):
        starts = actor.starts
        await send(bus.nc, bus.subjects.plan_tick, "crash")
        await eventually(lambda s=starts: actor.starts > s or stop.is_set())  # type: ignore[misc]
        if not stop.is_set():
            await eventually(actor.ready.is_set)
    await task
    assert stop.is_set()
    assert supervisor.failed == "recorder"


async def test_a_timer_keeps_a_drift_free_schedule_and_skips_missed_ticks(bus: Bus) -> None:
    clock = FakeClock(START)
    stop = asyncio.Event()
    actor = Recorder(bus, clock, interval_s=10.0)
    task = await run_until_ready(actor, Supervisor([actor], stop, bus.metrics, FAST))
    clock.advance(10)
    await eventually(lambda: len(actor.timer_times) == 1)
    clock.advance(35)  # three deadlines passed while "busy": one tick now, then back on the grid
    await eventually(lambda: len(actor.timer_times) == 2)
    clock.advance(5)
    await eventually(lambda: len(actor.timer_times) == 3)
    assert actor.timer_times == [START + 10, START + 45, START + 50]
    stop.set()
    await task  # a stop wakes the timer at once, with no deadline reached


class SlowTick(Recorder):
    """Its first tick runs until ``release`` is set: a long solve, a save on a slow store."""

    def __init__(self, bus: Bus, clock: FakeClock, interval_s: float) -> None:
        super().__init__(bus, clock, interval_s)
        self.in_first = asyncio.Event()
        self.release = asyncio.Event()

    async def on_timer(self) -> None:
        await super().on_timer()
        if len(self.timer_times) == 1:
            self.in_first.set()
            await self.release.wait()


async def test_a_deadline_that_comes_due_while_a_tick_runs_is_run_at_once_after_it(bus: Bus) -> None:
    clock = FakeClock(START)
    stop = asyncio.Event()
    actor = SlowTick(bus, clock, interval_s=10.0)
    task = await run_until_ready(actor, Supervisor([actor], stop, bus.metrics, FAST))
    clock.advance(10)
    await eventually(actor.in_first.is_set)
    clock.advance(60)  # the clock moves on while the first tick runs
    actor.release.set()
    await eventually(lambda: len(actor.timer_times) == 2)  # not an interval later: now
    assert actor.timer_times == [START + 10, START + 70]
    clock.advance(10)
    await eventually(lambda: len(actor.timer_times) == 3)
    assert actor.timer_times[2] == START + 80
    stop.set()
    await task


async def test_stopping_drains_the_connection_and_ends_every_actor(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    bus = Bus(nc, Subjects(fresh_namespace()), source="t", clock=FakeClock(START), metrics=AgentMetrics())
    stop = asyncio.Event()
    actors = [Recorder(bus, FakeClock(START), interval_s=300.0), Recorder(bus, FakeClock(START))]
    supervisor = Supervisor(actors, stop, bus.metrics, FAST)
    task = asyncio.ensure_future(supervisor.run())
    await eventually(lambda: all(a.ready.is_set() for a in actors))
    for k in range(50):
        await nc.publish(
            bus.subjects.plan_tick,
            b'{"type":"plan.replan.v1","msg_id":"m","sent_at":1767225600,"source":"t","note":"%d"}' % k,
        )
    stop.set()
    await nc.drain()  # every message already received is handled before the connection closes
    await task
    assert nc.is_closed
    assert all(len(a.seen) == 50 for a in actors)
    assert supervisor.failed is None


async def test_a_scaled_clock_runs_faster_and_a_stop_wakes_its_waiters() -> None:
    clock = ScaledClock(speed=1000.0, start=START)
    stop = asyncio.Event()
    assert await clock.wait_until(clock.now() + 5, stop) is False  # 5 s of clock time: 5 ms of ours
    assert clock.now() >= START + 5
    stop.set()
    assert await clock.wait_until(clock.now() + 3600, stop) is True


async def test_invalid_utf8_inside_a_string_is_malformed_and_a_request_still_gets_a_reply(bus: Bus) -> None:
    stop = asyncio.Event()
    actor = Recorder(bus, FakeClock(START))
    task = await run_until_ready(actor, Supervisor([actor], stop, bus.metrics, FAST))
    data = b'{"type":"plan.replan.v1","msg_id":"m","sent_at":1767225600,"source":"t","note":"\xff"}'
    reply = await bus.nc.request(bus.subjects.plan_tick, data, timeout=5)
    error = bus.decoder(ErrorReply).decode(reply.data)
    assert "not UTF-8" in error.error
    labels = {"actor": "recorder", "subject": "cmd.plan.tick", "type": "plan.replan.v1"}
    assert sample(bus, "costagent_messages_rejected_total", **labels, reason="malformed") == 1
    stop.set()
    await task
