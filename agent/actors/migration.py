"""MigrationCoordinator actor.

Listens to: ``{ns}.evt.spot.drain.*`` (DrainOrder from the spot monitor).
Publishes:  ``{ns}.evt.migration.report.{instance_id}`` (MigrationReport); commands the router
(``{ns}.cmd.router.{op}``) and the workers (``{ns}.req.worker.{worker_id}.{op}``), request/reply.
Guarantees, for a drain on a notice, per worker of the instance:
1. ``stop_routing`` is sent first, at once.
2. The worker's in-flight requests and every routable target's status are read (in parallel).
3. ``agent.core.drain.plan_drain`` decides each request: finish in place, KV transfer, re-prefill, requeue
   (``[migration] policy``; the default never leaves a request depending on the node past its deadline
   minus ``safety_margin_seconds``).
4. The commands run with at most ``max_concurrency`` in flight; each has a timeout that never passes the
   deadline. A failed transfer or re-prefill is retried on the next target, then requeued through the
   router: a request is never dropped by the coordinator.
5. At the deadline minus the margin, anything still on the worker (a request expected to finish in place
   that did not) is cancelled and requeued with the tokens it has generated.
6. Hot prefix blocks are copied to a survivor with the time left; a MigrationReport says what happened.
For a drain of workers that went silent (reason ``lost``), the router requeues their requests from the
prompt (``worker_lost``); nothing can be read from a dead worker.

Durable (``[state]``, key ``migration``): the drains in progress, with their counts so far, are saved when
one starts or ends and every ``snapshot_seconds`` while one runs. A restarted agent (or a new leader)
finishes a drain whose deadline has not passed (and a ``lost`` one: the router's requeue is idempotent),
and reports any other as ``interrupted_by: restart`` with the counts saved. On SIGTERM, running drains get
most of the shutdown grace to finish (their waits end at once, so what was left to finish in place is
taken back and requeued); one still running then is reported ``interrupted_by: shutdown`` and kept, so that
a restarted agent finishes it. A drain is never dropped without a report.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal, TypeVar

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from agent.bus import Bus
from agent.config import MigrationSettings
from agent.core.catalog import Catalog
from agent.core.drain import DrainAction, DrainSettings, InFlight, TargetWorker, plan_drain
from agent.core.workers import WorkerRegistry
from agent.runtime.actor import Listen
from agent.runtime.clock import Clock, wait_event
from agent.runtime.persistent_actor import PersistentActor
from agent.runtime.state_store import Snapshots, decode_state, encode_state
from schemas import (
    Block,
    Cancel,
    DrainOrder,
    ErrorReply,
    HotBlocks,
    HotBlocksQuery,
    InflightList,
    InflightQuery,
    InflightRequest,
    Message,
    MigrationCounts,
    MigrationReport,
    ReceiveBlocks,
    Reprefill,
    Requeue,
    Resume,
    RouterAck,
    StatusQuery,
    StopRouting,
    TransferKv,
    WorkerAck,
    WorkerLost,
    WorkerStatus,
)

R = TypeVar("R", bound=Message)
_GB = 1e9


class CommandFailed(Exception):
    def __init__(self, text: str, *, unreachable: bool = False) -> None:
        super().__init__(text)
        self.unreachable = unreachable
        """No answer at all (a timeout, no responder): the worker is likely gone."""


@dataclass(slots=True)
class _Tally:
    finished_in_place: int = 0
    kv_moved: int = 0
    reprefilled: int = 0
    requeued: int = 0
    failed: int = 0
    lost: int = 0
    requests: int = 0
    bytes_moved: float = 0.0
    tokens_recomputed: float = 0.0
    hot_blocks: int = 0
    first_commands_at: float = 0.0
    placed: set[str] = field(default_factory=set)
    dead: set[str] = field(default_factory=set)
    """Targets that did not answer: skipped for the rest of this drain."""
    seen: set[str] = field(default_factory=set)
    """Request ids counted in ``requests`` (a resumed drain reads them again)."""

    def saved(self) -> TallyState:
        return TallyState(
            **{name: getattr(self, name) for name in TallyState.__struct_fields__ if name != "seen"},
            seen=sorted(self.seen),
        )

    @classmethod
    def from_saved(cls, state: TallyState) -> _Tally:
        counts = {name: getattr(state, name) for name in TallyState.__struct_fields__ if name != "seen"}
        return cls(**counts, seen=set(state.seen))


_Count = Annotated[int, msgspec.Meta(ge=0)]
_Amount = Annotated[float, msgspec.Meta(ge=0)]


class TallyState(msgspec.Struct, frozen=True):
    finished_in_place: _Count
    kv_moved: _Count
    reprefilled: _Count
    requeued: _Count
    failed: _Count
    lost: _Count
    requests: _Count
    bytes_moved: _Amount
    tokens_recomputed: _Amount
    hot_blocks: _Count
    first_commands_at: float
    seen: list[str]


class DrainState(msgspec.Struct, frozen=True):
    order: DrainOrder
    tally: TallyState
    started: float
    reported: bool = False
    """An ``interrupted_by: shutdown`` report went out already: a restart finishes it or stays silent."""


class MigrationState(msgspec.Struct, frozen=True, tag="migration.v1", tag_field="kind"):
    drains: list[DrainState]


@dataclass(slots=True)
class _Running:
    order: DrainOrder
    tally: _Tally
    started: float
    reported: bool = False


@dataclass(frozen=True, slots=True)
class _WorkerDrain:
    """What every command of one worker's drain needs."""

    worker_id: str
    deadline: float
    tally: _Tally
    """The node's: shared by the drains of all its workers."""
    requests: dict[str, InflightRequest]
    """What the worker had in flight when asked, by request id."""
    targets: dict[str, TargetWorker]
    """This worker's share of the free slots of every routable worker elsewhere."""
    target_order: list[str]
    """Target ids, most free slots first."""
    settings: DrainSettings
    gate: asyncio.Semaphore
    """Bounds the placements (and take-backs) in flight at once."""
    link: asyncio.Lock
    """The node's egress: the plan sends KV transfers one after another over it (its timing assumes so)."""


class MigrationCoordinatorActor(PersistentActor):
    name = "migration_coordinator"
    state_key = "migration"

    def __init__(
        self,
        bus: Bus,
        clock: Clock,
        *,
        catalog: Catalog,
        settings: MigrationSettings,
        registry: WorkerRegistry,
        drained_elsewhere: Callable[[str], bool] | None = None,
        snapshots: Snapshots | None = None,
        shutdown_wait_s: float = 3.0,
        registry_ready: asyncio.Event | None = None,
    ) -> None:
        super().__init__(bus, clock, snapshots=snapshots)
        self.catalog = catalog
        self.settings = settings
        self.registry = registry
        self.drained_elsewhere = drained_elsewhere
        """True for a node whose workers the actuator drains (Dynamo's: the frontend migrates their
        requests), so that this coordinator neither commands them nor reports them."""
        self.reports: list[MigrationReport] = []
        self.shutdown_wait_s = shutdown_wait_s
        """On SIGTERM, how long running drains get to finish before they are reported as interrupted."""
        self.registry_ready = registry_ready
        """Set once the spot monitor has loaded the (shared) registry: resumed drains wait for it."""
        self._active: dict[str, asyncio.Task[None]] = {}
        self._running: dict[str, _Running] = {}
        self._log = structlog.get_logger("agent.migration").bind(actor=self.name)

    def subscriptions(self) -> Sequence[Listen]:
        return [Listen(self.bus.subjects.spot_drain_all, DrainOrder, self.on_drain)]

    async def on_drain(self, order: DrainOrder, _raw: Msg) -> None:
        if order.instance_id in self._active and not self._active[order.instance_id].done():
            return  # already draining this node
        if (
            order.reason != "lost"
            and self.drained_elsewhere is not None
            and self.drained_elsewhere(order.instance_id)
        ):
            self._log.info("drain_left_to_actuator", instance_id=order.instance_id)
            return
        self._start_drain(_Running(order, _Tally(), self.clock.now()))
        await self.save_now()  # a drain in progress survives kill -9 from here on

    def _start_drain(self, running: _Running, *, resumed: bool = False) -> None:
        # A drain runs for up to the notice's length: in its own task, so other orders are not held up.
        instance_id = running.order.instance_id
        self._running[instance_id] = running
        task = asyncio.ensure_future(self._drain(running, resumed=resumed))
        self._active[instance_id] = task
        task.add_done_callback(functools.partial(self._finished, instance_id))

    def _finished(self, instance_id: str, task: asyncio.Task[None]) -> None:
        if self._active.get(instance_id) is task:
            del self._active[instance_id]
        if not task.cancelled() and task.exception() is not None:
            self._log.error("drain_failed", instance_id=instance_id, exc_info=task.exception())

    # --- durable state ---------------------------------------------------------------------------

    def encode_state(self) -> bytes:
        drains = [DrainState(r.order, r.tally.saved(), r.started, r.reported) for r in self._running.values()]
        return encode_state(MigrationState(drains))

    def restore_state(self, data: bytes) -> None:
        saved = decode_state(MigrationState, data)
        self._running = {
            d.order.instance_id: _Running(d.order, _Tally.from_saved(d.tally), d.started, d.reported)
            for d in saved.drains
        }

    async def on_restored(self) -> None:
        """Drains that were running when the agent stopped: finished if there is still time, else
        reported as interrupted (unless that was done at a SIGTERM)."""
        now = self.clock.now()
        for running in list(self._running.values()):
            order = running.order
            log = self._log.bind(instance_id=order.instance_id, correlation_id=order.correlation_id)
            if order.reason == "lost" or now < order.deadline:
                log.info("drain_resumed", deadline_in_s=round(order.deadline - now, 3))
                self._start_drain(running, resumed=True)
                continue
            del self._running[order.instance_id]
            if not running.reported:
                log.warning("drain_interrupted", by="restart")
                await self._publish_report(running, interrupted_by="restart")
        await self.save_now()

    async def on_stop(self) -> None:
        """On SIGTERM: running drains get ``shutdown_wait_s`` to finish; any still running then is
        reported as interrupted (and kept in the saved state), and left to end on its own."""
        running = [task for task in self._active.values() if not task.done()]
        if running and self.stopping.is_set():
            await asyncio.wait(running, timeout=self.shutdown_wait_s)
            for r in self._running.values():
                if not r.reported:
                    self._log.warning("drain_interrupted", instance_id=r.order.instance_id, by="shutdown")
                    r.reported = True
                    await self._publish_report(r, interrupted_by="shutdown")
        await super().on_stop()

    # --- commands --------------------------------------------------------------------------------

    def _after(self, real_s: float) -> float:
        """The clock time ``real_s`` real seconds from now (a scaled clock runs faster than the network)."""
        return self.clock.now() + real_s / self.clock.real_seconds(1.0)

    def _timeout(self, deadline: float, *, cap: bool = True) -> float:
        """Real seconds to wait for a reply: the command timeout (unless ``cap`` is off, for a command whose
        reply is due only when its work is done), and never past the deadline."""
        left = self.clock.real_seconds(max(deadline - self.clock.now(), 0.0))
        return max(0.05, min(self.settings.command_timeout_seconds, left) if cap else left)

    async def _ask(
        self, subject: str, message: Message, reply: type[R], deadline: float, *, cap: bool = True
    ) -> R:
        self.changed()  # a drain's counts move with its commands: saved within snapshot_seconds
        try:
            answer = await self.bus.request(subject, message, reply, self._timeout(deadline, cap=cap))
        except (NatsError, TimeoutError) as err:
            raise CommandFailed(f"{subject}: {type(err).__name__}", unreachable=True) from None
        except msgspec.DecodeError as err:
            raise CommandFailed(f"{subject}: unreadable reply: {err}") from None
        if isinstance(answer, ErrorReply):
            raise CommandFailed(f"{subject}: {answer.error}")
        if not getattr(answer, "ok", True):
            raise CommandFailed(f"{subject}: refused: {getattr(answer, 'detail', '')}")
        return answer

    async def _worker(
        self, worker_id: str, op: str, message: Message, reply: type[R], deadline: float, *, cap: bool = True
    ) -> R:
        subject = self.bus.subjects.worker_request(worker_id, op)
        return await self._ask(subject, message, reply, deadline, cap=cap)

    async def _router(self, op: str, message: Message, deadline: float) -> RouterAck:
        return await self._ask(self.bus.subjects.router_command(op), message, RouterAck, deadline)

    # --- one drain -------------------------------------------------------------------------------

    async def _drain(self, running: _Running, *, resumed: bool = False) -> None:
        order, tally = running.order, running.tally
        if resumed and self.registry_ready is not None:
            # Its targets come from the registry, which the spot monitor may still be loading.
            await wait_event(self.registry_ready, self.settings.command_timeout_seconds)
        if order.reason == "lost":
            await self._requeue_lost(order, tally)
        else:
            n = len(order.worker_ids)
            await asyncio.gather(
                *(self._drain_worker(order, w, tally, (k, n)) for k, w in enumerate(order.worker_ids))
            )
        report = await self._publish_report(running)
        if self._running.get(order.instance_id) is running:
            del self._running[order.instance_id]
        await self.save_now()
        self._log.info(
            "migration_reported",
            instance_id=order.instance_id,
            correlation_id=order.correlation_id,
            requests=tally.requests,
            finished_in_place=tally.finished_in_place,
            kv_moved=tally.kv_moved,
            reprefilled=tally.reprefilled,
            requeued=tally.requeued,
            lost=tally.lost,
            seconds_before_deadline=round(order.deadline - report.completed_at, 3),
        )

    async def _publish_report(
        self, running: _Running, interrupted_by: Literal["restart", "shutdown"] | None = None
    ) -> MigrationReport:
        order, tally = running.order, running.tally
        report = MigrationReport(
            **self.bus.envelope(correlation_id=order.correlation_id),
            instance_id=order.instance_id,
            policy=self.settings.policy,
            reason=order.reason,
            requests=tally.requests,
            counts=MigrationCounts(
                finished_in_place=tally.finished_in_place,
                kv_moved=tally.kv_moved,
                reprefilled=tally.reprefilled,
                requeued=tally.requeued,
                failed=tally.failed,
            ),
            lost=tally.lost,
            bytes_moved=tally.bytes_moved,
            tokens_recomputed=tally.tokens_recomputed,
            hot_blocks_moved=tally.hot_blocks,
            notice_at=order.sent_at,
            first_commands_at=tally.first_commands_at or running.started,
            completed_at=self.clock.now(),
            deadline=order.deadline,
            interrupted_by=interrupted_by,
        )
        self.reports.append(report)
        await self.bus.publish(self.bus.subjects.migration_report(order.instance_id), report)
        return report

    async def _requeue_lost(self, order: DrainOrder, tally: _Tally) -> None:
        for worker_id in order.worker_ids:
            tally.requests += await self._worker_lost(worker_id, tally)
        tally.first_commands_at = self.clock.now()

    async def _worker_lost(self, worker_id: str, tally: _Tally) -> int:
        """Have the router requeue, from the prompt, everything it sent ``worker_id`` and saw no end of."""
        far = self._after(self.settings.command_timeout_seconds)
        try:
            ack = await self._router(
                "worker_lost", WorkerLost(**self.bus.envelope(), worker_id=worker_id), far
            )
        except CommandFailed as err:
            self._log.error("router_unreachable", worker_id=worker_id, error=str(err))
            return 0
        tally.requeued += ack.requests
        return ack.requests

    async def _drain_worker(
        self, order: DrainOrder, worker_id: str, tally: _Tally, share: tuple[int, int] = (0, 1)
    ) -> None:
        started = self.clock.now()
        await self._stop_routing(worker_id, order.deadline)
        drain = await self._survey(order, worker_id, tally, share)
        if drain is None:
            return
        plan = plan_drain(
            [_in_flight(r) for r in drain.requests.values()], list(drain.targets.values()), drain.settings
        )
        await self._move(drain, [a for a in plan.actions if a.kind != "finish"])
        await self._hot_blocks(drain)
        await self._safety_net(drain, [a for a in plan.actions if a.kind == "finish"], started)

    async def _stop_routing(self, worker_id: str, deadline: float) -> None:
        """1. Stop routing first: nothing new should land on a node that is going."""
        try:
            await self._router(
                "stop_routing", StopRouting(**self.bus.envelope(), worker_id=worker_id), deadline
            )
        except CommandFailed as err:
            self._log.warning("stop_routing_failed", worker_id=worker_id, error=str(err))

    async def _survey(
        self, order: DrainOrder, worker_id: str, tally: _Tally, share: tuple[int, int]
    ) -> _WorkerDrain | None:
        """2. What is in flight on the worker, and where it could go; None when the worker cannot say."""
        deadline = order.deadline
        # The read must give up while the fallback (the router requeues from the prompt) still has time
        # before the node dies: by the deadline less the safety margin, not the deadline itself.
        read_by = max(self.clock.now(), deadline - self.settings.safety_margin_seconds)
        try:
            inflight = await self._worker(
                worker_id, "inflight", InflightQuery(**self.bus.envelope()), InflightList, read_by
            )
        except CommandFailed as err:
            # Nothing can be read from this worker: the router requeues what it sent there, from the prompt.
            self._log.error("inflight_unreadable", worker_id=worker_id, error=str(err))
            await self._worker_lost(worker_id, tally)
            return None
        targets = _share_slots(await self._targets(order.instance_id, deadline), *share)
        fresh = {r.request_id for r in inflight.requests} - tally.seen
        tally.requests += len(fresh)
        tally.seen |= fresh
        return _WorkerDrain(
            worker_id=worker_id,
            deadline=deadline,
            tally=tally,
            requests={r.request_id: r for r in inflight.requests},
            targets=targets,
            target_order=sorted(targets, key=lambda t: -targets[t].free_slots),
            settings=DrainSettings(
                time_left_s=max(deadline - self.clock.now(), 0.0),
                source_decode_tokens_per_s=inflight.decode_tokens_per_s,
                source_max_batch=max(inflight.max_batch, 1),
                same_node_bytes_per_s=self.settings.same_node_gbytes_per_s * _GB,
                cross_node_bytes_per_s=self.settings.cross_node_gbytes_per_s * _GB,
                safety_margin_s=self.settings.safety_margin_seconds,
                block_tokens=self.settings.block_tokens,
                policy=self.settings.policy,
            ),
            gate=asyncio.Semaphore(self.settings.max_concurrency),
            link=asyncio.Lock(),
        )

    async def _move(self, drain: _WorkerDrain, moves: list[DrainAction]) -> None:
        """4. Every planned move at once, in the plan's order: the gate bounds placements, cancels go out
        at once, transfers queue on the link."""
        tasks = [asyncio.ensure_future(self._execute(drain, action)) for action in moves]
        drain.tally.first_commands_at = max(drain.tally.first_commands_at, self.clock.now())
        if tasks:
            await asyncio.gather(*tasks)

    async def _safety_net(self, drain: _WorkerDrain, finishes: list[DrainAction], started: float) -> None:
        """5. For what was left to finish in place: look when the plan expects them done, and at the deadline
        minus the margin; whatever is still there then goes back to the router."""
        if not finishes:
            return
        finishing = {a.request_id: drain.requests[a.request_id].generated_tokens for a in finishes}
        due = drain.deadline - self.settings.safety_margin_seconds
        expected = max(a.ready_s for a in finishes)
        await self.clock.wait_until(min(due, started + expected * 1.1 + 1.0), self.stopping)
        finishing = await self._finished_in_place(drain, finishing)
        if finishing and not self.stopping.is_set():
            await self.clock.wait_until(due, self.stopping)
            finishing = await self._finished_in_place(drain, finishing)

        async def take_back(rid: str, tokens: int) -> None:
            async with drain.gate:
                await self._take_back(drain, drain.requests[rid], tokens)

        await asyncio.gather(*(take_back(rid, tokens) for rid, tokens in finishing.items()))

    async def _targets(self, instance_id: str, deadline: float) -> dict[str, TargetWorker]:
        candidates = self.registry.routable(exclude_instance=instance_id)

        async def status(worker_id: str) -> WorkerStatus | None:
            try:
                return await self._worker(
                    worker_id, "status", StatusQuery(**self.bus.envelope()), WorkerStatus, deadline
                )
            except CommandFailed:
                return None

        answers = await asyncio.gather(*(status(w.worker_id) for w in candidates))
        targets: dict[str, TargetWorker] = {}
        for answer in answers:
            if answer is None or not answer.accepting:
                continue
            targets[answer.worker_id] = TargetWorker(
                worker_id=answer.worker_id,
                instance_id=answer.instance_id,
                same_node=answer.instance_id == instance_id,
                free_slots=max(answer.max_batch - answer.active - answer.queued, 0),
                prefill_tokens_per_s=answer.prefill_tokens_per_s,
                decode_tokens_per_s=answer.decode_tokens_per_s,
                max_batch=max(answer.max_batch, 1),
                cached_blocks=frozenset(answer.cached_blocks),
            )
        return targets

    async def _execute(self, drain: _WorkerDrain, action: DrainAction) -> None:
        request = drain.requests[action.request_id]
        left: int | None = None
        if action.kind == "transfer" and action.target is not None and action.target not in drain.tally.dead:
            outcome = await self._transfer(drain, request, drain.targets[action.target])
            if outcome == "moved":
                return
            left = outcome
        # Re-prefill or requeue (planned, or after a failed transfer): take it off the source first, which
        # is what needs the node; placing it elsewhere does not, and may take as long as it needs.
        generated = left if left is not None else await self._cancel(drain, request, request.generated_tokens)
        if generated is None:
            drain.tally.finished_in_place += 1  # it ended on the source before it could be moved
            return
        async with drain.gate:
            if action.kind in ("transfer", "reprefill") and await self._place(
                drain, action, request, generated
            ):
                return
            await self._requeue(drain, request, generated)

    async def _transfer(
        self, drain: _WorkerDrain, request: InflightRequest, target: TargetWorker
    ) -> Literal["moved"] | int | None:
        """Move the KV cache, then resume on the target. ``"moved"`` when it worked; the generated tokens
        when the KV left the source but the target did not resume it (it must be placed elsewhere, with
        no cancel: the source no longer has it); None when the source still has it."""
        env = self.bus.envelope
        rid = request.request_id
        tally = drain.tally
        due = drain.deadline - self.settings.safety_margin_seconds
        try:
            async with drain.link:  # the plan sends transfers one after another over the node's egress
                ack = await self._worker(
                    drain.worker_id,
                    "transfer_kv",
                    TransferKv(
                        **env(),
                        request_id=rid,
                        target_worker_id=target.worker_id,
                        target_instance_id=target.instance_id,
                        reply_by=due,
                    ),
                    WorkerAck,
                    due,
                    cap=False,
                )
        except CommandFailed as err:
            tally.failed += 1
            self._log.warning("transfer_failed", request_id=rid, target=target.worker_id, error=str(err))
            return None
        generated: int = ack.generated_tokens or request.generated_tokens
        try:
            await self._worker(
                target.worker_id,
                "resume",
                Resume(
                    **env(),
                    request_id=rid,
                    source_worker_id=drain.worker_id,
                    prompt_tokens=request.prompt_tokens,
                    generated_tokens=generated,
                    expected_remaining_tokens=request.expected_remaining_tokens,
                    prefix_blocks=request.prefix_blocks,
                ),
                WorkerAck,
                self._after(self.settings.command_timeout_seconds),
            )
        except CommandFailed as err:
            tally.failed += 1
            if err.unreachable:
                tally.dead.add(target.worker_id)
            self._log.warning("resume_failed", request_id=rid, target=target.worker_id, error=str(err))
            return generated
        tally.kv_moved += 1
        tally.bytes_moved += ack.bytes_moved
        tally.placed.add(rid)
        return "moved"

    async def _place(
        self, drain: _WorkerDrain, action: DrainAction, request: InflightRequest, generated: int
    ) -> bool:
        """Re-prefill on another worker (at most three tries): the planned target first for a planned
        re-prefill; never the target of a transfer that just failed."""
        rid = request.request_id
        tally = drain.tally
        first = [action.target] if action.kind == "reprefill" and action.target else []
        choices = first + [t for t in drain.target_order if t not in first and t != action.target]
        for target_id in [t for t in choices if t not in tally.dead][:3]:
            due = self._after(self.settings.command_timeout_seconds)
            try:
                await self._worker(
                    target_id,
                    "reprefill",
                    Reprefill(
                        **self.bus.envelope(),
                        request_id=rid,
                        source_worker_id=drain.worker_id,
                        prompt_tokens=request.prompt_tokens,
                        generated_tokens=generated,
                        expected_remaining_tokens=request.expected_remaining_tokens,
                        reply_by=due,
                        prefix_blocks=request.prefix_blocks,
                    ),
                    WorkerAck,
                    due,
                )
            except CommandFailed as err:
                tally.failed += 1
                if err.unreachable:
                    tally.dead.add(target_id)
                self._log.warning("reprefill_failed", request_id=rid, target=target_id, error=str(err))
                continue
            tally.reprefilled += 1
            as_planned = action.kind == "reprefill" and target_id == action.target
            tally.tokens_recomputed += (
                action.tokens_recomputed if as_planned else request.prompt_tokens + generated
            )
            tally.placed.add(rid)
            return True
        return False

    async def _cancel(self, drain: _WorkerDrain, request: InflightRequest, generated: int) -> int | None:
        """Take the request off the source: the tokens it has generated, or None when the worker says it
        no longer has it (it finished meanwhile: there is nothing left to move)."""
        try:
            ack = await self._worker(
                drain.worker_id,
                "cancel",
                Cancel(**self.bus.envelope(), request_id=request.request_id),
                WorkerAck,
                drain.deadline,
            )
            return ack.generated_tokens
        except CommandFailed as err:
            if not err.unreachable:
                return None
            return generated  # the node may be gone already: resume from what was last reported

    async def _take_back(self, drain: _WorkerDrain, request: InflightRequest, generated: int) -> None:
        """A request expected to finish in place that has not: off the node, back to the router."""
        tokens = await self._cancel(drain, request, generated)
        if tokens is None:
            drain.tally.finished_in_place += 1
            return
        await self._requeue(drain, request, tokens)

    async def _requeue(self, drain: _WorkerDrain, request: InflightRequest, generated: int) -> None:
        # The router must take it: this is the last line before a loss, so it gets the whole command
        # timeout even past the deadline (the request no longer needs the node).
        far = self._after(self.settings.command_timeout_seconds)
        rid, tally = request.request_id, drain.tally
        for _ in range(3):
            try:
                await self._router(
                    "requeue",
                    Requeue(
                        **self.bus.envelope(),
                        request_id=rid,
                        worker_id=drain.worker_id,
                        generated_tokens=generated,
                    ),
                    far,
                )
                tally.requeued += 1
                # Prefilled again wherever it lands.
                tally.tokens_recomputed += request.prompt_tokens + generated
                tally.placed.add(rid)
                return
            except CommandFailed as err:
                self._log.error("requeue_failed", request_id=rid, error=str(err))
        tally.lost += 1

    async def _finished_in_place(self, drain: _WorkerDrain, finishing: dict[str, int]) -> dict[str, int]:
        """Count the requests that finished; return the rest with their generated tokens."""
        try:
            left = await self._worker(
                drain.worker_id,
                "inflight",
                InflightQuery(**self.bus.envelope()),
                InflightList,
                drain.deadline,
            )
        except CommandFailed:
            # The worker cannot answer: whatever the router still has on it goes back, from the prompt.
            requeued = await self._worker_lost(drain.worker_id, drain.tally)
            drain.tally.finished_in_place += max(len(finishing) - requeued, 0)
            return {}
        still = {r.request_id: r.generated_tokens for r in left.requests if r.request_id in finishing}
        drain.tally.finished_in_place += len(finishing) - len(still)
        return still

    async def _hot_blocks(self, drain: _WorkerDrain) -> None:
        """6. Hot prefix blocks to the target with the most room, with the time left."""
        deadline = drain.deadline
        if self.settings.hot_blocks == 0 or not drain.target_order:
            return
        if deadline - self.clock.now() <= self.settings.safety_margin_seconds:
            return
        try:
            hot = await self._worker(
                drain.worker_id,
                "hot_blocks",
                HotBlocksQuery(**self.bus.envelope(), limit=self.settings.hot_blocks),
                HotBlocks,
                deadline,
            )
            if not hot.blocks:
                return
            blocks: list[Block] = list(hot.blocks)
            await self._worker(
                drain.target_order[0],
                "receive_blocks",
                ReceiveBlocks(
                    **self.bus.envelope(), source_worker_id=drain.worker_id, blocks=blocks, reply_by=deadline
                ),
                WorkerAck,
                deadline,
            )
            drain.tally.hot_blocks += len(blocks)
        except CommandFailed as err:
            self._log.info("hot_blocks_skipped", worker_id=drain.worker_id, error=str(err))


def _in_flight(r: InflightRequest) -> InFlight:
    """A worker's report of one request, as the drain planner reads it."""
    return InFlight(
        request_id=r.request_id,
        prompt_tokens=r.prompt_tokens,
        generated_tokens=r.generated_tokens,
        remaining_tokens=r.expected_remaining_tokens,
        kv_bytes=r.kv_bytes,
        prefix_blocks=tuple(r.prefix_blocks),
    )


def _share_slots(targets: dict[str, TargetWorker], index: int, workers: int) -> dict[str, TargetWorker]:
    """The ``index``-th of ``workers`` equal shares of every target's free slots: the workers of one node
    are drained in parallel, each planning on its own share, so that together they never count a free
    slot twice."""
    if workers <= 1:
        return targets
    out = {}
    for key, t in targets.items():
        base, extra = divmod(t.free_slots, workers)
        out[key] = dataclasses.replace(t, free_slots=base + (1 if index < extra else 0))
    return out
