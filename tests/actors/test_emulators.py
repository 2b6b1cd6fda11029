"""GPU worker and router emulators on a real nats-server, on a fake clock moved by hand.

The test node type has dyadic rates (prefill 1,024 tokens/s, 8 tokens/s per sequence, links of 1,040,000
and 4,160,000 B/s with 1,000 bytes of KV per token), so expected clock times are exact.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import nats
import nats.errors
import pytest
from harness import START, Inbox, eventually, fresh_namespace

from agent.bus import Bus
from agent.core.catalog import InstanceType
from agent.runtime.actor import Actor
from agent.runtime.clock import Clock, FakeClock, ScaledClock
from agent.runtime.metrics import AgentMetrics
from agent.sim.router import RouterEmulator
from agent.sim.worker import Fabric, WorkerEmulator, ps_finish_offsets
from agent.subjects import Subjects
from schemas import (
    Cancel,
    Envelope,
    ErrorReply,
    HotBlocks,
    HotBlocksQuery,
    InflightList,
    InflightQuery,
    Message,
    ReceiveBlocks,
    Reprefill,
    RequestUpdate,
    Requeue,
    Resume,
    RouterAck,
    StatusQuery,
    StopRouting,
    Submit,
    TransferKv,
    WorkerAck,
    WorkerLost,
    WorkerMetrics,
    WorkerStatus,
    envelope,
)

R = TypeVar("R", bound=Message)

TEST_GPU = InstanceType(
    name="test_gpu",
    gpus=1,
    gpu_type="test",
    ondemand_hourly=4.0,
    reserved_hourly=2.5,
    spot_hourly=1.2,
    spot_reclaim_per_hour=0.05,
    max_batch=2,
    prefill_tokens_per_s=1024.0,
    decode_tokens_per_s=16.0,  # 8 tokens/s per sequence
)
QUAD_GPU = dataclasses.replace(TEST_GPU, name="quad_gpu", max_batch=4, decode_tokens_per_s=32.0)
KV_BYTES = 1000  # per token
CROSS = 1_040_000.0  # B/s: the KV of 520 tokens crosses nodes in 0.5 s
SAME = 4 * CROSS
TICK = 0.25  # the workers' step_s


class Sim:
    """Emulators on one bus, clock and fabric; ``advance`` moves the clock and steps every worker to it."""

    def __init__(self, bus: Bus, clock: Clock) -> None:
        self.bus = bus
        self.clock = clock
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.workers: dict[str, WorkerEmulator] = {}
        self.inboxes: list[Inbox[Any]] = []
        self.fabric = Fabric()

    @classmethod
    async def open(cls, nats_url: str, clock: Clock) -> Sim:
        nc = await nats.connect(nats_url)
        bus = Bus(nc, Subjects(fresh_namespace()), source="test", clock=clock, metrics=AgentMetrics())
        return cls(bus, clock)

    async def inbox(self, subject: str, kind: type[R]) -> Inbox[R]:
        inbox = await Inbox.open(self.bus.nc, subject, kind)
        self.inboxes.append(inbox)
        return inbox

    async def close(self) -> None:
        self.stop.set()
        for inbox in self.inboxes:
            await inbox.close()
        await self.bus.nc.drain()
        done, pending = await asyncio.wait(self.tasks, timeout=5.0)
        for task in pending:
            task.cancel()
        for task in done:
            task.result()  # an actor that crashed fails the test
        assert not pending

    async def start(self, actor: Actor) -> None:
        self.tasks.append(asyncio.ensure_future(actor.run(self.stop)))
        await eventually(actor.ready.is_set)

    async def worker(self, worker_id: str, **overrides: Any) -> WorkerEmulator:
        params: dict[str, Any] = {
            "instance_id": f"i-{worker_id}",
            "instance_type": TEST_GPU,
            "pool": "default",
            "tier": "spot",
            "kv_bytes_per_token": KV_BYTES,
            "same_node_bytes_per_s": SAME,
            "cross_node_bytes_per_s": CROSS,
            "step_s": TICK,
            "metrics_interval_s": 5.0,
            "fabric": self.fabric,
        }
        params.update(overrides)
        worker = WorkerEmulator(self.bus, self.clock, worker_id=worker_id, **params)
        self.workers[worker_id] = worker
        await self.start(worker)
        return worker

    async def router(self, *workers: str, **overrides: Any) -> RouterEmulator:
        router = RouterEmulator(self.bus, self.clock, **{"submit_timeout_s": 0.5, **overrides})
        for worker_id in workers:
            router.add_worker(worker_id)
        await self.start(router)
        return router

    def env(self) -> Envelope:
        return envelope("test", sent_at=self.clock.now())

    async def advance(self, seconds: float) -> None:
        """Move the clock a tick at a time, each time until every worker's timer has run (its step and
        metrics); then step the workers to the clock's time (a last part tick may not reach their timer)."""
        assert isinstance(self.clock, FakeClock)
        end = self.clock.now() + seconds
        while self.clock.now() < end:
            tick = min(TICK, end - self.clock.now())
            before = {w: w.ticks for w in self.workers.values() if w.interval_s == TICK}
            self.clock.advance(tick)
            if tick == TICK:
                await eventually(lambda b=before: all(w.ticks > n for w, n in b.items()))  # type: ignore[misc]
        for worker in self.workers.values():
            await worker.sync()

    async def settled(self, router: RouterEmulator) -> None:
        """Until the router has read every update the workers published."""
        published = sum(w.updates_published for w in self.workers.values())
        await eventually(lambda: router.updates_seen >= published)

    async def run_until(
        self,
        condition: Callable[[], bool],
        router: RouterEmulator,
        step_s: float = 0.25,
        limit_s: float = 60.0,
    ) -> None:
        """Advance the clock step by step, letting the router catch up each time, until ``condition``."""
        end = self.clock.now() + limit_s
        await self.settled(router)
        while not condition():
            assert self.clock.now() < end, f"not met by {limit_s} s: {router.summary()}"
            await self.advance(step_s)
            await self.settled(router)

    async def ask(self, worker_id: str, op: str, message: Message, kind: type[R]) -> R | ErrorReply:
        return await self.bus.request(self.bus.subjects.worker_request(worker_id, op), message, kind)

    async def submit(
        self, worker_id: str, request_id: str, prompt: int, output: int, prefix: Sequence[str] = ()
    ) -> WorkerAck | ErrorReply:
        message = Submit(
            **self.env(),
            request_id=request_id,
            prompt_tokens=prompt,
            expected_output_tokens=output,
            prefix_blocks=list(prefix),
        )
        return await self.ask(worker_id, "submit", message, WorkerAck)

    def transfer(self, source: str, request_id: str, target: str, reply_by: float) -> asyncio.Task[Any]:
        """``transfer_kv`` as a task: it is answered once the clock has moved on."""
        message = TransferKv(
            **self.env(),
            request_id=request_id,
            target_worker_id=target,
            target_instance_id=self.workers[target].instance_id,
            reply_by=reply_by,
        )
        return asyncio.ensure_future(self.ask(source, "transfer_kv", message, WorkerAck))

    async def command(self, op: str, message: Message) -> RouterAck | ErrorReply:
        return await self.bus.request(self.bus.subjects.router_command(op), message, RouterAck)


def ok(reply: R | ErrorReply) -> R:
    assert not isinstance(reply, ErrorReply), reply.error
    assert getattr(reply, "ok", True), reply
    return reply


def refused(reply: Message) -> str:
    assert isinstance(reply, ErrorReply), reply
    return reply.error


async def updates_of(inbox: Inbox[RequestUpdate], n: int) -> list[tuple[str, str, float, int]]:
    got = [await inbox.next() for _ in range(n)]
    return [(u.request_id, u.state, u.sent_at, u.generated_tokens) for u in got]


@pytest.fixture
async def sim(nats_url: str) -> AsyncIterator[Sim]:
    s = await Sim.open(nats_url, FakeClock(START))
    try:
        yield s
    finally:
        await s.close()


# --- the worker -----------------------------------------------------------------------------------


def test_processor_sharing_ends_the_smallest_job_first_then_speeds_the_others_up() -> None:
    assert ps_finish_offsets([], 10.0) == []
    assert ps_finish_offsets([30.0, 10.0, 10.0], 10.0) == [5.0, 3.0, 3.0]


async def test_a_request_prefills_then_decodes_and_completes_on_time(sim: Sim) -> None:
    worker = await sim.worker("w1")
    updates = await sim.inbox(sim.bus.subjects.request_update("w1"), RequestUpdate)
    ack = ok(await sim.submit("w1", "r1", prompt=512, output=16))
    assert (ack.op, ack.request_id, ack.detail) == ("submit", "r1", "prefill")

    await sim.advance(1.5)  # 0.5 s of prefill (512 tokens at 1,024/s), then 1 s of decoding at 8 tokens/s
    inflight = ok(await sim.ask("w1", "inflight", InflightQuery(**sim.env()), InflightList))
    assert [
        (r.request_id, r.generated_tokens, r.expected_remaining_tokens, r.kv_bytes) for r in inflight.requests
    ] == [("r1", 8, 8, (512 + 8) * KV_BYTES)]
    await sim.advance(1.0)
    assert await updates_of(updates, 2) == [("r1", "started", START, 0), ("r1", "done", START + 2.5, 16)]
    assert worker.completions == {"r1": START + 2.5}
    assert (worker.started, worker.completed, worker.phase_of("r1")) == (1, 1, "done")


async def test_prefill_is_shared_and_requests_beyond_max_batch_wait_in_the_queue(sim: Sim) -> None:
    worker = await sim.worker("w1", max_queued=1)
    acks = [ok(await sim.submit("w1", r, prompt=128, output=8)) for r in ("r1", "r2", "r3")]
    assert [a.detail for a in acks] == ["prefill", "prefill", "queued"]
    status = ok(await sim.ask("w1", "status", StatusQuery(**sim.env()), WorkerStatus))
    assert (status.active, status.queued, status.accepting, status.max_batch) == (2, 1, False, 2)
    assert "no free slot" in refused(await sim.submit("w1", "r4", prompt=128, output=8))

    await sim.advance(3.0)
    # r1 and r2 prefill together at 512 tokens/s each (0.25 s), decode 8 tokens (1 s); r3 then takes a slot.
    assert worker.completions == {"r1": START + 1.25, "r2": START + 1.25, "r3": START + 1.25 + 0.125 + 1.0}


async def test_cached_prefix_blocks_shorten_prefill_and_hot_blocks_move_to_another_worker(sim: Sim) -> None:
    a = await sim.worker("a")
    b = await sim.worker("b")
    ok(await sim.submit("a", "r1", prompt=128, output=8, prefix=["p0", "p1", "p2", "p3"]))
    await sim.advance(2.0)
    assert a.completions["r1"] == START + 0.125 + 1.0
    ok(await sim.submit("a", "r2", prompt=128, output=8, prefix=["p0", "p1", "p2", "x"]))
    await sim.advance(2.0)
    assert a.completions["r2"] == START + 2.0 + (128 - 3 * 16) / 1024 + 1.0  # 3 cached blocks of 16 tokens

    hot = ok(await sim.ask("a", "hot_blocks", HotBlocksQuery(**sim.env(), limit=3), HotBlocks))
    assert [(h.block_hash, h.hits, h.size_bytes) for h in hot.blocks] == [
        ("p0", 1, 16 * KV_BYTES),
        ("p1", 1, 16 * KV_BYTES),
        ("p2", 1, 16 * KV_BYTES),
    ]
    receive = ReceiveBlocks(
        **sim.env(), source_worker_id="a", blocks=hot.blocks, reply_by=sim.clock.now() + 1
    )
    copy = asyncio.ensure_future(sim.ask("b", "receive_blocks", receive, WorkerAck))
    await eventually(lambda: b.transfers_in_progress == 1)
    await sim.advance(0.0625)  # 48,000 bytes at 1,040,000 B/s: 46 ms
    assert ok(await copy).bytes_moved == 3 * 16 * KV_BYTES
    status = ok(await sim.ask("b", "status", StatusQuery(**sim.env()), WorkerStatus))
    assert {"p0", "p1", "p2"} <= set(status.cached_blocks)

    t0 = sim.clock.now()
    ok(await sim.submit("b", "r3", prompt=128, output=8, prefix=["p0", "p1", "p2", "p3"]))
    await sim.advance(2.0)
    assert b.completions["r3"] == t0 + (128 - 3 * 16) / 1024 + 1.0


async def test_kv_transfer_then_resume_moves_a_request_at_the_link_rate(sim: Sim) -> None:
    a = await sim.worker("a")
    b = await sim.worker("b")
    on_a = await sim.inbox(sim.bus.subjects.request_update("a"), RequestUpdate)
    on_b = await sim.inbox(sim.bus.subjects.request_update("b"), RequestUpdate)
    ok(await sim.submit("a", "r1", prompt=512, output=24))
    await sim.advance(1.5)  # 8 tokens generated

    t0 = sim.clock.now()
    moving = sim.transfer("a", "r1", "b", reply_by=t0 + 5)
    await eventually(lambda: a.phase_of("r1") == "paused")
    await sim.advance(0.25)
    assert a.phase_of("r1") == "paused"  # (512 + 8) × 1,000 bytes need 0.5 s at 1,040,000 B/s
    await sim.advance(0.25)
    ack = ok(await moving)
    assert (ack.op, ack.request_id, ack.bytes_moved, ack.generated_tokens) == (
        "transfer_kv",
        "r1",
        520_000,
        8,
    )
    assert await updates_of(on_a, 2) == [("r1", "started", START, 0), ("r1", "moved_out", t0 + 0.5, 8)]

    resume = Resume(
        **sim.env(),
        request_id="r1",
        source_worker_id="a",
        prompt_tokens=512,
        generated_tokens=8,
        expected_remaining_tokens=16,
    )
    assert ok(await sim.ask("b", "resume", resume, WorkerAck)).detail == "decode"  # no prefill
    await sim.advance(2.0)
    assert b.completions == {"r1": t0 + 0.5 + 2.0}
    assert await updates_of(on_b, 2) == [("r1", "started", t0 + 0.5, 8), ("r1", "done", t0 + 2.5, 24)]
    assert (a.moved_out, a.completed, b.completed) == (1, 0, 1)


async def test_concurrent_cross_node_transfers_share_the_network_and_the_same_node_link_is_apart(
    sim: Sim,
) -> None:
    a = await sim.worker("a", instance_type=QUAD_GPU)
    for target in ("b", "c"):
        await sim.worker(target)
    await sim.worker("s", instance_id="i-a")  # another worker on a's node
    on_a = await sim.inbox(sim.bus.subjects.request_update("a"), RequestUpdate)
    for r in ("r1", "r2", "r3"):
        ok(await sim.submit("a", r, prompt=512, output=40))
    await sim.advance(2.5)  # 1.5 s of shared prefill, then 8 tokens each

    t0 = sim.clock.now()
    moves = [sim.transfer("a", "r1", "b", t0 + 5), sim.transfer("a", "r2", "c", t0 + 5)]
    moves.append(sim.transfer("a", "r3", "s", t0 + 5))
    await eventually(lambda: a.transfers_in_progress == 3)
    await sim.advance(1.0)
    assert [ok(await m).bytes_moved for m in moves] == [520_000, 520_000, 520_000]
    ends = {u[0]: u[2] for u in await updates_of(on_a, 6) if u[1] == "moved_out"}
    # The two network transfers share 1,040,000 B/s (1 s each); the same-node one alone takes 0.125 s.
    assert ends == {"r3": t0 + 0.125, "r1": t0 + 1.0, "r2": t0 + 1.0}


async def test_reprefill_on_a_target_completes_after_a_cancel_on_the_source(sim: Sim) -> None:
    a = await sim.worker("a")
    b = await sim.worker("b")
    ok(await sim.submit("a", "r1", prompt=512, output=24))
    await sim.advance(1.5)
    t0 = sim.clock.now()
    cancelled = ok(await sim.ask("a", "cancel", Cancel(**sim.env(), request_id="r1"), WorkerAck))
    assert cancelled.generated_tokens == 8
    reprefill = Reprefill(
        **sim.env(),
        request_id="r1",
        source_worker_id="a",
        prompt_tokens=512,
        generated_tokens=8,
        expected_remaining_tokens=16,
        reply_by=t0 + 1,
    )
    assert ok(await sim.ask("b", "reprefill", reprefill, WorkerAck)).op == "reprefill"
    await sim.advance(3.0)
    assert b.completions == {"r1": t0 + 520 / 1024 + 16 / 8}  # prompt + generated prefilled, then the rest
    assert (a.moved_out, a.phase_of("r1"), b.phase_of("r1")) == (1, "moved_out", "done")


async def test_repeated_operations_return_the_first_outcome_and_act_once(sim: Sim) -> None:
    a = await sim.worker("a")
    b = await sim.worker("b")
    await sim.worker("c")
    first, again = [ok(await sim.submit("a", "r1", prompt=512, output=24)) for _ in range(2)]
    assert (again.op, again.request_id, again.detail) == (first.op, first.request_id, first.detail)
    assert again.msg_id != first.msg_id
    inflight = ok(await sim.ask("a", "inflight", InflightQuery(**sim.env()), InflightList))
    assert (a.started, len(inflight.requests)) == (1, 1)
    await sim.advance(1.5)

    t0 = sim.clock.now()
    moves = [sim.transfer("a", "r1", "b", t0 + 5), sim.transfer("a", "r1", "b", t0 + 5)]
    await eventually(lambda: a.transfers_in_progress == 1)
    assert "already being sent to 'b'" in refused(await sim.transfer("a", "r1", "c", t0 + 5))
    await sim.advance(0.5)
    late = sim.transfer("a", "r1", "b", t0 + 5)
    acks = [ok(await m) for m in (*moves, late)]
    assert {(x.bytes_moved, x.generated_tokens) for x in acks} == {(520_000, 8)}

    resume = Resume(
        **sim.env(),
        request_id="r1",
        source_worker_id="a",
        prompt_tokens=512,
        generated_tokens=8,
        expected_remaining_tokens=16,
    )
    for _ in range(2):
        ok(await sim.ask("b", "resume", resume, WorkerAck))
    await sim.advance(1.0)
    cancels = [
        ok(await sim.ask("b", "cancel", Cancel(**sim.env(), request_id="r1"), WorkerAck)) for _ in range(2)
    ]
    assert [c.generated_tokens for c in cancels] == [16, 16]
    assert (a.started, a.moved_out, b.started, b.moved_out) == (1, 1, 1, 1)
    assert (a.updates_published, b.updates_published) == (2, 2)  # started and moved_out, once each


async def test_what_cannot_be_done_is_refused_at_once_and_changes_nothing(sim: Sim) -> None:
    a = await sim.worker("a")
    b = await sim.worker("b")
    assert "not on this worker" in refused(
        await sim.ask("a", "cancel", Cancel(**sim.env(), request_id="x"), WorkerAck)
    )
    for r in ("r1", "r2"):
        ok(await sim.submit("a", r, prompt=512, output=40))
    assert "prefill" in refused(await sim.transfer("a", "r1", "b", sim.clock.now() + 5))
    await sim.advance(2.0)
    t0 = sim.clock.now()

    # 520,000 bytes take 0.5 s: a reply_by 0.25 s away cannot be met.
    error = refused(await sim.transfer("a", "r1", "b", t0 + 0.25))
    assert "reply_by" in error
    assert "would end at" in error
    assert a.phase_of("r1") == "decode"
    # One transfer due in 0.6 s fits alone; a second on the same link would make both take 1 s.
    moving = sim.transfer("a", "r1", "b", t0 + 0.6)
    await eventually(lambda: a.transfers_in_progress == 1)
    assert "busy" in refused(await sim.transfer("a", "r2", "b", t0 + 5))
    assert a.phase_of("r2") == "decode"

    reprefill = Reprefill(
        **sim.env(),
        request_id="r9",
        source_worker_id="a",
        prompt_tokens=10,
        generated_tokens=1,
        expected_remaining_tokens=1,
        reply_by=t0 - 1,
    )
    assert "has passed" in refused(await sim.ask("b", "reprefill", reprefill, WorkerAck))
    for r in ("b1", "b2"):
        ok(await sim.submit("b", r, prompt=16, output=100))
    await sim.advance(0.5)
    moved = ok(await moving)
    resume = Resume(
        **sim.env(),
        request_id="r1",
        source_worker_id="a",
        prompt_tokens=512,
        generated_tokens=moved.generated_tokens,
        expected_remaining_tokens=40 - moved.generated_tokens,
    )
    assert "no free slot" in refused(await sim.ask("b", "resume", resume, WorkerAck))
    assert b.phase_of("r1") is None


async def test_kill_at_loses_what_is_still_on_the_worker_and_the_router_counts_it_lost(sim: Sim) -> None:
    worker = await sim.worker("w1", metrics_interval_s=2.0)
    metrics = await sim.inbox(sim.bus.subjects.worker_metrics("w1"), WorkerMetrics)
    updates = await sim.inbox(sim.bus.subjects.request_update("w1"), RequestUpdate)
    router = await sim.router("w1")
    await router.admit("short", 128, 4)
    await router.admit("long1", 128, 800)
    await router.admit("long2", 128, 800)  # queued behind the two others
    worker.kill_at(START + 5)

    await sim.run_until(router.all_done, router)
    summary = router.summary()
    assert {k: summary[k] for k in ("admitted", "completed", "lost", "requeued", "in_flight")} == {
        "admitted": 3,
        "completed": 1,
        "lost": 2,
        "requeued": 0,
        "in_flight": 0,
    }
    lost = [u for u in await updates_of(updates, 6) if u[1] == "lost"]
    # long1 decoded from 0.25 s, long2 from 0.875 s (after short's slot freed at 0.75 s and a 0.125 s prefill)
    assert sorted(lost) == [("long1", "lost", START + 5, 38), ("long2", "lost", START + 5, 33)]
    assert (worker.completed, worker.lost, worker.stopped) == (1, 2, True)
    assert "w1" in router.stopped

    # Dead: no answer, no metrics (reports came at +2 and +4 after the one at start, and then none).
    with pytest.raises(nats.errors.TimeoutError):
        await sim.bus.request(
            sim.bus.subjects.worker_request("w1", "status"), StatusQuery(**sim.env()), WorkerStatus, 0.2
        )
    await sim.advance(5.0)
    reports = [await metrics.next(), await metrics.next()]
    assert [(m.sent_at, m.requests_completed) for m in reports] == [(START + 2, 1), (START + 4, 0)]
    assert (reports[1].in_flight, reports[1].queued) == (2, 0)
    with pytest.raises(nats.errors.TimeoutError):
        await metrics.next(timeout_s=0.1)


async def test_a_transfer_cut_short_by_a_cancel_or_by_the_deadline_is_answered_with_an_error(
    sim: Sim,
) -> None:
    a = await sim.worker("a")
    await sim.worker("b")
    updates = await sim.inbox(sim.bus.subjects.request_update("a"), RequestUpdate)
    for r in ("r1", "r2"):
        ok(await sim.submit("a", r, prompt=512, output=400))
    await sim.advance(2.0)
    a.kill_at(START + 2.25)
    first = sim.transfer("a", "r1", "b", START + 10)
    await eventually(lambda: a.transfers_in_progress == 1)
    cancelled = ok(await sim.ask("a", "cancel", Cancel(**sim.env(), request_id="r1"), WorkerAck))
    assert "was cancelled" in refused(await first)
    second = sim.transfer("a", "r2", "b", START + 10)  # would end at +2.5 s: cut at +2.25 s
    await eventually(lambda: a.transfers_in_progress == 1)
    await sim.advance(1.0)
    assert "stopped at" in refused(await second)
    assert await updates_of(updates, 4) == [
        ("r1", "started", START, 0),
        ("r2", "started", START, 0),
        ("r1", "moved_out", START + 2.0, cancelled.generated_tokens),
        ("r2", "lost", START + 2.25, 8),
    ]


async def test_with_a_fabric_kv_goes_only_to_a_live_target_and_resume_needs_it_to_have_arrived(
    sim: Sim,
) -> None:
    a = await sim.worker("a")
    b = await sim.worker("b")
    c = await sim.worker("c")
    ok(await sim.submit("a", "r1", prompt=512, output=400))
    await sim.advance(2.0)

    def resume(source: str, generated: int) -> Resume:
        return Resume(
            **sim.env(),
            request_id="r1",
            source_worker_id=source,
            prompt_tokens=512,
            generated_tokens=generated,
            expected_remaining_tokens=400 - generated,
        )

    assert "no KV cache" in refused(await sim.ask("c", "resume", resume("a", 12), WorkerAck))
    c.kill_now()
    assert "does not answer" in refused(await sim.transfer("a", "r1", "c", sim.clock.now() + 5))
    b.kill_at(sim.clock.now() + 0.25)
    moving = sim.transfer("a", "r1", "b", sim.clock.now() + 5)
    await eventually(lambda: a.transfers_in_progress == 1)
    await sim.advance(1.0)  # (512 + 12) × 1,000 bytes take 0.504 s
    assert "stopped before the transfer ended" in refused(await moving)
    assert (a.phase_of("r1"), a.moved_out) == ("decode", 0)  # the request goes on at the source

    d = await sim.worker("d")
    moving = sim.transfer("a", "r1", "d", sim.clock.now() + 5)
    await eventually(lambda: a.transfers_in_progress == 1)
    await sim.advance(1.0)
    moved = ok(await moving)
    assert "from 'b'" in refused(await sim.ask("d", "resume", resume("b", moved.generated_tokens), WorkerAck))
    ok(await sim.ask("d", "resume", resume("a", moved.generated_tokens), WorkerAck))
    assert (a.moved_out, d.phase_of("r1")) == (1, "decode")


# --- the router -----------------------------------------------------------------------------------


async def test_the_router_sends_to_the_least_loaded_worker_prefers_shared_prefixes_and_obeys_stop_routing(
    sim: Sim,
) -> None:
    for w in ("w1", "w2", "w3"):
        await sim.worker(w)
    router = await sim.router("w1", "w2", "w3")
    await router.admit("r1", 64, 16, ["p", "q"])
    await router.admit("r2", 64, 16, ["x"])
    await router.admit("r3", 64, 16, ["y"])
    await router.admit("r4", 64, 16, ["p", "q", "z"])  # all hold one: w1 has its prefix
    await router.admit("r5", 64, 16)
    stop = ok(await sim.command("stop_routing", StopRouting(**sim.env(), worker_id="w3")))
    assert (stop.op, stop.ok) == ("stop_routing", True)
    await router.admit("r6", 64, 16)  # w3 holds the fewest but is not routed to
    owners = {rid: rec.owner for rid, rec in router.requests.items()}
    assert owners == {"r1": "w1", "r2": "w2", "r3": "w3", "r4": "w1", "r5": "w2", "r6": "w1"}
    assert [router.load(w) for w in ("w1", "w2", "w3")] == [3, 2, 1]

    await sim.run_until(router.all_done, router)
    assert (router.admitted, router.completed, router.lost) == (6, 6, 0)
    assert sum(w.completed for w in sim.workers.values()) == 6


async def test_requeue_takes_a_request_back_and_serves_it_elsewhere_once(sim: Sim) -> None:
    w1 = await sim.worker("w1")
    w2 = await sim.worker("w2")
    router = await sim.router("w1", "w2")
    await router.admit("r1", 512, 24)
    assert router.requests["r1"].owner == "w1"
    await sim.advance(1.5)
    requeue = Requeue(**sim.env(), request_id="r1", worker_id="w1", generated_tokens=8)
    ack = ok(await sim.command("requeue", requeue))
    assert (ack.op, ack.requests) == ("requeue", 1)
    await eventually(lambda: router.requests["r1"].owner == "w2" and w1.phase_of("r1") == "moved_out")
    again = ok(await sim.command("requeue", requeue))
    assert (again.requests, again.detail) == (1, ack.detail)
    unknown = Requeue(**sim.env(), request_id="nope", worker_id="w1")
    assert "never admitted" in refused(await sim.command("requeue", unknown))

    t0 = sim.clock.now()
    await sim.run_until(router.all_done, router)
    assert w2.completions == {"r1": t0 + 520 / 1024 + 16 / 8}  # prompt + 8 streamed tokens re-prefilled
    assert (router.completed, router.requeued, router.lost, w1.completed, w2.started) == (1, 1, 0, 0, 1)
    assert router.requests["r1"].generated_tokens == 24


async def test_worker_lost_requeues_its_requests_from_the_prompt_and_nothing_is_lost(sim: Sim) -> None:
    w1 = await sim.worker("w1")
    w2 = await sim.worker("w2")
    router = await sim.router("w1", "w2")
    for r in ("r1", "r2", "r3", "r4"):
        await router.admit(r, 128, 16)
    assert {rid: rec.owner for rid, rec in router.requests.items()} == {
        "r1": "w1",
        "r2": "w2",
        "r3": "w1",
        "r4": "w2",
    }
    await sim.run_until(lambda: sim.clock.now() >= START + 1.0, router)
    published = w1.updates_published
    w1.kill_now()
    ack = ok(await sim.command("worker_lost", WorkerLost(**sim.env(), worker_id="w1")))
    assert (ack.op, ack.requests) == ("worker_lost", 2)
    assert ok(await sim.command("worker_lost", WorkerLost(**sim.env(), worker_id="w1"))).requests == 2
    await eventually(lambda: {router.requests[r].owner for r in ("r1", "r3")} == {"w2"})

    await sim.run_until(router.all_done, router)
    assert (router.admitted, router.completed, router.lost, router.requeued) == (4, 4, 0, 2)
    assert (w1.lost, w1.updates_published, w2.completed) == (2, published, 4)  # w1 died silent


async def test_a_submit_nobody_answers_goes_elsewhere_and_never_back_there(sim: Sim) -> None:
    w1 = await sim.worker("w1")
    w2 = await sim.worker("w2")
    router = await sim.router("w1", "w2", submit_timeout_s=0.1)
    w1.kill_now()  # crashed, and nobody told the router
    rec = await router.admit("r1", 128, 8)
    assert (rec.state, rec.owner, rec.dispatches, rec.abandoned) == ("running", "w2", 2, {"w1"})
    assert "w1" in router.unresponsive
    await router.admit("r2", 128, 8)  # w1 is not tried again until it reports metrics
    assert router.requests["r2"].dispatches == 1
    await sim.run_until(router.all_done, router)
    assert (router.completed, w2.completed, w1.started) == (2, 2, 0)


async def test_the_router_holds_what_no_worker_can_take_and_retries_on_its_timer(sim: Sim) -> None:
    worker = await sim.worker("w1", max_queued=0)
    router = await sim.router("w1")
    for r in ("r1", "r2", "r3"):
        await router.admit(r, 128, 8)
    assert [router.requests[r].state for r in ("r1", "r2", "r3")] == ["running", "running", "waiting"]
    assert router.summary()["waiting"] == 1
    await sim.run_until(router.all_done, router)
    assert (router.completed, worker.completed) == (3, 3)
    assert worker.completions["r3"] > worker.completions["r1"] == START + 1.25


async def test_the_router_learns_workers_from_their_metrics(sim: Sim) -> None:
    router = await sim.router()
    rec = await router.admit("r1", 128, 8)
    assert rec.state == "waiting"  # no worker known yet
    metrics = await sim.inbox(sim.bus.subjects.worker_metrics_all, WorkerMetrics)
    worker = await sim.worker("w1", metrics_interval_s=1.0)
    hello = await metrics.next()  # at once, empty
    assert (
        hello.worker_id,
        hello.sent_at,
        hello.interval_s,
        hello.requests_completed,
        hello.instance_type,
    ) == (
        "w1",
        START,
        1.0,
        0,
        "test_gpu",
    )
    await eventually(lambda: rec.state == "running" and rec.owner == "w1")
    await sim.advance(1.0)
    assert (await metrics.next()).sent_at == START + 1.0
    await sim.run_until(router.all_done, router)
    await sim.advance(1.0)  # one more report, after the completion
    completed = output = 0
    while completed < 1:
        report = await metrics.next()
        completed += report.requests_completed
        output += report.output_tokens
    assert (completed, output, worker.completed) == (1, 8, 1)


async def test_the_router_counts_each_request_once_whatever_the_order_of_updates(sim: Sim) -> None:
    router = await sim.router()
    for r in ("a", "b", "c"):
        await router.admit(r, 10, 10)  # no worker: they wait

    async def update(request_id: str, worker_id: str, state: str) -> None:
        message = RequestUpdate(**sim.env(), request_id=request_id, worker_id=worker_id, state=state)  # type: ignore[arg-type]
        await sim.bus.publish(sim.bus.subjects.request_update(worker_id), message)

    sent = [
        ("a", "x9", "started"),  # placed by someone else: no longer dispatched by the router
        ("a", "x8", "done"),  # not the owner: ignored
        ("a", "x9", "lost"),
        ("a", "x9", "done"),  # already lost
        ("b", "x7", "started"),
        ("b", "x7", "done"),
        ("b", "x7", "lost"),  # already done
        ("c", "x5", "started"),
        ("c", "x5", "moved_out"),  # in transit
        ("c", "x6", "started"),  # resumed on a target
        ("c", "x5", "moved_out"),  # a repeat from the old owner
        ("c", "x6", "done"),
    ]
    for request_id, worker_id, state in sent:
        await update(request_id, worker_id, state)
    await eventually(lambda: router.updates_seen == len(sent))
    assert {r: rec.state for r, rec in router.requests.items()} == {
        "a": "lost",
        "b": "completed",
        "c": "completed",
    }
    assert (router.completed, router.lost, router.updates_ignored, router.all_done()) == (2, 1, 4, True)


async def test_a_node_drained_by_kv_moves_and_reprefill_before_its_deadline_loses_nothing(sim: Sim) -> None:
    """The migration coordinator's moves, done by hand: what the emulators show the router."""
    a = await sim.worker("a")
    b = await sim.worker("b", instance_type=QUAD_GPU)
    router = await sim.router("a", "b")
    for r in ("r1", "r2", "r3", "r4"):
        await router.admit(r, 512, 40)
    assert [router.requests[r].owner for r in ("r1", "r3")] == ["a", "a"]
    a.kill_at(START + 4)
    ok(await sim.command("stop_routing", StopRouting(**sim.env(), worker_id="a")))
    await sim.run_until(lambda: sim.clock.now() >= START + 2.0, router)

    t0 = sim.clock.now()
    moving = sim.transfer("a", "r1", "b", reply_by=START + 4)
    await eventually(lambda: a.transfers_in_progress == 1)
    cancelled = ok(await sim.ask("a", "cancel", Cancel(**sim.env(), request_id="r3"), WorkerAck))
    reprefill = Reprefill(
        **sim.env(),
        request_id="r3",
        source_worker_id="a",
        prompt_tokens=512,
        generated_tokens=cancelled.generated_tokens,
        expected_remaining_tokens=40 - cancelled.generated_tokens,
        reply_by=START + 4,
    )
    ok(await sim.ask("b", "reprefill", reprefill, WorkerAck))
    await sim.advance(0.5)
    moved = ok(await moving)
    assert moved.bytes_moved == (512 + moved.generated_tokens) * KV_BYTES
    resume = Resume(
        **sim.env(),
        request_id="r1",
        source_worker_id="a",
        prompt_tokens=512,
        generated_tokens=moved.generated_tokens,
        expected_remaining_tokens=40 - moved.generated_tokens,
    )
    ok(await sim.ask("b", "resume", resume, WorkerAck))
    assert sim.clock.now() == t0 + 0.5

    await sim.run_until(router.all_done, router)
    assert (router.admitted, router.completed, router.lost) == (4, 4, 0)
    assert (a.stopped, a.lost, a.moved_out, b.completed) == (True, 0, 2, 4)
    assert {router.requests[r].owner for r in ("r1", "r2", "r3", "r4")} == {"b"}


async def test_the_emulators_run_on_a_scaled_clock_and_serve_everything(nats_url: str) -> None:
    sim = await Sim.open(nats_url, ScaledClock(speed=100.0))
    try:
        for w in ("w1", "w2"):
            await sim.worker(w, step_s=0.05, fabric=None)
        router = await sim.router("w1", "w2", dispatch_retry_s=0.1)
        for i in range(8):
            await router.admit(f"r{i}", 256, 16, [f"p{i % 2}"])
        await eventually(router.all_done, timeout_s=10.0)  # about 4.5 s of clock time
        assert (router.admitted, router.completed, router.lost) == (8, 8, 0)
    finally:
        await sim.close()
