"""GPU worker emulator: one serving engine on one node, speaking the worker protocol on NATS.

Listens to: ``{ns}.req.worker.{worker_id}.{op}`` for every op of :mod:`schemas.workerproto` (``status``,
``inflight``, ``transfer_kv``, ``resume``, ``reprefill``, ``cancel``, ``hot_blocks``, ``receive_blocks``,
``submit``), one subscription per op. Ops that take link time (``transfer_kv``, ``receive_blocks``) are
accepted on the subscription's task and answered from a task of their own when the bytes have moved, so a
long transfer never holds up another op, nor another transfer.

Publishes: ``{ns}.evt.request.update.{worker_id}`` (RequestUpdate): ``started`` when a request is admitted
here (``submit``, ``resume``, ``reprefill``; also when it only joins the queue), ``done`` when its last
token is generated, ``moved_out`` when it leaves (after its ``transfer_kv`` ends, or on ``cancel``),
``lost`` for everything still here when the worker is killed at a deadline. ``sent_at`` of an update is the
clock time the event happened in the model, not the time it was published. And
``{ns}.evt.worker.metrics.{worker_id}`` (WorkerMetrics) every ``metrics_interval_s``, and a first one (empty)
as it starts, so that the router and the agent learn of it at once.

Guarantees: every op is answered with its typed reply or an ``error.reply.v1`` (raised as
:class:`~agent.bus.Rejected`: unknown request, no free slot, a ``reply_by`` that cannot be met, ...), never
silence, as long as the worker lives. Ops are idempotent by request id (``receive_blocks``, which has none,
by ``msg_id``): a repeat of a successful ``submit``/``resume``/``reprefill``/``cancel``/``transfer_kv``
returns the first outcome and does nothing again; a repeat of a ``transfer_kv`` still running waits for the
same transfer. A refused op changed nothing, so its repeat is simply evaluated again. A request id is
admitted at most once per op on one worker.

Time model (all times on the injected clock)
--------------------------------------------
The model is exact between events: it advances from event to event (a prefill or decode ending, a transfer
ending, the kill deadline), not by fixed steps, so the result does not depend on how often it is stepped.
A timer every ``step_s`` clock seconds (and every op, before it acts) brings it to the clock's now and
publishes what happened.

- **Slots.** Continuous batching of up to ``max_batch`` sequences (prefilling, decoding, or paused while
  their KV cache is being sent). Admitted requests beyond that wait in a FIFO queue (``queued``), at most
  ``max_queued`` of them (default ``max_batch``); a ``submit`` or ``reprefill`` beyond that is refused.
  A ``reprefill`` joins the front of the queue.
- **Prefill.** A request taking a slot first prefills ``prompt + already generated`` tokens, minus the
  tokens of the leading prefix blocks already in the cache (``hit blocks × block_tokens``, at most the
  prompt). All prefilling requests share the node's ``prefill_tokens_per_s`` equally. Prefill emits no
  token.
- **Decode.** Each decoding sequence generates ``decode_tokens_per_s / max_batch`` tokens per second
  whatever the batch occupancy, and is done when it has generated its expected output (for a request that
  arrived with tokens already generated, its total output: generated + remaining). A request whose output
  is already complete finishes as soon as its prefill does.
- **KV transfers** (``transfer_kv``, on the source). The request must be decoding; it pauses (keeping its
  slot) and its KV cache, ``(prompt + generated) × kv_bytes_per_token`` bytes, goes over the same-node link
  (``same_node_bytes_per_s``) when ``target_instance_id`` is this worker's instance, else over the network
  (``cross_node_bytes_per_s``). Each link is shared equally by the transfers on it (processor sharing).
  A transfer is refused at once if, with those already on its link, it would end after its ``reply_by``, or
  would push one of them past its own ``reply_by``. When it ends, the request leaves (``moved_out``), its
  slot frees, and the reply carries ``bytes_moved`` and the generated token count.
- **Resume** (on the target) admits the request straight into decoding (no prefill; its prefix blocks
  join the cache) if a slot is free, else refuses.
- **Prefix cache.** ``cache_blocks`` prefix blocks of ``block_tokens`` tokens each (``block_tokens ×
  kv_bytes_per_token`` bytes), least recently used evicted first; the first block of a prefix is kept
  longest. A block's hits count the requests that found it as part of their cached leading prefix.
  ``hot_blocks`` ranks blocks by hits (then recency); ``receive_blocks`` copies blocks in over this
  worker's incoming network link (``cross_node_bytes_per_s``, shared by concurrent copies) and adds them.
  The metrics' ``kv_blocks_*`` describe this prefix cache; sequences' own KV is bounded by ``max_batch``.
- **Death.** ``kill_at(deadline)`` (or ``stop_at``): at the deadline, events up to it happen, then every
  request still here (running, queued, paused mid-transfer) is lost: a ``lost`` update each, an error reply
  to each unfinished transfer, and from then on no reply, no update, no metrics. ``kill_now()``: a crash,
  at once and silent (not even ``lost``; events not yet published are dropped too). A dead worker stays
  subscribed and silent, like a node that vanished: requesters time out (no "no responders").
- **Fabric** (optional, :class:`Fabric`, shared by the workers of one process): the protocol does not let
  a source know its target's state nor a target check that a request's KV reached it; with a fabric, a
  transfer to a dead target is refused, one whose target dies before it ends fails (the request goes on
  decoding on the source), ``resume`` needs the KV to have arrived from that source, and
  ``receive_blocks`` from the same node takes the same-node link (ReceiveBlocks does not say where its
  source runs; without a fabric, blocks come over the network link).
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec
import structlog
from nats.aio.msg import Msg

from agent.bus import Bus, Handler, Rejected
from agent.core.catalog import InstanceType, Tier
from agent.runtime.actor import Actor, Listen
from agent.runtime.clock import Clock
from schemas import (
    Block,
    Cancel,
    Envelope,
    ErrorReply,
    HotBlocks,
    HotBlocksQuery,
    InflightList,
    InflightQuery,
    InflightRequest,
    Message,
    ReceiveBlocks,
    Reprefill,
    RequestUpdate,
    Resume,
    StatusQuery,
    Submit,
    TransferKv,
    WorkerAck,
    WorkerMetrics,
    WorkerStatus,
    envelope,
    tag_of,
)
from schemas.workerproto import RequestState

Phase = Literal["queued", "prefill", "decode", "paused"]
Fate = Literal["done", "moved_out", "lost"]

# A quantity (tokens, bytes) this close to its target, relative to its size, has reached it.
_EPS: Final = 1e-9
# A generated-token count this close below an integer counts as that integer (clock rounding at UNIX times).
_TOKEN_SLACK: Final = 1e-3
# Block hashes listed in WorkerStatus.cached_blocks.
STATUS_BLOCKS: Final = 256

_log = structlog.get_logger("agent.sim.worker")


def ps_finish_offsets(remaining: Sequence[float], capacity: float) -> list[float]:
    """Seconds until each job ends when ``capacity`` is shared equally by all unfinished jobs (processor
    sharing) and no job arrives: the smallest ends first, then the others speed up."""
    order = sorted(range(len(remaining)), key=lambda i: remaining[i])
    out = [0.0] * len(remaining)
    elapsed = 0.0
    done = 0.0
    for k, i in enumerate(order):
        elapsed += (remaining[i] - done) * (len(order) - k) / capacity
        done = remaining[i]
        out[i] = elapsed
    return out


@dataclass(slots=True, eq=False)
class _Seq:
    request_id: str
    prompt_tokens: int
    output_tokens: int
    """Total output: tokens already generated when it arrived plus those still expected."""
    generated: float
    prefix_blocks: tuple[str, ...]
    phase: Phase
    prefill_total: float = 0.0
    prefill_left: float = 0.0

    @property
    def tokens(self) -> int:
        """Generated tokens so far, whole."""
        return min(self.output_tokens, math.floor(self.generated + _TOKEN_SLACK))


@dataclass(slots=True, eq=False)
class _Transfer:
    op: str
    key: str
    size: float
    remaining: float
    reply_by: float
    link: _Link
    outcome: asyncio.Future[WorkerAck | str]
    seq: _Seq | None = None
    target_worker_id: str = ""
    blocks: tuple[Block, ...] = ()


@dataclass(slots=True, eq=False)
class _Link:
    name: str
    capacity: float
    jobs: list[_Transfer] = field(default_factory=list)


class Fabric:
    """The emulated GPU-to-GPU network of the workers of one process (optional).

    Without it each worker believes what it is told. With it, a KV transfer to a target that is dead when
    it starts is refused at once, and one whose target dies before it ends fails (the request stays on the
    source, decoding); a transfer that ends hands the KV to the target, whose ``resume`` then requires it
    (from that source); and ``receive_blocks`` from a worker on the same node uses the same-node link.
    """

    def __init__(self) -> None:
        self.workers: dict[str, WorkerEmulator] = {}

    def join(self, worker: WorkerEmulator) -> None:
        self.workers[worker.worker_id] = worker

    def reachable(self, worker_id: str, at: float) -> bool:
        """``worker_id`` is alive at clock time ``at``, or unknown to the fabric (then assumed alive)."""
        worker = self.workers.get(worker_id)
        return worker is None or worker.alive_at(at)


class WorkerEmulator(Actor):
    name = "worker_emulator"

    def __init__(
        self,
        bus: Bus,
        clock: Clock,
        *,
        worker_id: str,
        instance_id: str,
        instance_type: InstanceType,
        pool: str,
        tier: Tier,
        kv_bytes_per_token: float = 327_680,
        same_node_bytes_per_s: float,
        cross_node_bytes_per_s: float,
        step_s: float = 0.05,
        metrics_interval_s: float = 5.0,
        block_tokens: int = 16,
        cache_blocks: int = 4096,
        max_queued: int | None = None,
        stop_at: float | None = None,
        fabric: Fabric | None = None,
    ) -> None:
        super().__init__(bus, clock, interval_s=step_s)
        if not (kv_bytes_per_token >= 0 and same_node_bytes_per_s > 0 and cross_node_bytes_per_s > 0):
            raise ValueError("worker emulator: need kv_bytes_per_token ≥ 0 and link rates > 0")
        if not metrics_interval_s > 0 or block_tokens < 1 or cache_blocks < 0:
            raise ValueError(
                "worker emulator: need metrics_interval_s > 0, block_tokens ≥ 1, cache_blocks ≥ 0"
            )
        if max_queued is not None and max_queued < 0:
            raise ValueError("worker emulator: max_queued must be ≥ 0")
        self.worker_id = worker_id
        self.instance_id = instance_id
        self.instance_type = instance_type
        self.pool = pool
        self.tier: Tier = tier
        self.kv_bytes_per_token = float(kv_bytes_per_token)
        self.block_tokens = block_tokens
        self.cache_blocks = cache_blocks
        self.max_batch = instance_type.max_batch
        self.max_queued = instance_type.max_batch if max_queued is None else max_queued
        self.metrics_interval_s = metrics_interval_s
        self.decode_rate = instance_type.decode_tokens_per_s / instance_type.max_batch
        self.stopped = False
        """Killed: answers nothing, publishes nothing."""
        # Counters for tests (cumulative), and the clock time each request completed here.
        self.started = 0
        self.completed = 0
        self.moved_out = 0
        self.lost = 0
        self.updates_published = 0
        self.completions: dict[str, float] = {}
        self.synced_at = clock.now()

        self._t = clock.now()
        self._kill_deadline = stop_at
        self._queue: deque[_Seq] = deque()
        self._active: dict[str, _Seq] = {}
        self._fates: dict[str, Fate] = {}
        self._acks: dict[tuple[str, str], WorkerAck] = {}
        self._transfers: dict[tuple[str, str], _Transfer] = {}
        self._same = _Link("same-node", same_node_bytes_per_s)
        self._cross = _Link("cross-node", cross_node_bytes_per_s)
        self._rx = _Link("incoming", cross_node_bytes_per_s)
        self._rx_same = _Link("incoming same-node", same_node_bytes_per_s)
        self.fabric = fabric
        self._kv_received: dict[str, str] = {}  # request id → source worker, with a fabric
        if fabric is not None:
            fabric.join(self)
        self._cache: OrderedDict[str, int] = OrderedDict()  # block hash → hits; most recently used last
        self._outbox: list[RequestUpdate] = []
        self._resolved: list[tuple[asyncio.Future[WorkerAck | str], WorkerAck | str]] = []
        self._flush_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        # Per-interval metrics.
        self._iv_completed = 0
        self._iv_prompt = 0
        self._iv_output = 0
        self._last_report: float | None = None
        self._next_report = 0.0

    # --- public: tests, the demo ------------------------------------------------------------------

    def kill_at(self, deadline: float) -> None:
        """Stop hard at ``deadline`` (clock time): what is still here then is lost (see the module doc)."""
        if self._kill_deadline is None or deadline < self._kill_deadline:
            self._kill_deadline = deadline

    def kill_now(self) -> None:
        """Crash now, silently: no ``lost`` update, no reply, no metrics from now on."""
        if self.stopped:
            return
        self._advance_to(self.clock.now())
        if not self.stopped:
            self._die(notify=False)

    async def sync(self) -> None:
        """Bring the model to the clock's now and publish what happened, metrics when due (the timer's
        step; tests call it after moving a fake clock)."""
        now = self.clock.now()
        self._advance_to(now)
        await self._flush()
        if not self.stopped and self._last_report is not None and now >= self._next_report:
            await self._publish_metrics(now, now - self._last_report)
        self.synced_at = now

    def alive_at(self, t: float) -> bool:
        """Not dead at clock time ``t`` (killed, or past its kill deadline)."""
        return not self.stopped and (self._kill_deadline is None or t < self._kill_deadline)

    def phase_of(self, request_id: str) -> Phase | Fate | None:
        """Where a request is on this worker: a phase, what became of it, or None if never seen."""
        seq = self._find(request_id)
        if seq is not None:
            return seq.phase
        return self._fates.get(request_id)

    @property
    def transfers_in_progress(self) -> int:
        """KV transfers and block copies under way (waiting for their bytes to move)."""
        return len(self._transfers)

    @property
    def kv_block_bytes(self) -> float:
        return self.block_tokens * self.kv_bytes_per_token

    # --- actor ------------------------------------------------------------------------------------

    def subscriptions(self) -> Sequence[Listen]:
        ops: list[tuple[str, type[Message], Handler[Any]]] = [
            ("status", StatusQuery, self.on_status),
            ("inflight", InflightQuery, self.on_inflight),
            ("transfer_kv", TransferKv, self.on_transfer_kv),
            ("resume", Resume, self.on_resume),
            ("reprefill", Reprefill, self.on_reprefill),
            ("cancel", Cancel, self.on_cancel),
            ("hot_blocks", HotBlocksQuery, self.on_hot_blocks),
            ("receive_blocks", ReceiveBlocks, self.on_receive_blocks),
            ("submit", Submit, self.on_submit),
        ]
        return [
            Listen(self.bus.subjects.worker_request(self.worker_id, op), kind, handler)
            for op, kind, handler in ops
        ]

    async def on_start(self) -> None:
        if self._last_report is None and not self.stopped:
            # A first, empty report at once, so that the router and the agent know of the worker.
            await self._publish_metrics(self.clock.now(), self.metrics_interval_s)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await super().run(stop)
        finally:
            for task in list(self._tasks):
                task.cancel()

    async def on_timer(self) -> None:
        await self.sync()

    # --- handlers ---------------------------------------------------------------------------------

    async def on_status(self, query: StatusQuery, raw: Msg) -> None:
        if not await self._enter():
            return
        status = WorkerStatus(
            **self._env(correlation_id=query.msg_id),
            worker_id=self.worker_id,
            instance_id=self.instance_id,
            instance_type=self.instance_type.name,
            accepting=self._has_room(),
            max_batch=self.max_batch,
            active=len(self._active),
            queued=len(self._queue),
            prefill_tokens_per_s=self.instance_type.prefill_tokens_per_s,
            decode_tokens_per_s=self.instance_type.decode_tokens_per_s,
            cached_blocks=list(itertools.islice(reversed(self._cache), STATUS_BLOCKS)),
        )
        await self.bus.respond(raw, status)

    async def on_inflight(self, query: InflightQuery, raw: Msg) -> None:
        if not await self._enter():
            return
        requests = [
            InflightRequest(
                request_id=seq.request_id,
                prompt_tokens=seq.prompt_tokens,
                generated_tokens=seq.tokens,
                expected_remaining_tokens=seq.output_tokens - seq.tokens,
                kv_bytes=0.0 if seq.phase == "queued" else self._kv_bytes(seq),
                prefix_blocks=list(seq.prefix_blocks),
            )
            for seq in itertools.chain(self._active.values(), self._queue)
        ]
        reply = InflightList(
            **self._env(correlation_id=query.msg_id),
            worker_id=self.worker_id,
            instance_id=self.instance_id,
            decode_tokens_per_s=self.instance_type.decode_tokens_per_s,
            max_batch=self.max_batch,
            requests=requests,
        )
        await self.bus.respond(raw, reply)

    async def on_submit(self, cmd: Submit, raw: Msg) -> None:
        if not await self._enter():
            return
        key = ("submit", cmd.request_id)
        ack = self._acks.get(key)
        if ack is None:
            ack = await self._enqueue(
                "submit",
                cmd.request_id,
                cmd.prompt_tokens,
                cmd.already_generated,
                cmd.expected_output_tokens,
                cmd.prefix_blocks,
                first=False,
            )
        await self._reply(raw, cmd.msg_id, ack)

    async def _enqueue(
        self,
        op: str,
        request_id: str,
        prompt_tokens: int,
        generated: int,
        remaining: int,
        prefix_blocks: Sequence[str],
        *,
        first: bool,
    ) -> WorkerAck:
        """Admit a request to the queue (its prompt still to prefill), at its head when ``first``."""
        self._refuse_if_here(request_id)
        self._refuse_if_full()
        seq = _Seq(
            request_id=request_id,
            prompt_tokens=prompt_tokens,
            output_tokens=generated + remaining,
            generated=float(generated),
            prefix_blocks=tuple(prefix_blocks),
            phase="queued",
        )
        if first:
            self._queue.appendleft(seq)
        else:
            self._queue.append(seq)
        ack = self._admitted(op, seq)
        await self._flush()
        return ack

    async def on_reprefill(self, cmd: Reprefill, raw: Msg) -> None:
        if not await self._enter():
            return
        key = ("reprefill", cmd.request_id)
        ack = self._acks.get(key)
        if ack is None:
            if self._t > cmd.reply_by:
                raise Rejected(f"reply_by: {cmd.reply_by:.3f} has passed (now {self._t:.3f})")
            # Work already streamed to a client goes before new work.
            ack = await self._enqueue(
                "reprefill",
                cmd.request_id,
                cmd.prompt_tokens,
                cmd.generated_tokens,
                cmd.expected_remaining_tokens,
                cmd.prefix_blocks,
                first=True,
            )
        await self._reply(raw, cmd.msg_id, ack)

    async def on_resume(self, cmd: Resume, raw: Msg) -> None:
        if not await self._enter():
            return
        key = ("resume", cmd.request_id)
        ack = self._acks.get(key)
        if ack is None:
            self._refuse_if_here(cmd.request_id)
            if self.fabric is not None and self._kv_received.get(cmd.request_id) != cmd.source_worker_id:
                raise Rejected(
                    f"request_id: no KV cache of {cmd.request_id!r} has arrived from {cmd.source_worker_id!r}"
                )
            if len(self._active) >= self.max_batch:
                raise Rejected(
                    f"request_id: no free slot for {cmd.request_id!r} "
                    f"({len(self._active)}/{self.max_batch} sequences active)"
                )
            seq = _Seq(
                request_id=cmd.request_id,
                prompt_tokens=cmd.prompt_tokens,
                output_tokens=cmd.generated_tokens + cmd.expected_remaining_tokens,
                generated=float(cmd.generated_tokens),
                prefix_blocks=tuple(cmd.prefix_blocks),
                phase="decode",
            )
            self._active[seq.request_id] = seq
            self._kv_received.pop(seq.request_id, None)
            self._touch(seq.prefix_blocks)  # the prefix's KV arrived with the request
            ack = self._admitted("resume", seq)
            await self._flush()
        await self._reply(raw, cmd.msg_id, ack)

    async def on_cancel(self, cmd: Cancel, raw: Msg) -> None:
        if not await self._enter():
            return
        key = ("cancel", cmd.request_id)
        ack = self._acks.get(key)
        if ack is None:
            seq = self._find(cmd.request_id)
            if seq is None:
                raise Rejected(self._absent(cmd.request_id))
            if seq.phase == "queued":
                self._queue.remove(seq)
            else:
                del self._active[seq.request_id]
            job = self._transfers.pop(("transfer_kv", seq.request_id), None)
            if job is not None:  # cancelled mid-transfer: the transfer stops, its requester hears why
                job.link.jobs.remove(job)
                self._resolved.append((job.outcome, f"request_id: {seq.request_id!r} was cancelled"))
            self._leave(seq, "moved_out")
            ack = WorkerAck(
                **self._env(), op="cancel", request_id=seq.request_id, generated_tokens=seq.tokens
            )
            self._acks[key] = ack
            self._advance_to(self._t)  # a freed slot takes the next queued request
            await self._flush()
        await self._reply(raw, cmd.msg_id, ack)

    async def on_transfer_kv(self, cmd: TransferKv, raw: Msg) -> None:
        if not await self._enter():
            return
        key = ("transfer_kv", cmd.request_id)
        ack = self._acks.get(key)
        if ack is not None:
            await self._reply(raw, cmd.msg_id, ack)
            return
        job = self._transfers.get(key)
        if job is not None:
            if job.target_worker_id != cmd.target_worker_id:
                raise Rejected(
                    f"target_worker_id: {cmd.request_id!r} is already being sent to {job.target_worker_id!r}"
                )
            self._reply_when_done(job, raw, cmd)
            return
        seq = self._active.get(cmd.request_id)
        if seq is None:
            queued = self._find(cmd.request_id)
            if queued is not None:
                raise Rejected(f"request_id: {cmd.request_id!r} is queued here: it has no KV cache yet")
            raise Rejected(self._absent(cmd.request_id))
        if seq.phase != "decode":
            raise Rejected(f"request_id: {cmd.request_id!r} is in {seq.phase}: its KV cache is not complete")
        if cmd.target_worker_id == self.worker_id:
            raise Rejected("target_worker_id: the target is this worker")
        if self.fabric is not None and not self.fabric.reachable(cmd.target_worker_id, self._t):
            raise Rejected(f"target_worker_id: {cmd.target_worker_id!r} does not answer: cannot connect")
        link = self._same if cmd.target_instance_id == self.instance_id else self._cross
        size = self._kv_bytes(seq)
        self._check_link(link, size, cmd.reply_by, f"the KV cache of {cmd.request_id!r}")
        seq.generated = float(seq.tokens)  # the KV holds whole tokens; a partial one is redone
        seq.phase = "paused"
        job = _Transfer(
            op="transfer_kv",
            key=cmd.request_id,
            size=size,
            remaining=size,
            reply_by=cmd.reply_by,
            link=link,
            outcome=asyncio.get_running_loop().create_future(),
            seq=seq,
            target_worker_id=cmd.target_worker_id,
        )
        link.jobs.append(job)
        self._transfers[key] = job
        self._advance_to(self._t)  # an empty cache moves at once
        await self._flush()
        self._reply_when_done(job, raw, cmd)

    async def on_hot_blocks(self, query: HotBlocksQuery, raw: Msg) -> None:
        if not await self._enter():
            return
        by_recency = list(self._cache.items())  # least recent first
        ranked = sorted(range(len(by_recency)), key=lambda i: (-by_recency[i][1], -i))
        blocks = [
            Block(block_hash=by_recency[i][0], size_bytes=self.kv_block_bytes, hits=by_recency[i][1])
            for i in ranked[: query.limit]
        ]
        await self.bus.respond(
            raw, HotBlocks(**self._env(correlation_id=query.msg_id), worker_id=self.worker_id, blocks=blocks)
        )

    async def on_receive_blocks(self, cmd: ReceiveBlocks, raw: Msg) -> None:
        if not await self._enter():
            return
        key = ("receive_blocks", cmd.msg_id)  # the message has no request id: a retry keeps its msg_id
        ack = self._acks.get(key)
        if ack is not None:
            await self._reply(raw, cmd.msg_id, ack)
            return
        job = self._transfers.get(key)
        if job is None:
            size = float(sum(b.size_bytes for b in cmd.blocks))
            link = self._rx
            source = self.fabric.workers.get(cmd.source_worker_id) if self.fabric is not None else None
            if source is not None and source.instance_id == self.instance_id:
                link = self._rx_same
            self._check_link(link, size, cmd.reply_by, f"{len(cmd.blocks)} blocks")
            job = _Transfer(
                op="receive_blocks",
                key=cmd.msg_id,
                size=size,
                remaining=size,
                reply_by=cmd.reply_by,
                link=link,
                outcome=asyncio.get_running_loop().create_future(),
                blocks=tuple(cmd.blocks),
            )
            link.jobs.append(job)
            self._transfers[key] = job
            self._advance_to(self._t)
            await self._flush()
        self._reply_when_done(job, raw, cmd)

    # --- replies ----------------------------------------------------------------------------------

    def _env(self, sent_at: float | None = None, correlation_id: str = "") -> Envelope:
        at = self.clock.now() if sent_at is None else sent_at
        return envelope(self.worker_id, sent_at=at, correlation_id=correlation_id)

    async def _enter(self) -> bool:
        """Bring the model to now; False when the worker is dead (it then answers nothing)."""
        if self.stopped:
            return False
        self._advance_to(self.clock.now())
        await self._flush()
        return not self.stopped

    async def _reply(self, raw: Msg, msg_id: str, ack: WorkerAck) -> None:
        await self.bus.respond(raw, msgspec.structs.replace(ack, **self._env(correlation_id=msg_id)))

    def _reply_when_done(self, job: _Transfer, raw: Msg, cmd: Message) -> None:
        tag = tag_of(type(cmd))

        async def reply() -> None:
            outcome = await asyncio.shield(job.outcome)
            try:
                if isinstance(outcome, WorkerAck):
                    await self._reply(raw, cmd.msg_id, outcome)
                else:
                    error = ErrorReply(**self._env(correlation_id=cmd.msg_id), error=f"{tag}: {outcome}")
                    await self.bus.respond(raw, error)
            except Exception as err:  # the connection is closing: nobody is left to tell
                _log.warning("reply_failed", worker_id=self.worker_id, op=job.op, error=str(err))

        task = asyncio.ensure_future(reply())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        """Publish the updates produced so far (in order), then release the replies waiting on them."""
        async with self._flush_lock:
            updates, self._outbox = self._outbox, []
            resolved, self._resolved = self._resolved, []
            subject = self.bus.subjects.request_update(self.worker_id)
            for update in updates:
                await self.bus.publish(subject, update)
                self.updates_published += 1
            for future, outcome in resolved:
                if not future.done():
                    future.set_result(outcome)

    async def _publish_metrics(self, now: float, interval: float) -> None:
        """The counters since the last report; the next is due ``metrics_interval_s`` later."""
        report = WorkerMetrics(
            **self._env(sent_at=now),
            worker_id=self.worker_id,
            instance_id=self.instance_id,
            instance_type=self.instance_type.name,
            pool=self.pool,
            tier=self.tier,
            interval_s=interval,
            requests_completed=self._iv_completed,
            prompt_tokens=self._iv_prompt,
            output_tokens=self._iv_output,
            in_flight=len(self._active),
            queued=len(self._queue),
            kv_blocks_used=len(self._cache),
            kv_blocks_total=self.cache_blocks,
        )
        self._iv_completed = self._iv_prompt = self._iv_output = 0
        if self._last_report is None:
            self._next_report = now
        self._last_report = now
        while self._next_report <= now:  # a drift-free schedule
            self._next_report += self.metrics_interval_s
        await self.bus.publish(self.bus.subjects.worker_metrics(self.worker_id), report)

    # --- checks -----------------------------------------------------------------------------------

    def _find(self, request_id: str) -> _Seq | None:
        seq = self._active.get(request_id)
        if seq is not None:
            return seq
        return next((s for s in self._queue if s.request_id == request_id), None)

    def _absent(self, request_id: str) -> str:
        fate = self._fates.get(request_id)
        if fate is None:
            return f"request_id: {request_id!r} is not on this worker"
        return f"request_id: {request_id!r} is no longer on this worker ({fate})"

    def _refuse_if_here(self, request_id: str) -> None:
        seq = self._find(request_id)
        if seq is not None:
            raise Rejected(f"request_id: {request_id!r} is already on this worker ({seq.phase})")

    def _has_room(self) -> bool:
        return len(self._active) < self.max_batch or len(self._queue) < self.max_queued

    def _refuse_if_full(self) -> None:
        if not self._has_room():
            raise Rejected(
                f"no free slot: {len(self._active)}/{self.max_batch} sequences active and "
                f"{len(self._queue)}/{self.max_queued} queued"
            )

    def _check_link(self, link: _Link, size: float, reply_by: float, what: str) -> None:
        """Refuse a transfer that would end after its ``reply_by`` or push another past its own."""
        offsets = ps_finish_offsets([j.remaining for j in link.jobs] + [size], link.capacity)
        end = self._t + offsets[-1]
        if end > reply_by + 1e-9:
            raise Rejected(
                f"reply_by: sending {what} ({size:.0f} bytes over the {link.name} link at "
                f"{link.capacity:.0f} B/s, shared by {len(offsets)}) would end at {end:.3f}, "
                f"after reply_by {reply_by:.3f}"
            )
        for job, offset in zip(link.jobs, offsets, strict=False):
            if self._t + offset > job.reply_by + 1e-9:
                raise Rejected(
                    f"reply_by: the {link.name} link is busy: sending {what} would delay "
                    f"{job.op} {job.key!r} past its reply_by {job.reply_by:.3f}"
                )

    # --- the model --------------------------------------------------------------------------------

    def _kv_bytes(self, seq: _Seq) -> float:
        return (seq.prompt_tokens + seq.tokens) * self.kv_bytes_per_token

    def _admitted(self, op: str, seq: _Seq) -> WorkerAck:
        self.started += 1
        self._fates.pop(seq.request_id, None)
        self._update(seq, "started")
        self._advance_to(self._t)  # a free slot takes it now
        ack = WorkerAck(**self._env(), op=op, request_id=seq.request_id, detail=seq.phase)
        self._acks[(op, seq.request_id)] = ack
        return ack

    def _update(self, seq: _Seq, state: RequestState) -> None:
        self._outbox.append(
            RequestUpdate(
                **self._env(sent_at=self._t),
                request_id=seq.request_id,
                worker_id=self.worker_id,
                state=state,
                generated_tokens=seq.tokens,
            )
        )

    def _leave(self, seq: _Seq, fate: Fate) -> None:
        self._fates[seq.request_id] = fate
        if fate == "moved_out":
            self.moved_out += 1
        elif fate == "done":
            self.completed += 1
        else:
            self.lost += 1
        self._update(seq, fate)

    def _touch(self, blocks: Sequence[str]) -> None:
        if self.cache_blocks == 0:
            return
        for block in reversed(blocks):  # the first block of a prefix ends up most recent
            if block in self._cache:
                self._cache.move_to_end(block)
            else:
                self._cache[block] = 0
        while len(self._cache) > self.cache_blocks:
            self._cache.popitem(last=False)

    def _start(self, seq: _Seq) -> None:
        """``seq`` takes a slot: it prefills what its cached leading prefix blocks do not cover."""
        hit = 0
        for block in seq.prefix_blocks:
            if block not in self._cache:
                break
            hit += 1
        for block in seq.prefix_blocks[:hit]:
            self._cache[block] += 1
        self._touch(seq.prefix_blocks)
        cached = min(hit * self.block_tokens, seq.prompt_tokens)
        seq.prefill_total = seq.prefill_left = float(seq.prompt_tokens + seq.tokens - cached)
        seq.phase = "prefill"
        self._active[seq.request_id] = seq

    def _links(self) -> tuple[_Link, ...]:
        return (self._same, self._cross, self._rx, self._rx_same)

    def _settle(self) -> None:
        """Handle every event due at the model's time ``_t`` and fill free slots from the queue."""
        changed = True
        while changed:
            changed = False
            for seq in list(self._active.values()):
                if seq.phase == "prefill" and seq.prefill_left <= _EPS * max(1.0, seq.prefill_total):
                    seq.prefill_left = 0.0
                    seq.phase = "decode"
                    changed = True
                if seq.phase == "decode" and seq.generated >= seq.output_tokens - _EPS * max(
                    1.0, seq.output_tokens
                ):
                    seq.generated = float(seq.output_tokens)
                    del self._active[seq.request_id]
                    self._complete(seq)
                    changed = True
            for link in self._links():
                for job in list(link.jobs):
                    if job.remaining <= _EPS * max(1.0, job.size):
                        link.jobs.remove(job)
                        self._finish_transfer(job)
                        changed = True
            while self._queue and len(self._active) < self.max_batch:
                self._start(self._queue.popleft())
                changed = True

    def _complete(self, seq: _Seq) -> None:
        self.completions[seq.request_id] = self._t
        self._iv_completed += 1
        self._iv_prompt += seq.prompt_tokens
        self._iv_output += seq.output_tokens
        self._leave(seq, "done")

    def _finish_transfer(self, job: _Transfer) -> None:
        self._transfers.pop((job.op, job.key), None)
        if job.seq is not None and self.fabric is not None:
            target = self.fabric.workers.get(job.target_worker_id)
            if target is not None and not target.alive_at(self._t):
                job.seq.phase = "decode"  # the copy failed: the request goes on here
                error = f"target_worker_id: {job.target_worker_id!r} stopped before the transfer ended"
                self._resolved.append((job.outcome, error))
                return
            if target is not None:
                target._kv_received[job.seq.request_id] = self.worker_id
        if job.seq is not None:
            seq = job.seq
            del self._active[seq.request_id]
            self._leave(seq, "moved_out")
            ack = WorkerAck(
                **self._env(sent_at=self._t),
                op="transfer_kv",
                request_id=seq.request_id,
                generated_tokens=seq.tokens,
                bytes_moved=job.size,
                detail=f"to {job.target_worker_id} over the {job.link.name} link",
            )
        else:
            for block in job.blocks:
                hits = max(block.hits, self._cache.get(block.block_hash, 0))
                self._cache[block.block_hash] = hits
            self._touch([b.block_hash for b in job.blocks])
            ack = WorkerAck(
                **self._env(sent_at=self._t),
                op="receive_blocks",
                bytes_moved=job.size,
                detail=f"{len(job.blocks)} blocks",
            )
        self._acks[(job.op, job.key)] = ack
        self._resolved.append((job.outcome, ack))

    def _next_event_in(self) -> float:
        best = math.inf
        prefilling = [s for s in self._active.values() if s.phase == "prefill"]
        if prefilling:
            rate = self.instance_type.prefill_tokens_per_s / len(prefilling)
            best = min(s.prefill_left for s in prefilling) / rate
        for seq in self._active.values():
            if seq.phase == "decode":
                best = min(best, (seq.output_tokens - seq.generated) / self.decode_rate)
        for link in self._links():
            if link.jobs:
                best = min(best, min(j.remaining for j in link.jobs) * len(link.jobs) / link.capacity)
        return max(best, 0.0)

    def _integrate(self, dt: float) -> None:
        prefilling = [s for s in self._active.values() if s.phase == "prefill"]
        if prefilling:
            tokens = self.instance_type.prefill_tokens_per_s / len(prefilling) * dt
            for seq in prefilling:
                seq.prefill_left = max(0.0, seq.prefill_left - tokens)
        for seq in self._active.values():
            if seq.phase == "decode":
                seq.generated = min(float(seq.output_tokens), seq.generated + self.decode_rate * dt)
        for link in self._links():
            if link.jobs:
                moved = link.capacity / len(link.jobs) * dt
                for job in link.jobs:
                    job.remaining = max(0.0, job.remaining - moved)

    def _advance_to(self, t_end: float) -> None:
        """Run the model from ``_t`` to ``t_end`` event by event (or to the kill deadline, and die)."""
        if self.stopped:
            return
        while True:
            self._settle()
            horizon = t_end
            if self._kill_deadline is not None and self._kill_deadline < horizon:
                horizon = self._kill_deadline
            if horizon <= self._t:
                break
            span = horizon - self._t
            step = self._next_event_in()
            if step >= span:
                self._integrate(span)
                self._t = horizon
            else:
                self._integrate(step)
                self._t += step
        if self._kill_deadline is not None and self._t >= self._kill_deadline:
            self._die(notify=True)

    def _die(self, *, notify: bool) -> None:
        self.stopped = True
        for seq in [*self._active.values(), *self._queue]:
            self._leave(seq, "lost")
        self._active.clear()
        self._queue.clear()
        for link in self._links():
            for job in link.jobs:
                self._resolved.append(
                    (job.outcome, f"the worker stopped at {self._t:.3f} before the transfer ended")
                )
            link.jobs.clear()
        self._transfers.clear()
        if not notify:
            self._outbox.clear()
            self._resolved.clear()
            for task in list(self._tasks):
                task.cancel()
