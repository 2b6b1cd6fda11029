"""The leader lease on a real nats-server with JetStream (agent/runtime/leadership.py), with the shortest
lease the settings allow (3 s): of replicas campaigning together exactly one leads; garbage written into
the lease expires like any lease; a term that ends by itself hands the lease over and its replica exits 1.

What leads here is a recorded term (when it started, when it was told to stop and by when); the agent
itself as the term, in real processes, is tests/e2e/test_leader.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import nats
import pytest
from harness import eventually, fresh_namespace
from nats.aio.client import Client as NATS

from agent.core.lease import LEASE_KEY, LeaseTiming, lease_bucket
from agent.runtime.leadership import KvLease, Leadership, Term
from agent.runtime.metrics import AgentMetrics

TIMING = LeaseTiming(3.0)


@dataclass
class RecordedTerm:
    silenced: Callable[[], bool]
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    failed: bool = False
    stopped_by: float | None = None

    async def stop(self, silent_by: float) -> None:
        self.stopped_by = silent_by

    def health(self) -> dict[str, object]:
        return {"status": "ok"}


@dataclass
class Candidate:
    """One replica's leadership on its own connection, and every term it has run."""

    nc: NATS
    leadership: Leadership
    terms: list[RecordedTerm]
    stop: asyncio.Event
    running: asyncio.Task[int]


async def candidate(url: str, ns: str, name: str) -> Candidate:
    nc = await nats.connect(url)
    lease = await KvLease.open(nc, lease_bucket(ns), name, TIMING.poll_s)
    terms: list[RecordedTerm] = []

    async def start_term(silenced: Callable[[], bool]) -> Term:
        terms.append(RecordedTerm(silenced))
        return terms[-1]

    leadership = Leadership(lease, nc, TIMING, start_term, AgentMetrics())
    stop = asyncio.Event()
    return Candidate(nc, leadership, terms, stop, asyncio.ensure_future(leadership.run(stop)))


@pytest.fixture
async def candidates(nats_url: str) -> AsyncIterator[tuple[str, list[Candidate]]]:
    ns = fresh_namespace()
    started: list[Candidate] = []
    try:
        yield ns, started
    finally:
        for c in started:
            c.stop.set()
        for c in started:
            await asyncio.wait({c.running}, timeout=10)
            await c.nc.close()


def leaders(started: list[Candidate]) -> list[Candidate]:
    return [c for c in started if c.leadership.term is not None]


async def test_of_replicas_campaigning_together_exactly_one_leads(
    nats_url: str, candidates: tuple[str, list[Candidate]]
) -> None:
    ns, started = candidates
    started += await asyncio.gather(*(candidate(nats_url, ns, f"r{i}") for i in range(3)))
    await eventually(lambda: len(leaders(started)) == 1, 10)
    (leader,) = leaders(started)
    # Over a whole lease and more (renewals, followers' looks), still one, the same, and never silenced.
    deadline = time.monotonic() + 1.5 * TIMING.lease_s
    while time.monotonic() < deadline:
        assert leaders(started) == [leader]
        assert not leader.terms[-1].silenced()
        await asyncio.sleep(TIMING.poll_s)  # a poll: the condition is a state held over time
    assert sum(len(c.terms) for c in started) == 1
    assert [c.leadership.health()["status"] for c in started if c is not leader] == ["follower"] * 2


async def test_garbage_in_the_lease_expires_like_any_lease(
    nats_url: str, candidates: tuple[str, list[Candidate]]
) -> None:
    ns, started = candidates
    writer = await nats.connect(nats_url)
    try:
        kv = await writer.jetstream().create_key_value(bucket=lease_bucket(ns))
        await kv.put(LEASE_KEY, b"\xff\x00 not a replica")
        began = time.monotonic()
        started.append(await candidate(nats_url, ns, "r0"))
        await eventually(lambda: bool(leaders(started)), 3 * TIMING.lease_s)
        assert time.monotonic() - began >= TIMING.lease_s
        assert (await kv.get(LEASE_KEY)).value == b"r0"
    finally:
        await writer.close()


async def test_a_term_that_ends_by_itself_hands_the_lease_over_and_its_replica_exits_1(
    nats_url: str, candidates: tuple[str, list[Candidate]]
) -> None:
    ns, started = candidates
    first = await candidate(nats_url, ns, "first")
    started.append(first)
    await eventually(lambda: bool(first.terms), 10)
    started.append(await candidate(nats_url, ns, "second"))
    term = first.terms[0]
    term.failed = True  # an actor past its restart budget
    term.ended.set()
    assert await asyncio.wait_for(first.running, timeout=10) == 1
    assert term.stopped_by is not None
    assert term.silenced()  # no longer leading: nothing it sends goes out
    # Released, not left to expire: the second creates a fresh lease at its next look.
    began = time.monotonic()
    await eventually(lambda: bool(started[1].terms), 10)
    assert time.monotonic() - began < TIMING.lease_s
