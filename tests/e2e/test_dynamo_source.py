"""The DynamoSource actor against NVIDIA Dynamo 1.6.1's own frontend and mocker workers (real processes,
``agent/sim/dynamo_local.py``) and the session's real nats-server: the demand that arrives at a frontend
reaches the agent's DemandBins, a frontend that is down stops nothing, and the workers' forward-pass
metrics on Dynamo's event plane fill the worker registry.

One deployment (a frontend, two fast mockers) is shared by the module; each test runs its own actor, on a
Bus of its own, on the real clock. Every wait is on a condition with a timeout.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import msgspec
import nats
import pytest
import pytest_asyncio
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from waits import eventually as wait_until

from agent.actors.dynamo_source import EVENT_TAG, DynamoSource, bins_key
from agent.bus import Bus
from agent.config import DynamoSettings, Settings, resolve_catalog
from agent.core.demand_bins import DemandBins
from agent.providers.dynamo.event_plane import DynamoEvent, EventEnvelope
from agent.providers.dynamo.frontend_metrics import FrontendDemand
from agent.providers.httpclient import HttpClient
from agent.runtime.clock import RealClock
from agent.runtime.metrics import AgentMetrics
from agent.runtime.nats_server import NatsServer
from agent.service import build_agent
from agent.sim.dynamo_local import (
    COMPONENT,
    ENDPOINT,
    LocalDynamo,
    chat_request,
    prompt_tokens,
    stream_chat,
)
from agent.subjects import Subjects

pytestmark = pytest.mark.asyncio(loop_scope="module")

WAIT_S = 30.0
FAST = 10.0  # the mockers' speedup: a short request is served in milliseconds
SCRAPE_S = 0.5  # the shortest scrape interval the settings allow
USER_WORDS, MAX_TOKENS = 3, 5


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dynamo(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, tiny_model_dir: Path
) -> AsyncIterator[LocalDynamo]:
    workdir = tmp_path_factory.mktemp("dynamo-source")
    deployment = LocalDynamo(
        workdir, nats_url=nats_url, model_dir=tiny_model_dir, namespace=f"t{uuid.uuid4().hex[:10]}"
    )
    print(f"Dynamo logs: {workdir}")  # shown with a failing test's output
    with deployment:
        deployment.start_frontend()
        for _ in range(2):
            deployment.start_worker(speedup_ratio=FAST)
        async with HttpClient() as http:
            await deployment.wait_ready(http, timeout_s=WAIT_S)
        yield deployment


@pytest_asyncio.fixture(loop_scope="module")
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest_asyncio.fixture(loop_scope="module")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


class RecordingSource(DynamoSource):
    """The real actor, keeping every interval's demand (the actor itself keeps only the latest)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.intervals: list[tuple[float, FrontendDemand]] = []  # (end of the interval, its demand)

    async def on_timer(self) -> None:
        await super().on_timer()
        if self.latest is not None and self.latest.frontends:
            self.intervals.append((self.clock.now(), self.latest))

    def arrivals(self) -> float:
        """Every arrival counted so far, over all intervals."""
        return sum(d.arrivals_per_second * d.interval_seconds for _, d in self.intervals)


@asynccontextmanager
async def running_source(
    nc: NATS, dynamo: LocalDynamo, frontend_urls: list[str]
) -> AsyncIterator[tuple[RecordingSource, Bus, DemandBins]]:
    clock = RealClock()
    bus = Bus(nc, Subjects(f"t{uuid.uuid4().hex[:10]}"), source="test", clock=clock, metrics=AgentMetrics())
    settings = DynamoSettings(
        frontend_urls=frontend_urls,
        namespace=dynamo.namespace,
        component=COMPONENT,
        endpoint=ENDPOINT,
        scrape_interval_seconds=SCRAPE_S,
    )
    bins = DemandBins(bin_seconds=60.0, close_delay_s=0.0, stale_after_s=60.0)  # as the profiler's
    source = RecordingSource(bus, clock, settings, bins)
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))
    try:
        async with asyncio.timeout(WAIT_S):
            await source.ready.wait()
        yield source, bus, bins
        assert not task.done(), "the actor stopped on its own"
    finally:
        stop.set()
        async with asyncio.timeout(WAIT_S):
            await task


async def eventually(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    await wait_until(condition, what, timeout_s)


def sample(bus: Bus, name: str, **labels: str) -> float:
    return bus.metrics.registry.get_sample_value(name, labels) or 0.0


async def steady_load(
    session: aiohttp.ClientSession, url: str, rate: float, count: int
) -> tuple[float, float]:
    """``count`` streaming chats sent at ``rate`` a second, each on its own schedule (not after the
    previous one ends); all awaited. Returns the wall-clock times of the first and last sends."""
    loop = asyncio.get_running_loop()
    clock = RealClock()
    start = loop.time()
    sends: list[asyncio.Task[object]] = []
    first = last = 0.0
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))  # the load's pace, not a readiness wait
        last = clock.now()
        first = first or last
        request = chat_request(USER_WORDS, MAX_TOKENS, first_word=i)
        sends.append(asyncio.create_task(stream_chat(session, url, request, timeout_s=WAIT_S)))
    results = await asyncio.gather(*sends)
    assert all(r.ok for r in results), results  # type: ignore[attr-defined]
    return first, last


RATE, REQUESTS = 4.0, 26  # 4 requests a second for 6.5 s


async def test_a_steady_load_at_the_frontend_is_the_demand_in_the_profilers_bins(
    nc: NATS, dynamo: LocalDynamo, session: aiohttp.ClientSession
) -> None:
    async with running_source(nc, dynamo, [dynamo.frontend_url]) as (source, bus, bins):
        await eventually(lambda: dynamo.frontend_url in source.previous, "a first scrape")
        first, last = await steady_load(session, dynamo.frontend_url, RATE, REQUESTS)
        await eventually(lambda: round(source.arrivals()) >= REQUESTS, "every arrival counted")
        now = source.clock.now()
        current, entries = bins.current(now), bins.workers
        closed = bins.close_due(now + 3600.0)  # every bin, closed now

    # The rate over the intervals wholly inside the load (each of 0.5 s holds 2 ± 1 arrivals: a single
    # one is too coarse to judge; together they span about 6 s).
    inside = [(end, d) for end, d in source.intervals if end - d.interval_seconds >= first and end <= last]
    seconds = sum(d.interval_seconds for _, d in inside)
    arrivals = sum(d.arrivals_per_second * d.interval_seconds for _, d in inside)
    print(
        f"{arrivals:g} arrivals in {seconds:.2f} s over {len(inside)} intervals: {arrivals / seconds:.2f}/s"
    )
    assert seconds >= 4.0
    assert arrivals / seconds == pytest.approx(RATE, rel=0.10)
    assert round(source.arrivals()) == REQUESTS  # nothing counted twice, nothing lost
    assert source.latest is not None
    assert source.latest.rejected == ()

    # The same demand, in the DemandBins the profiler and the optimizer read, as the frontend's entry.
    assert entries == 1
    assert current is not None
    assert {c.workers for c in closed} == {1}
    assert sum(c.requests for c in closed) == REQUESTS
    assert sum(c.prompt_tokens for c in closed) == REQUESTS * prompt_tokens(USER_WORDS)
    assert sum(c.output_tokens for c in closed) == REQUESTS * MAX_TOKENS
    assert bins_key(dynamo.frontend_url) == f"frontend:{dynamo.frontend_url}"
    assert sample(bus, "costagent_dynamo_frontend_scrape_failures_total", frontend=dynamo.frontend_url) == 0


def nothing_listening() -> str:
    """A URL whose port the OS just gave out and took back: nothing listens there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_a_frontend_that_is_down_is_counted_and_logged_once_and_the_other_still_counts(
    nc: NATS, dynamo: LocalDynamo, session: aiohttp.ClientSession
) -> None:
    dead = nothing_listening()
    with structlog.testing.capture_logs() as logs:
        async with running_source(nc, dynamo, [dead, dynamo.frontend_url]) as (source, bus, bins):
            await eventually(lambda: dynamo.frontend_url in source.previous, "a first scrape")
            await steady_load(session, dynamo.frontend_url, RATE, 6)
            await eventually(lambda: round(source.arrivals()) >= 6, "the live frontend's arrivals")
            failures = sample(bus, "costagent_dynamo_frontend_scrape_failures_total", frontend=dead)

    assert round(source.arrivals()) == 6
    assert source.latest is not None
    assert source.latest.frontends == 1
    assert source.down == {dead}
    assert dead not in source.previous
    assert failures >= 3
    assert bins.workers == 1  # the live frontend's entry only
    outages = [e for e in logs if e["event"] == "dynamo_frontend_unavailable"]
    assert [e["frontend"] for e in outages] == [dead]  # once per outage, not once per scrape
    print(f"{failures:g} failed scrapes of {dead}, one log line: {outages[0]['error']}")


async def test_forward_pass_metrics_of_the_real_workers_fill_the_registry_and_garbage_changes_nothing(
    nc: NATS, dynamo: LocalDynamo, session: aiohttp.ClientSession
) -> None:
    worker_ids = {w.worker_id for w in dynamo.workers}
    async with running_source(nc, dynamo, [dynamo.frontend_url]) as (source, bus, _bins):
        # Idle workers send a heartbeat about once a second; a request makes them send more.
        await steady_load(session, dynamo.frontend_url, RATE, 4)
        await eventually(
            lambda: {w for w, _ in source.workers.snapshot()} == worker_ids, "both workers in the registry"
        )
        await eventually(lambda: sample(bus, "costagent_dynamo_live_workers") == 2, "the live-workers gauge")
        before = set(source.workers.snapshot())

        subject = source.subjects.forward_pass_metrics
        not_msgpack = b"\xc1 not msgpack"
        bad_payload = msgspec.msgpack.encode(
            EventEnvelope(
                1, 0, 1_764_790_000_000, "forward-pass-metrics", msgspec.msgpack.encode({"worker_id": "x"})
            )
        )
        for garbage in (not_msgpack, bad_payload):
            await nc.publish(subject, garbage)
        labels = {"actor": "dynamo_source", "subject": subject, "type": EVENT_TAG, "reason": "malformed"}
        await eventually(
            lambda: sample(bus, "costagent_messages_rejected_total", **labels) == 2, "both messages rejected"
        )
        assert set(source.workers.snapshot()) == before  # no worker made up, the actor still running
        assert len(before) == 2


async def test_the_agent_runs_a_dynamo_source_on_the_profilers_bins_only_when_frontends_are_configured(
    nc: NATS, dynamo: LocalDynamo
) -> None:
    plain = build_agent(nc, Settings(), resolve_catalog("seed"), RealClock())
    assert plain.dynamo_source is None
    assert "dynamo_source" not in [a.name for a in plain.actors]

    configured = Settings(dynamo=DynamoSettings(frontend_urls=[dynamo.frontend_url]))
    agent = build_agent(nc, configured, resolve_catalog("seed"), RealClock())
    assert agent.dynamo_source is not None
    assert agent.dynamo_source in agent.actors
    assert agent.dynamo_source.bins is agent.profiler.bins  # one demand, read by the optimizer


async def test_dynamos_event_plane_on_a_nats_of_its_own_is_read_on_a_second_connection(
    dynamo: LocalDynamo, nats_url: str
) -> None:
    """Dynamo's platform runs its own NATS; the agent's bus is another server (with our accounts). With
    ``[dynamo] nats_url`` the source reads the workers' ForwardPassMetrics there, and closes that
    connection when it stops."""
    with NatsServer() as ours:
        agent_nc = await nats.connect(ours.url)
        clock = RealClock()
        bus = Bus(
            agent_nc,
            Subjects(f"t{uuid.uuid4().hex[:10]}"),
            source="test",
            clock=clock,
            metrics=AgentMetrics(),
        )
        settings = DynamoSettings(
            frontend_urls=[dynamo.frontend_url],
            namespace=dynamo.namespace,
            component=COMPONENT,
            endpoint=ENDPOINT,
            scrape_interval_seconds=SCRAPE_S,
            nats_url=nats_url,  # Dynamo's, where the fixture's frontend and workers run
        )
        source = DynamoSource(bus, clock, settings, DemandBins(60.0, 0.0, 60.0))
        stop = asyncio.Event()
        task = asyncio.create_task(source.run(stop))
        try:
            worker_ids = {w.worker_id for w in dynamo.workers}
            await eventually(  # the idle workers' heartbeats, about one a second each
                lambda: {w for w, _ in source.workers.snapshot()} == worker_ids, "both workers heard"
            )
            event_nc = source.listen_bus().nc
            assert event_nc is not agent_nc
            assert event_nc.connected_url is not None
            assert event_nc.connected_url.port == int(nats_url.rsplit(":", 1)[1])
        finally:
            stop.set()
            async with asyncio.timeout(WAIT_S):
                await task
            await agent_nc.close()
        assert event_nc.is_closed


class BrokenSource(DynamoSource):
    async def on_event(self, event: DynamoEvent, raw: Msg) -> None:
        raise RuntimeError("a bug in the handler")


async def test_a_bug_in_the_event_handler_ends_the_run_for_the_supervisor_and_leaves_no_subscription(
    nc: NATS, dynamo: LocalDynamo
) -> None:
    clock = RealClock()
    bus = Bus(nc, Subjects(f"t{uuid.uuid4().hex[:10]}"), source="test", clock=clock, metrics=AgentMetrics())
    settings = DynamoSettings(
        frontend_urls=[dynamo.frontend_url],
        namespace=dynamo.namespace,
        component=COMPONENT,
        endpoint=ENDPOINT,
    )
    subscriptions = len(nc._subs)  # nats-py has no public count
    source = BrokenSource(bus, clock, settings, DemandBins(60.0, 0.0, 60.0))
    # The idle workers' heartbeats (about one a second each) reach the handler.
    with pytest.raises(RuntimeError, match="a bug in the handler"):
        async with asyncio.timeout(WAIT_S):
            await source.run(asyncio.Event())
    assert not source.ready.is_set()
    assert len(nc._subs) == subscriptions
