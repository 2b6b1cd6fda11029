"""NVIDIA Dynamo 1.6.1's own frontend and mocker workers, unmodified, as the agent will meet them: what a
client sees, what the frontend's ``/metrics`` count, what workers publish on the NATS event plane, and what
happens to streams when a worker is drained (SIGTERM) or dies (SIGKILL).

The processes are real (``agent/sim/dynamo_local.py`` starts them); the NATS server is the session's
(Dynamo's event plane needs no JetStream). One shared deployment (a frontend, two workers) serves the
tests that only send traffic; the lifecycle tests get a deployment of their own, in a namespace of their
own. Every wait is on a condition with a timeout. Each process's log is in the test's temporary directory.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import nats
import pytest
import pytest_asyncio
from nats.aio.msg import Msg

from agent.bus import settle
from agent.providers.httpclient import HttpClient
from agent.sim.dynamo_local import (
    COMPONENT,
    ENDPOINT,
    DynamoError,
    LocalDynamo,
    Worker,
    chat_request,
    metric,
    prompt_tokens,
    stream_chat,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

WAIT_S = 30.0
FAST = 10.0
"""Speedup of the shared deployment's mockers: short requests finish in milliseconds."""


@asynccontextmanager
async def deployment(
    workdir: Path, nats_url: str, model_dir: Path, *, workers: int, speedup: float, migration_limit: int = 3
) -> AsyncIterator[LocalDynamo]:
    """A frontend and ``workers`` mockers in a fresh namespace, ready; every process gone on exit."""
    dynamo = LocalDynamo(
        workdir, nats_url=nats_url, model_dir=model_dir, namespace=f"t{uuid.uuid4().hex[:10]}"
    )
    print(f"Dynamo logs: {workdir}")  # shown with a failing test's output
    try:
        dynamo.start_frontend(migration_limit=migration_limit)
        for _ in range(workers):
            dynamo.start_worker(speedup_ratio=speedup)
        async with HttpClient() as http:
            await dynamo.wait_ready(http, timeout_s=WAIT_S)
        yield dynamo
    finally:
        dynamo.stop()
        assert [p.name for p in dynamo.processes if p.running] == []


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, tiny_model_dir: Path
) -> AsyncIterator[LocalDynamo]:
    workdir = tmp_path_factory.mktemp("dynamo-shared")
    async with deployment(workdir, nats_url, tiny_model_dir, workers=2, speedup=FAST) as dynamo:
        yield dynamo


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[HttpClient]:
    async with HttpClient() as client:
        yield client


@pytest_asyncio.fixture(loop_scope="module")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


# The event plane's messages, decoded as strictly as the agent will: a msgpack envelope whose payload is
# msgpack again. Field names and types as Dynamo 1.6.1 sends them.


class Envelope(msgspec.Struct):
    publisher_id: int
    sequence: int
    published_at: int
    """Milliseconds since the epoch."""
    topic: str
    payload: bytes


class RequestLoad(msgspec.Struct):
    num_prefill_requests: int
    sum_prefill_tokens: int
    num_decode_requests: int
    sum_decode_kv_tokens: int


class ForwardPassMetrics(msgspec.Struct):
    version: int
    worker_id: str
    """A decimal string here, where kv_metrics has an integer."""
    dp_rank: int
    counter_id: int
    wall_time: float
    scheduled_requests: RequestLoad
    queued_requests: RequestLoad


class KvMetrics(msgspec.Struct):
    worker_id: int
    dp_rank: int
    active_decode_blocks: int | None
    active_prefill_tokens: int | None
    kv_used_blocks: int | None


class EventPlane:
    """Every message on one namespace's worker endpoint subjects, in arrival order, awaitable."""

    def __init__(self, namespace: str) -> None:
        self.prefix = f"namespace.{namespace}.component.{COMPONENT}.endpoint.{ENDPOINT}"
        self.messages: list[tuple[str, bytes]] = []
        self._arrived = asyncio.Condition()

    async def on_message(self, msg: Msg) -> None:
        async with self._arrived:
            self.messages.append((msg.subject, msg.data))
            self._arrived.notify_all()

    def of(self, topic: str) -> list[tuple[Envelope, bytes]]:
        found = []
        for subject, data in self.messages:
            if subject == f"{self.prefix}.{topic}":
                envelope = msgspec.msgpack.decode(data, type=Envelope)
                found.append((envelope, envelope.payload))
        return found

    def forward_passes(self) -> list[ForwardPassMetrics]:
        return [
            msgspec.msgpack.decode(p, type=ForwardPassMetrics) for _, p in self.of("forward-pass-metrics")
        ]

    async def wait(self, until: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(WAIT_S), self._arrived:
                await self._arrived.wait_for(until)
        except TimeoutError:
            subjects = sorted({s for s, _ in self.messages})
            raise AssertionError(f"{what}: not on NATS within {WAIT_S:g} s (seen: {subjects})") from None


@asynccontextmanager
async def event_plane(nats_url: str, namespace: str) -> AsyncIterator[EventPlane]:
    plane = EventPlane(namespace)
    nc = await nats.connect(nats_url)
    try:
        await nc.subscribe(f"{plane.prefix}.*", cb=plane.on_message)
        await settle(nc)
        yield plane
    finally:
        await nc.drain()


def stream(session: aiohttp.ClientSession, dynamo: LocalDynamo, request: dict[str, Any]) -> asyncio.Task[Any]:
    return asyncio.ensure_future(stream_chat(session, dynamo.frontend_url, request, timeout_s=90))


def last_input_tokens(text: str, worker: Worker) -> float:
    """The frontend's ``worker_last_input_sequence_tokens`` for one worker: the prompt size of the last
    request it routed there (0 before any)."""
    return metric(text, "dynamo_frontend_worker_last_input_sequence_tokens", worker_id=str(worker.worker_id))


# What a client sees


async def test_a_streamed_chat_completion_reports_its_exact_prompt_and_completion_tokens(
    shared: LocalDynamo, session: aiohttp.ClientSession
) -> None:
    result = await stream_chat(session, shared.frontend_url, chat_request(6, 37), timeout_s=WAIT_S)

    assert result.status == 200, result.error
    assert result.error is None
    assert (result.prompt_tokens, result.completion_tokens) == (prompt_tokens(6), 37)
    assert result.finish_reason == "length"  # EOS ignored: it stops at max_tokens
    assert result.chunks >= 1


# What the frontend counts (the demand signal)

SENT = [(3, 12), (9, 30), (20, 5), (1, 64), (40, 21)]
"""(user words, max tokens) of a burst of requests."""


async def test_the_frontend_counts_each_request_and_the_tokens_it_took_in_and_gave_out(
    shared: LocalDynamo, http: HttpClient, session: aiohttp.ClientSession
) -> None:
    before = await shared.metrics_text(http)

    results = await asyncio.gather(*(stream(session, shared, chat_request(w, n)) for w, n in SENT))

    assert all(r.ok for r in results), results
    ok = {"endpoint": "chat_completions", "request_type": "stream", "status": "success", "model": "tiny"}
    after = await shared.wait_metrics(
        http,
        lambda text: (
            metric(text, "dynamo_frontend_requests_total", **ok)
            == metric(before, "dynamo_frontend_requests_total", **ok) + len(SENT)
        ),
        what=f"{len(SENT)} more successful requests",
    )

    def grew(sample: str) -> float:
        return metric(after, sample) - metric(before, sample)

    assert grew("dynamo_frontend_input_sequence_tokens_count") == len(SENT)
    assert grew("dynamo_frontend_input_sequence_tokens_sum") == sum(prompt_tokens(w) for w, _ in SENT)
    assert grew("dynamo_frontend_output_sequence_tokens_count") == len(SENT)
    assert grew("dynamo_frontend_output_sequence_tokens_sum") == sum(n for _, n in SENT)
    assert sum(r.completion_tokens for r in results) == sum(n for _, n in SENT)
    assert metric(after, "dynamo_frontend_inflight_requests") == 0
    assert metric(after, "dynamo_frontend_requests_total", status="error") == 0


# What workers publish on the event plane


async def test_workers_publish_forward_pass_and_kv_metrics_on_nats_as_msgpack_envelopes(
    shared: LocalDynamo, nats_url: str, session: aiohttp.ClientSession
) -> None:
    worker_ids = {w.worker_id for w in shared.workers}
    sent_at_ms = time.time() * 1000
    async with event_plane(nats_url, shared.namespace) as plane:
        # 70 tokens: more than one 64-token KV block, so the worker stores a block (a kv-events message).
        result = await stream_chat(session, shared.frontend_url, chat_request(19, 47), timeout_s=WAIT_S)
        assert result.ok, result

        await plane.wait(
            lambda: any(
                f.scheduled_requests.sum_prefill_tokens == prompt_tokens(19) for f in plane.forward_passes()
            ),
            "a forward pass that prefilled the request's 23 tokens",
        )
        await plane.wait(lambda: bool(plane.of("kv_metrics")), "kv_metrics")
        await plane.wait(lambda: bool(plane.of("kv-events")), "kv-events")

    for topic in ("forward-pass-metrics", "kv_metrics", "kv-events"):
        for envelope, _ in plane.of(topic):
            assert envelope.topic == topic
            assert sent_at_ms - 5_000 < envelope.published_at < time.time() * 1000 + 5_000
    passes = plane.forward_passes()
    assert {f.version for f in passes} == {1}
    assert {int(f.worker_id) for f in passes} <= worker_ids
    # Every generated token is one scheduler iteration of the worker that served the request: it decoded
    # the request's tokens after its prefill, one at a time.
    assert sum(f.scheduled_requests.num_decode_requests for f in passes) >= 47 - 1
    kv = [msgspec.msgpack.decode(p, type=KvMetrics) for _, p in plane.of("kv_metrics")]
    assert {m.worker_id for m in kv} <= worker_ids
    assert any((m.kv_used_blocks or 0) >= 1 for m in kv)


# Draining a worker (SIGTERM) and losing one (SIGKILL)

LONG = 700
"""Tokens of a long stream: about 4 s at the mocker's real speed, long enough to act on mid-stream."""


async def test_a_worker_given_sigterm_leaves_routing_at_once_and_still_finishes_its_streams(
    tmp_path: Path, nats_url: str, tiny_model_dir: Path, http: HttpClient, session: aiohttp.ClientSession
) -> None:
    async with deployment(tmp_path, nats_url, tiny_model_dir, workers=2, speedup=1.0) as dynamo:
        leaving, staying = dynamo.workers
        long_streams = [stream(session, dynamo, chat_request(4, LONG, first_word=i)) for i in range(4)]
        await dynamo.wait_metrics(
            http, lambda t: metric(t, "dynamo_frontend_inflight_requests") == 4, what="4 streams in flight"
        )
        text = await dynamo.wait_metrics(
            http,
            lambda t: last_input_tokens(t, leaving) > 0 and last_input_tokens(t, staying) > 0,
            what="streams on both workers",
        )

        terminated_at = time.monotonic()
        leaving.terminate()
        await dynamo.wait_unregistered(leaving)
        left_discovery_s = time.monotonic() - terminated_at

        # New requests, each with a prompt size no earlier request had: all are routed to the staying
        # worker, while the leaving one is still running its streams.
        for words in (11, 12, 13, 14):
            result = await stream_chat(session, dynamo.frontend_url, chat_request(words, 3), timeout_s=WAIT_S)
            assert result.ok, result
            text = await dynamo.metrics_text(http)
            assert last_input_tokens(text, staying) == prompt_tokens(words)
            assert last_input_tokens(text, leaving) != prompt_tokens(words)
        assert leaving.running, "the leaving worker ended before the new requests: the test proves nothing"

        finished = await asyncio.gather(*long_streams)
        assert [(r.ok, r.completion_tokens) for r in finished] == [(True, LONG)] * 4
        assert await leaving.wait_exit(WAIT_S) == 0
        drained_s = time.monotonic() - terminated_at
        text = await dynamo.metrics_text(http)
        assert metric(text, "dynamo_frontend_model_migration_total") == 0
        print(f"left discovery {left_discovery_s:.3f} s after SIGTERM, exited {drained_s:.2f} s after it")
        assert left_discovery_s < 1.0


async def test_streams_on_a_killed_worker_migrate_to_the_survivor_and_complete(
    tmp_path: Path, nats_url: str, tiny_model_dir: Path, http: HttpClient, session: aiohttp.ClientSession
) -> None:
    async with deployment(
        tmp_path, nats_url, tiny_model_dir, workers=2, speedup=1.0, migration_limit=3
    ) as dynamo:
        doomed, survivor = dynamo.workers
        async with event_plane(nats_url, dynamo.namespace) as plane:
            long_streams = [stream(session, dynamo, chat_request(4, LONG, first_word=i)) for i in range(4)]

            def decoding_on_doomed() -> list[ForwardPassMetrics]:
                return [
                    f
                    for f in plane.forward_passes()
                    if int(f.worker_id) == doomed.worker_id and f.scheduled_requests.num_decode_requests > 0
                ]

            await plane.wait(lambda: len(decoding_on_doomed()) >= 5, "the doomed worker decoding")
            # What the doomed worker holds, by its own latest word on the event plane.
            held = decoding_on_doomed()[-1].scheduled_requests.num_decode_requests
            doomed.kill()
            await doomed.wait_exit(WAIT_S)
            finished = await asyncio.gather(*long_streams)

        assert [(r.ok, r.completion_tokens) for r in finished] == [(True, LONG)] * 4
        text = await dynamo.metrics_text(http)
        assert held >= 1
        assert metric(text, "dynamo_frontend_model_migration_total", migration_type="ongoing_request") == held
        assert metric(text, "dynamo_frontend_requests_total", status="success") == 4
        assert survivor.running

        # A killed worker says no goodbye: it stays in discovery until its lease lapses (about 10 s with
        # the file backend). New requests still all succeed: the frontend has learnt from the failed
        # streams (a request it still sends there would be migrated too).
        assert doomed.worker_id in dynamo.registered_instances()
        late = await asyncio.gather(*(stream(session, dynamo, chat_request(2, 3)) for _ in range(4)))
        assert all(r.ok for r in late), late
        text = await dynamo.metrics_text(http)
        assert metric(text, "dynamo_frontend_requests_total", status="success") == 8
        later = metric(text, "dynamo_frontend_model_migration_total") - held
        print(f"migrations: {held} held by the killed worker, then {later:g} of 4 new requests")


# A worker's boot (the mocker's simulated one)

BOOT_S = 2.0


async def test_a_booting_worker_registers_at_once_and_holds_its_requests_until_its_boot_ends(
    tmp_path: Path, nats_url: str, tiny_model_dir: Path, session: aiohttp.ClientSession
) -> None:
    dynamo = LocalDynamo(
        tmp_path, nats_url=nats_url, model_dir=tiny_model_dir, namespace=f"t{uuid.uuid4().hex[:10]}"
    )
    with dynamo:
        dynamo.start_frontend()
        launched = time.monotonic()
        dynamo.start_worker(speedup_ratio=FAST, startup_time_s=BOOT_S)
        async with HttpClient() as http:
            await dynamo.wait_ready(http, timeout_s=WAIT_S)
        ready_s = time.monotonic() - launched

        result = await stream_chat(session, dynamo.frontend_url, chat_request(2, 3), timeout_s=WAIT_S)
        served_s = time.monotonic() - launched

    assert result.ok, result
    print(f"registered and model_ready {ready_s:.2f} s after launch, first answer {served_s:.2f} s after")
    # Registration (and the frontend's model_ready) is no sign that a worker can serve yet.
    assert ready_s < BOOT_S
    assert served_s >= BOOT_S


# The harness itself


async def test_a_worker_that_cannot_start_fails_the_readiness_wait_with_its_log(
    tmp_path: Path, nats_url: str
) -> None:
    dynamo = LocalDynamo(
        tmp_path, nats_url=nats_url, model_dir=tmp_path / "no-such-model", namespace="broken"
    )
    with dynamo:
        dynamo.start_frontend()
        worker = dynamo.start_worker()
        async with HttpClient() as http:
            with pytest.raises(DynamoError, match=r"worker-1 exited with \d+") as failure:
                await dynamo.wait_ready(http, timeout_s=WAIT_S)
    assert "no-such-model" in str(failure.value)  # the tail of its log says why
    assert not worker.running
    assert dynamo.frontend is not None
    assert not dynamo.frontend.running  # leaving the harness stopped it


IMPORTS = """
import json, sys
import agent.sim.dynamo_local
print(json.dumps(sorted(m for m in ("dynamo", "transformers", "tokenizers") if m in sys.modules)))
"""


async def test_the_harness_module_loads_neither_dynamo_nor_transformers() -> None:
    # transformers takes seconds to import: only writing a model directory loads it.
    python = await asyncio.create_subprocess_exec(
        sys.executable, "-c", IMPORTS, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(WAIT_S):
        out, err = await python.communicate()
    assert python.returncode == 0, err.decode()
    assert json.loads(out) == []
