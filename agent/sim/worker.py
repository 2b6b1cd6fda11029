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
The model (:class:`~agent.sim.worker_model.WorkerModel`: slots, shared prefill, decode, KV links, prefix
cache, death, fabric; its module doc has the rules) is exact between events, so the result does not
depend on how often it is stepped. A timer every ``step_s`` clock seconds (and every op, before it acts)
brings it to the clock's now and publishes what happened. The metrics' ``kv_blocks_*`` describe the prefix
cache. ``kill_at(deadline)`` (or ``stop_at``) stops the worker hard at the deadline: a ``lost`` update for
each request still here, an error reply to each unfinished transfer, and from then on no reply, no update,
no metrics. ``kill_now()``: a crash, at once and silent (not even ``lost``; events not yet published are
dropped too). A dead worker stays subscribed and silent, like a node that vanished: requesters time out
(no "no responders").
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any, Final

import structlog
from nats.aio.msg import Msg

from agent.bus import Bus, Handler, Rejected
from agent.core.catalog import InstanceType, Tier
from agent.runtime.actor import Actor, Listen
from agent.runtime.clock import Clock
from agent.sim.shared_link import ps_finish_offsets
from agent.sim.worker_model import (
    Ack,
    Fabric,
    Fate,
    Pending,
    Phase,
    Refused,
    WorkerModel,
)
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

__all__ = ["STATUS_BLOCKS", "Fabric", "WorkerEmulator", "ps_finish_offsets"]

# Block hashes listed in WorkerStatus.cached_blocks.
STATUS_BLOCKS: Final = 256

_log = structlog.get_logger("agent.sim.worker")


class WorkerEmulator(Actor):
    """The worker protocol on NATS around a :class:`WorkerModel`: decode, act on the model, publish."""

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
        if not metrics_interval_s > 0:
            raise ValueError("worker emulator: need metrics_interval_s > 0")
        self.model = WorkerModel(
            worker_id=worker_id,
            instance_id=instance_id,
            instance_type=instance_type,
            start_at=clock.now(),
            kv_bytes_per_token=kv_bytes_per_token,
            same_node_bytes_per_s=same_node_bytes_per_s,
            cross_node_bytes_per_s=cross_node_bytes_per_s,
            block_tokens=block_tokens,
            cache_blocks=cache_blocks,
            max_queued=max_queued,
            stop_at=stop_at,
            fabric=fabric,
        )
        self.worker_id = worker_id
        self.instance_id = instance_id
        self.instance_type = instance_type
        self.pool = pool
        self.tier: Tier = tier
        self.metrics_interval_s = metrics_interval_s
        self.updates_published = 0
        self._flush_lock = asyncio.Lock()
        self._waiting: dict[int, asyncio.Future[Ack | str]] = {}  # transfer id → its outcome, once it ends
        self._tasks: set[asyncio.Task[None]] = set()
        self._reported = (0, 0, 0)  # the model's completed requests, prompt and output tokens, last report
        self._last_report: float | None = None
        self._next_report = 0.0

    # --- public: tests, the demo ------------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        """Killed: answers nothing, publishes nothing."""
        return self.model.stopped

    # Cumulative counters (tests, the simulated cloud), and the clock time each request completed here.
    @property
    def started(self) -> int:
        return self.model.started

    @property
    def completed(self) -> int:
        return self.model.completed

    @property
    def moved_out(self) -> int:
        return self.model.moved_out

    @property
    def lost(self) -> int:
        return self.model.lost

    @property
    def completions(self) -> dict[str, float]:
        return self.model.completions

    @property
    def transfers_in_progress(self) -> int:
        """KV transfers and block copies under way (waiting for their bytes to move)."""
        return self.model.transfers_in_progress

    def phase_of(self, request_id: str) -> Phase | Fate | None:
        """Where a request is on this worker: a phase, what became of it, or None if never seen."""
        return self.model.phase_of(request_id)

    def alive_at(self, t: float) -> bool:
        """Not dead at clock time ``t`` (killed, or past its kill deadline)."""
        return self.model.alive_at(t)

    def kill_at(self, deadline: float) -> None:
        """Stop hard at ``deadline`` (clock time): what is still here then is lost (see the module doc)."""
        self.model.kill_at(deadline)

    def kill_now(self) -> None:
        """Crash now, silently: no ``lost`` update, no reply, no metrics from now on."""
        if self.model.stopped:
            return
        self.model.advance_to(self.clock.now())
        if self.model.stopped:  # it reached its kill deadline first: that death is told
            return
        self.model.crash()
        self._waiting.clear()
        for task in list(self._tasks):
            task.cancel()

    async def sync(self) -> None:
        """Bring the model to the clock's now and publish what happened, metrics when due (the timer's
        step; tests call it after moving a fake clock)."""
        now = self.clock.now()
        self.model.advance_to(now)
        await self._flush()
        if not self.model.stopped and self._last_report is not None and now >= self._next_report:
            await self._publish_metrics(now, now - self._last_report)

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
        if self._last_report is None and not self.model.stopped:
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

    # --- queries ----------------------------------------------------------------------------------

    async def on_status(self, query: StatusQuery, raw: Msg) -> None:
        if not await self._enter():
            return
        m = self.model
        status = WorkerStatus(
            **self._env(correlation_id=query.msg_id),
            worker_id=self.worker_id,
            instance_id=self.instance_id,
            instance_type=self.instance_type.name,
            accepting=m.has_room(),
            max_batch=m.max_batch,
            active=m.active,
            queued=m.queued,
            prefill_tokens_per_s=self.instance_type.prefill_tokens_per_s,
            decode_tokens_per_s=self.instance_type.decode_tokens_per_s,
            cached_blocks=list(itertools.islice(m.cached_blocks(), STATUS_BLOCKS)),
        )
        await self.bus.respond(raw, status)

    async def on_inflight(self, query: InflightQuery, raw: Msg) -> None:
        if not await self._enter():
            return
        reply = InflightList(
            **self._env(correlation_id=query.msg_id),
            worker_id=self.worker_id,
            instance_id=self.instance_id,
            decode_tokens_per_s=self.instance_type.decode_tokens_per_s,
            max_batch=self.model.max_batch,
            requests=self.model.inflight(),
        )
        await self.bus.respond(raw, reply)

    async def on_hot_blocks(self, query: HotBlocksQuery, raw: Msg) -> None:
        if not await self._enter():
            return
        blocks = self.model.hot_blocks(query.limit)
        await self.bus.respond(
            raw, HotBlocks(**self._env(correlation_id=query.msg_id), worker_id=self.worker_id, blocks=blocks)
        )

    # --- commands ---------------------------------------------------------------------------------

    async def on_submit(self, cmd: Submit, raw: Msg) -> None:
        await self._command(
            raw,
            cmd,
            lambda m: m.submit(
                cmd.request_id,
                cmd.prompt_tokens,
                cmd.expected_output_tokens,
                cmd.prefix_blocks,
                already_generated=cmd.already_generated,
            ),
        )

    async def on_reprefill(self, cmd: Reprefill, raw: Msg) -> None:
        await self._command(
            raw,
            cmd,
            lambda m: m.reprefill(
                cmd.request_id,
                cmd.prompt_tokens,
                cmd.generated_tokens,
                cmd.expected_remaining_tokens,
                cmd.prefix_blocks,
                reply_by=cmd.reply_by,
            ),
        )

    async def on_resume(self, cmd: Resume, raw: Msg) -> None:
        await self._command(
            raw,
            cmd,
            lambda m: m.resume(
                cmd.request_id,
                cmd.source_worker_id,
                cmd.prompt_tokens,
                cmd.generated_tokens,
                cmd.expected_remaining_tokens,
                cmd.prefix_blocks,
            ),
        )

    async def on_cancel(self, cmd: Cancel, raw: Msg) -> None:
        await self._command(raw, cmd, lambda m: m.cancel(cmd.request_id))

    async def on_transfer_kv(self, cmd: TransferKv, raw: Msg) -> None:
        await self._command(
            raw,
            cmd,
            lambda m: m.transfer_kv(
                cmd.request_id, cmd.target_worker_id, cmd.target_instance_id, reply_by=cmd.reply_by
            ),
        )

    async def on_receive_blocks(self, cmd: ReceiveBlocks, raw: Msg) -> None:
        # The message has no request id: a retry keeps its msg_id.
        await self._command(
            raw,
            cmd,
            lambda m: m.receive_blocks(cmd.msg_id, cmd.source_worker_id, cmd.blocks, reply_by=cmd.reply_by),
        )

    async def _command(self, raw: Msg, cmd: Message, act: Callable[[WorkerModel], Ack | Pending]) -> None:
        """Act on the model brought to now and publish what happened; answer with the ack at once, or,
        for a transfer, from a task of its own when its bytes have moved (a long transfer never holds up
        another op). A refusal is answered as an error reply by the bus."""
        if not await self._enter():
            return
        try:
            outcome = act(self.model)
        except Refused as err:
            raise Rejected(str(err)) from None
        if isinstance(outcome, Ack):
            await self._flush()
            await self._reply(raw, cmd.msg_id, outcome)
            return
        # Waited for before the flush, which may already carry the end (nothing to move ends at once).
        ended = self._waiting.setdefault(outcome.transfer_id, asyncio.get_running_loop().create_future())
        await self._flush()
        self._reply_when_done(ended, raw, cmd)

    # --- replies ----------------------------------------------------------------------------------

    def _env(self, sent_at: float | None = None, correlation_id: str = "") -> Envelope:
        at = self.clock.now() if sent_at is None else sent_at
        return envelope(self.worker_id, sent_at=at, correlation_id=correlation_id)

    async def _enter(self) -> bool:
        """Bring the model to now; False when the worker is dead (it then answers nothing)."""
        if self.model.stopped:
            return False
        self.model.advance_to(self.clock.now())
        await self._flush()
        return not self.model.stopped

    async def _reply(self, raw: Msg, msg_id: str, ack: Ack) -> None:
        reply = WorkerAck(**self._env(correlation_id=msg_id), **dataclasses.asdict(ack))
        await self.bus.respond(raw, reply)

    def _reply_when_done(self, ended: asyncio.Future[Ack | str], raw: Msg, cmd: Message) -> None:
        tag = tag_of(type(cmd))

        async def reply() -> None:
            outcome = await asyncio.shield(ended)
            try:
                if isinstance(outcome, Ack):
                    await self._reply(raw, cmd.msg_id, outcome)
                else:
                    error = ErrorReply(**self._env(correlation_id=cmd.msg_id), error=f"{tag}: {outcome}")
                    await self.bus.respond(raw, error)
            except Exception as err:  # the connection is closing: nobody is left to tell
                _log.warning("reply_failed", worker_id=self.worker_id, op=tag, error=str(err))

        task = asyncio.ensure_future(reply())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        """Publish the updates the model produced so far (in order), then release the replies waiting on
        the transfers that ended."""
        async with self._flush_lock:
            events = self.model.take_events()
            subject = self.bus.subjects.request_update(self.worker_id)
            for u in events.updates:
                update = RequestUpdate(
                    **self._env(sent_at=u.at),
                    request_id=u.request_id,
                    worker_id=self.worker_id,
                    state=u.state,
                    generated_tokens=u.generated_tokens,
                )
                await self.bus.publish(subject, update)
                self.updates_published += 1
            for end in events.ended:
                waiting = self._waiting.pop(end.transfer_id, None)
                if waiting is not None and not waiting.done():
                    waiting.set_result(end.outcome)

    async def _publish_metrics(self, now: float, interval: float) -> None:
        """The counters since the last report; the next is due ``metrics_interval_s`` later."""
        m = self.model
        totals = (m.completed, m.completed_prompt_tokens, m.completed_output_tokens)
        completed, prompt, output = (total - seen for total, seen in zip(totals, self._reported, strict=True))
        self._reported = totals
        report = WorkerMetrics(
            **self._env(sent_at=now),
            worker_id=self.worker_id,
            instance_id=self.instance_id,
            instance_type=self.instance_type.name,
            pool=self.pool,
            tier=self.tier,
            interval_s=interval,
            requests_completed=completed,
            prompt_tokens=prompt,
            output_tokens=output,
            in_flight=m.active,
            queued=m.queued,
            kv_blocks_used=m.kv_blocks_used,
            kv_blocks_total=m.cache_blocks,
        )
        if self._last_report is None:
            self._next_report = now
        self._last_report = now
        while self._next_report <= now:  # a drift-free schedule
            self._next_report += self.metrics_interval_s
        await self.bus.publish(self.bus.subjects.worker_metrics(self.worker_id), report)
