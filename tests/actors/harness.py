"""Helpers for tests against a real nats-server: an agent on a fake clock, inboxes, waiting on conditions."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from agent.bus import settle
from agent.config import BusSettings, Settings, SupervisorSettings, resolve_catalog
from agent.runtime.clock import FakeClock
from agent.service import Agent, build_agent
from agent.subjects import Subjects
from schemas import Message, envelope

T = TypeVar("T", bound=Message)

SEED = resolve_catalog("seed")
START = 1_767_225_600.0  # 2026-01-01 00:00 UTC, a bin boundary


def fresh_namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait until ``condition()`` holds (checked as the event loop runs), or fail after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        # A poll, not a wait for behaviour: the conditions are counters and states with no event to
        # await; each pass lets the loop run, and the deadline above bounds the wait.
        await asyncio.sleep(0.002)


def counter(agent: Agent, name: str, **labels: str) -> float:
    value = agent.bus.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class Inbox(Generic[T]):
    """Everything published on a subject, decoded as ``kind``, in arrival order."""

    def __init__(self, sub: Subscription, kind: type[T]) -> None:
        self._sub = sub
        self._decoder = msgspec.json.Decoder(kind)

    @classmethod
    async def open(cls, nc: NATS, subject: str, kind: type[T]) -> Inbox[T]:
        sub = await nc.subscribe(subject)
        await settle(nc)
        return cls(sub, kind)

    async def next(self, timeout_s: float = 5.0) -> T:
        msg = await self._sub.next_msg(timeout=timeout_s)
        decoded: T = self._decoder.decode(msg.data)
        return decoded

    @property
    def pending(self) -> int:
        """Messages received and not read yet (flush the publisher, then this connection, to count all)."""
        return self._sub.pending_msgs

    async def take_pending(self) -> list[T]:
        """Every message received and not read yet, in order."""
        return [await self.next() for _ in range(self.pending)]

    async def close(self) -> None:
        """Unsubscribe, dropping what was not read (a drain would wait for it to be read)."""
        await self._sub.unsubscribe()


class Peer:
    """A test's own connection, publishing typed messages as a worker, actuator or operator would."""

    def __init__(self, nc: NATS, subjects: Subjects, clock: FakeClock) -> None:
        self.nc = nc
        self.subjects = subjects
        self.clock = clock

    def env(self, source: str = "test", **kw: Any) -> Any:
        return envelope(source, sent_at=self.clock.now(), **kw)

    async def send(self, subject: str, message: Message) -> None:
        await self.nc.publish(subject, msgspec.json.encode(message))
        await settle(self.nc)

    async def send_raw(self, subject: str, data: bytes) -> None:
        await self.nc.publish(subject, data)
        await settle(self.nc)


async def start_agent(
    nats_url: str,
    settings: Settings | None = None,
    clock: FakeClock | None = None,
    *,
    peer_url: str | None = None,
) -> tuple[Agent, Peer]:
    """An agent on ``nats_url`` and a peer (the test's workers, feeds, actuators) on ``peer_url``, the same
    server by default."""
    ns = fresh_namespace()
    base = settings or Settings()
    settings = msgspec.structs.replace(base, bus=BusSettings(namespace=ns))
    if settings.supervisor == SupervisorSettings():
        # A drain still running at stop (these tests have no router to finish one) gets most of the grace
        # before it is reported interrupted: 1 s instead of the production 4 s keeps the suite short.
        quick = SupervisorSettings(shutdown_grace_seconds=1.0)
        settings = msgspec.structs.replace(settings, supervisor=quick)
    clock = clock or FakeClock(START)
    agent_nc = await nats.connect(nats_url)
    agent = build_agent(agent_nc, settings, resolve_catalog(settings.catalog), clock)
    await agent.start()
    peer_nc = await nats.connect(peer_url or nats_url)
    return agent, Peer(peer_nc, agent.bus.subjects, clock)


async def stop_agent(agent: Agent, peer: Peer) -> None:
    await agent.stop()
    # Close, not drain: a test's inboxes may hold messages it did not read, and draining would wait on them.
    await peer.nc.close()


TYPES = {
    "evt.worker.metrics.*": "worker.metrics.v1",
    "evt.fleet.instance.*": "fleet.instance.v1",
    "evt.spot.price.*": "spot.price.v1",
    "cmd.plan.tick": "plan.replan.v1",
    "evt.spot.notice.*": "spot.notice.v1",
    "evt.spot.drain.*": "spot.drain.v1",
    "req.cost.report": "cost.report_request.v1",
    "evt.plan.allocation": "plan.allocation.v1",
}


async def handled(agent: Agent, actor: str, subject: str, n: int) -> None:
    """Wait until ``actor`` has handled ``n`` messages from the subscription ``subject`` (no namespace)."""
    labels = {"actor": actor, "subject": subject, "type": TYPES[subject]}
    await eventually(lambda: counter(agent, "costagent_messages_handled_total", **labels) >= n)


async def rejected(agent: Agent, actor: str, subject: str, reason: str, n: int) -> None:
    labels = {"actor": actor, "subject": subject, "type": TYPES[subject], "reason": reason}
    await eventually(lambda: counter(agent, "costagent_messages_rejected_total", **labels) >= n)
