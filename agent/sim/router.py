"""Request router (frontend) emulator: admits requests, dispatches them to workers, obeys router commands.

Listens to: ``{ns}.cmd.router.{stop_routing,requeue,worker_lost}`` (request/reply, answered with a
RouterAck, idempotent), ``{ns}.evt.request.update.*`` (RequestUpdate: who holds each request) and
``{ns}.evt.worker.metrics.*`` (WorkerMetrics: to learn workers, and that an unresponsive one is back).
Sends: ``submit`` to workers (request/reply, :mod:`schemas.workerproto`), and a fire-and-forget ``cancel``
to a worker it takes a request back from.

Dispatch: to the least-loaded routable worker (fewest requests the router has on it or is sending to it),
ties broken by the longest run of leading prefix blocks in common with a request recently sent there, then
by the order workers became known. A refused ``submit`` tries the next worker; one without an answer in
``submit_timeout_s`` (wall seconds) marks the worker unresponsive until its next WorkerMetrics, and the
router never sends that request there again (the worker is also told to cancel it, in case it did take it).
A request no worker takes waits and is retried every ``dispatch_retry_s`` (clock seconds), in admission
order (a worker that refuses one in a retry pass is not asked again in that pass); a worker that becomes
known or answers again also triggers a pass.

State machine of one request (the router's own record, which "0 lost" is judged by)::

    waiting ──submit ok──▶ running(owner W) ──done from W──▶ completed   (terminal)
       ▲   ◀─refused/none─ dispatching(W)   ──lost from W──▶ lost        (terminal)
       │                                    ──moved_out from W──▶ in_transit
       └── requeue / worker_lost ◀── running(W), in_transit(last W) [requeue], dispatching(W) [worker_lost]
    started from W (any non-terminal state) ──▶ running(owner W)

- Terminal states are final: a request is counted completed or lost once, never both.
- An update from a worker the router took the request back from (``abandoned``: requeue, worker_lost, a
  submit with no answer) is ignored, so a late ``started``/``done``/``lost`` from there cannot resurrect or
  double-count it; the router never dispatches the request to such a worker again.
- ``done``, ``lost`` and ``moved_out`` count only from the current holder (the owner, or the worker a
  submit is in flight to); from anyone else they are ignored. ``started`` from a worker makes it the owner:
  a migration (``resume``/``reprefill`` on a target) may be seen before the source's ``moved_out``, which
  is then ignored. A request waiting for dispatch that another party placed is not dispatched again.
- Only ``waiting`` requests are dispatched, by one dispatch at a time each, so a request is never sent to
  two workers at once by the router.
- A ``lost`` update means its worker died: it is not routed to again.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg

from agent.bus import Bus, Rejected
from agent.runtime.actor import Actor, Listen
from agent.runtime.clock import Clock
from schemas import (
    Cancel,
    Envelope,
    ErrorReply,
    RequestUpdate,
    Requeue,
    RouterAck,
    StopRouting,
    Submit,
    WorkerAck,
    WorkerLost,
    WorkerMetrics,
    envelope,
)

RouterState = Literal["waiting", "dispatching", "running", "in_transit", "completed", "lost"]
TERMINAL: Final[frozenset[str]] = frozenset({"completed", "lost"})

_log = structlog.get_logger("agent.sim.router")


@dataclass(slots=True, eq=False)
class RoutedRequest:
    request_id: str
    prompt_tokens: int
    output_tokens: int
    prefix_blocks: tuple[str, ...]
    admitted_at: float
    state: RouterState = "waiting"
    holder: str | None = None
    """The worker it counts against: its owner while running, the submit's target while dispatching."""
    owner: str | None = None
    """The worker that last served it (kept in transit and after the end)."""
    already_generated: int = 0
    """Tokens already streamed to the client, re-prefilled by the next dispatch."""
    generated_tokens: int = 0
    abandoned: set[str] = field(default_factory=set)
    dispatches: int = 0
    requeues: int = 0
    finished_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


class RouterEmulator(Actor):
    name = "router_emulator"

    def __init__(
        self,
        bus: Bus,
        clock: Clock,
        *,
        dispatch_retry_s: float = 0.5,
        submit_timeout_s: float = 1.0,
        recent_prefixes: int = 32,
        source: str = "router",
    ) -> None:
        super().__init__(bus, clock, interval_s=dispatch_retry_s)
        if not submit_timeout_s > 0 or recent_prefixes < 1:
            raise ValueError("router emulator: need submit_timeout_s > 0 and recent_prefixes ≥ 1")
        self.submit_timeout_s = submit_timeout_s
        self.source = source
        self.requests: dict[str, RoutedRequest] = {}
        self.workers: dict[str, int] = {}
        """Known workers, with the order they became known in."""
        self.stopped: set[str] = set()
        """Not routed to: told by stop_routing or worker_lost, or seen dead (a ``lost`` update)."""
        self.unresponsive: set[str] = set()
        """Not routed to until they publish metrics again: a submit to them went unanswered."""
        self.admitted = 0
        self.completed = 0
        self.lost = 0
        self.requeued = 0
        self.dispatched = 0
        self.updates_seen = 0
        self.updates_ignored = 0
        self._held: dict[str, set[str]] = {}
        self._recent: dict[str, deque[tuple[str, ...]]] = {}
        self._recent_len = recent_prefixes
        self._waiting: dict[str, None] = {}  # an ordered set
        self._acks: dict[tuple[str, ...], RouterAck] = {}
        self._order = itertools.count()

    # --- the load generator's side ----------------------------------------------------------------

    def add_worker(self, worker_id: str) -> None:
        if worker_id not in self.workers:
            self.workers[worker_id] = next(self._order)
            self._held[worker_id] = set()
            self._recent[worker_id] = deque(maxlen=self._recent_len)

    async def admit(
        self,
        request_id: str,
        prompt_tokens: int,
        expected_output_tokens: int,
        prefix_blocks: Sequence[str] = (),
    ) -> RoutedRequest:
        """Record a new request and dispatch it (it waits for a retry if no worker takes it).
        Admitting an id again returns its record and does nothing."""
        rec = self.requests.get(request_id)
        if rec is not None:
            return rec
        rec = RoutedRequest(
            request_id=request_id,
            prompt_tokens=prompt_tokens,
            output_tokens=expected_output_tokens,
            prefix_blocks=tuple(prefix_blocks),
            admitted_at=self.clock.now(),
        )
        self.requests[request_id] = rec
        self.admitted += 1
        self._waiting[request_id] = None
        await self._dispatch(rec)
        return rec

    def all_done(self) -> bool:
        """Every admitted request has ended (completed or lost)."""
        return self.completed + self.lost == self.admitted

    def summary(self) -> dict[str, int]:
        states = {state: 0 for state in ("waiting", "dispatching", "running", "in_transit")}
        for rec in self.requests.values():
            if not rec.terminal:
                states[rec.state] += 1
        return {
            "admitted": self.admitted,
            "completed": self.completed,
            "lost": self.lost,
            "requeued": self.requeued,
            "in_flight": self.admitted - self.completed - self.lost,
            **states,
            "dispatched": self.dispatched,
            "updates_ignored": self.updates_ignored,
        }

    def load(self, worker_id: str) -> int:
        return len(self._held.get(worker_id, ()))

    def routable(self, worker_id: str) -> bool:
        return worker_id in self.workers and worker_id not in self.stopped | self.unresponsive

    # --- actor ------------------------------------------------------------------------------------

    def subscriptions(self) -> Sequence[Listen]:
        s = self.bus.subjects
        return [
            Listen(s.router_command("stop_routing"), StopRouting, self.on_stop_routing),
            Listen(s.router_command("requeue"), Requeue, self.on_requeue),
            Listen(s.router_command("worker_lost"), WorkerLost, self.on_worker_lost),
            Listen(s.request_update_all, RequestUpdate, self.on_update),
            Listen(s.worker_metrics_all, WorkerMetrics, self.on_metrics),
        ]

    async def on_timer(self) -> None:
        if self._waiting:
            await self._dispatch_waiting()

    async def on_metrics(self, m: WorkerMetrics, _raw: Msg) -> None:
        new = m.worker_id not in self.workers or m.worker_id in self.unresponsive
        self.add_worker(m.worker_id)
        self.unresponsive.discard(m.worker_id)
        if new and self._waiting and self.routable(m.worker_id):
            await self._dispatch_waiting()

    async def on_update(self, u: RequestUpdate, _raw: Msg) -> None:
        self.updates_seen += 1
        worker = u.worker_id
        if u.state == "lost":
            self.stopped.add(worker)  # an emulator's post-mortem: that worker is dead
        rec = self.requests.get(u.request_id)
        if rec is None or rec.terminal or worker in rec.abandoned:
            self.updates_ignored += 1
            return
        if u.state == "started":
            if not (rec.state == "running" and rec.holder == worker):
                self._move(rec, "running", worker)
            return
        if rec.holder != worker:  # done, lost, moved_out count only from the holder
            self.updates_ignored += 1
            return
        rec.generated_tokens = u.generated_tokens
        if u.state == "moved_out":
            if rec.state == "running":
                self._move(rec, "in_transit")
            else:  # refused or cancelled before the submit's answer: nothing holds it any more
                self.updates_ignored += 1
        elif u.state == "done":
            self._move(rec, "completed")
            self.completed += 1
            rec.finished_at = u.sent_at
        else:
            self._move(rec, "lost")
            self.lost += 1
            rec.finished_at = u.sent_at

    async def on_stop_routing(self, cmd: StopRouting, raw: Msg) -> None:
        self.add_worker(cmd.worker_id)
        self.stopped.add(cmd.worker_id)
        await self._ack(raw, cmd.msg_id, RouterAck(**self._env(), op="stop_routing", ok=True))

    async def on_requeue(self, cmd: Requeue, raw: Msg) -> None:
        key = ("requeue", cmd.request_id, cmd.worker_id)
        ack = self._acks.get(key)
        taken = False
        if ack is None:
            rec = self.requests.get(cmd.request_id)
            if rec is None:
                raise Rejected(f"request_id: {cmd.request_id!r} was never admitted here")
            was_running = rec.state == "running"
            ack, taken = self._requeue(rec, cmd)
            self._acks[key] = ack
            if taken and was_running:  # stop the copy still running there
                await self._cancel_on(cmd.worker_id, cmd.request_id)
        await self._ack(raw, cmd.msg_id, ack)
        if taken:
            await self._dispatch_waiting()

    def _requeue(self, rec: RoutedRequest, cmd: Requeue) -> tuple[RouterAck, bool]:
        w = cmd.worker_id
        if rec.terminal:
            ok = rec.state == "completed"
            return RouterAck(**self._env(), op="requeue", ok=ok, detail=f"already {rec.state}"), False
        if (rec.state == "running" and rec.holder == w) or (rec.state == "in_transit" and rec.owner == w):
            rec.abandoned.add(w)
            rec.already_generated = min(cmd.generated_tokens, rec.output_tokens)
            rec.requeues += 1
            self.requeued += 1
            self._move(rec, "waiting")
            return RouterAck(**self._env(), op="requeue", ok=True, requests=1, detail=f"taken from {w}"), True
        if rec.state == "running":
            detail = f"served by {rec.holder}"
        elif rec.state == "in_transit":
            return RouterAck(
                **self._env(), op="requeue", ok=False, detail=f"in transit from {rec.owner}, not {w}"
            ), False
        else:
            detail = "already with the router"
        return RouterAck(**self._env(), op="requeue", ok=True, detail=detail), False

    async def on_worker_lost(self, cmd: WorkerLost, raw: Msg) -> None:
        key = ("worker_lost", cmd.worker_id)
        ack = self._acks.get(key)
        taken = 0
        if ack is None:
            self.add_worker(cmd.worker_id)
            self.stopped.add(cmd.worker_id)
            for rid in sorted(self._held[cmd.worker_id], key=lambda r: self.requests[r].admitted_at):
                rec = self.requests[rid]
                rec.abandoned.add(cmd.worker_id)
                rec.already_generated = 0  # the client's stream broke: served again from the prompt
                rec.requeues += 1
                self.requeued += 1
                self._move(rec, "waiting")
                taken += 1
            ack = RouterAck(**self._env(), op="worker_lost", ok=True, requests=taken)
            self._acks[key] = ack
        await self._ack(raw, cmd.msg_id, ack)
        if taken:
            await self._dispatch_waiting()

    # --- dispatch ---------------------------------------------------------------------------------

    def _env(self, correlation_id: str = "") -> Envelope:
        return envelope(self.source, sent_at=self.clock.now(), correlation_id=correlation_id)

    async def _ack(self, raw: Msg, msg_id: str, ack: RouterAck) -> None:
        await self.bus.respond(raw, msgspec.structs.replace(ack, **self._env(correlation_id=msg_id)))

    def _move(self, rec: RoutedRequest, state: RouterState, worker: str | None = None) -> None:
        """The one place a request changes state; keeps the per-worker load and the waiting set."""
        if rec.holder is not None:
            self._held[rec.holder].discard(rec.request_id)
        rec.state = state
        rec.holder = worker if state in ("dispatching", "running") else None
        if rec.holder is not None:
            self.add_worker(rec.holder)
            self._held[rec.holder].add(rec.request_id)
        if state == "running":
            rec.owner = worker
        if state == "waiting":
            self._waiting[rec.request_id] = None
        else:
            self._waiting.pop(rec.request_id, None)

    def _common_prefix(self, rec: RoutedRequest, worker: str) -> int:
        best = 0
        for sent in self._recent[worker]:
            n = 0
            for a, b in zip(rec.prefix_blocks, sent, strict=False):
                if a != b:
                    break
                n += 1
            best = max(best, n)
        return best

    def _pick(self, rec: RoutedRequest, tried: set[str]) -> str | None:
        candidates = [
            w for w in self.workers if self.routable(w) and w not in rec.abandoned and w not in tried
        ]
        if not candidates:
            return None
        return min(candidates, key=lambda w: (self.load(w), -self._common_prefix(rec, w), self.workers[w]))

    async def _dispatch_waiting(self) -> None:
        """One pass over the waiting requests, in admission order; a worker that refuses one (full) is not
        asked again in this pass."""
        refused: set[str] = set()
        for rid in list(self._waiting):
            if not any(self.routable(w) and w not in refused for w in self.workers):
                return  # every worker is full: the rest wait for the next pass (O(workers), not O(waiting))
            rec = self.requests.get(rid)
            if rec is not None and rec.state == "waiting":
                await self._dispatch(rec, refused)

    async def _dispatch(self, rec: RoutedRequest, refused: set[str] | None = None) -> None:
        tried: set[str] = set() if refused is None else refused
        while rec.state == "waiting":
            worker = self._pick(rec, tried)
            if worker is None:
                return  # stays waiting: the timer retries
            self._move(rec, "dispatching", worker)
            rec.dispatches += 1
            reply = await self._submit(rec, worker)
            accepted = isinstance(reply, WorkerAck) and reply.ok
            if not accepted:
                tried.add(worker)
            if _still(rec, "dispatching", worker):  # nothing happened to it meanwhile
                if accepted:
                    self._move(rec, "running", worker)
                    self._recent[worker].append(rec.prefix_blocks)
                    self.dispatched += 1
                    return
                if reply is None:  # no answer: it may hold the request; never use it for this one again
                    rec.abandoned.add(worker)
                    await self._cancel_on(worker, rec.request_id)
                self._move(rec, "waiting")
                continue
            # It changed while the submit was out: started elsewhere, ended, or taken back (worker_lost).
            if accepted:
                self.dispatched += 1
                self._recent[worker].append(rec.prefix_blocks)
                if rec.owner != worker and worker not in rec.abandoned:
                    rec.abandoned.add(worker)  # a second copy: stop it
                    await self._cancel_on(worker, rec.request_id)
            return

    async def _submit(self, rec: RoutedRequest, worker: str) -> WorkerAck | ErrorReply | None:
        """The worker's answer, or None when none came (it may or may not have taken the request)."""
        submit = Submit(
            **self._env(),
            request_id=rec.request_id,
            prompt_tokens=rec.prompt_tokens,
            expected_output_tokens=rec.output_tokens - rec.already_generated,
            already_generated=rec.already_generated,
            prefix_blocks=list(rec.prefix_blocks),
        )
        subject = self.bus.subjects.worker_request(worker, "submit")
        try:
            return await self.bus.request(subject, submit, WorkerAck, wait_s=self.submit_timeout_s)
        except nats.errors.NoRespondersError:
            self.unresponsive.add(worker)  # nobody listens there: it surely did not take it
            return ErrorReply(**self._env(), error=f"{worker}: no responders")
        except (TimeoutError, nats.errors.Error, msgspec.DecodeError):
            self.unresponsive.add(worker)
            return None

    async def _cancel_on(self, worker: str, request_id: str) -> None:
        """Tell ``worker`` to drop ``request_id``, without waiting for an answer (it may be gone)."""
        subject = self.bus.subjects.worker_request(worker, "cancel")
        try:
            await self.bus.publish(subject, Cancel(**self._env(), request_id=request_id))
        except nats.errors.Error as err:  # the connection is closing
            _log.warning("cancel_not_sent", worker_id=worker, request_id=request_id, error=str(err))


def _still(rec: RoutedRequest, state: RouterState, holder: str) -> bool:
    """``rec`` is (still) in ``state``, held by ``holder``: a function, as it may change across an await."""
    return rec.state == state and rec.holder == holder
