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

The records and rules (the state machine of one request, who may move it, which worker is next) are
:class:`~agent.sim.router_model.RouterModel`'s; this actor feeds it what it hears and carries out what it
returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg

from agent.bus import Bus, Rejected
from agent.runtime.actor import Actor, Listen
from agent.runtime.clock import Clock
from agent.sim.router_model import Refused, Reply, RoutedRequest, RouterModel
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

_log = structlog.get_logger("agent.sim.router")


class RouterEmulator(Actor):
    """The router protocol on NATS around a :class:`RouterModel`: decode, consult the model, send."""

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
        if not submit_timeout_s > 0:
            raise ValueError("router emulator: need submit_timeout_s > 0")
        self.model = RouterModel(recent_prefixes)
        self.submit_timeout_s = submit_timeout_s
        self.source = source

    # --- the load generator's side ----------------------------------------------------------------

    async def admit(
        self,
        request_id: str,
        prompt_tokens: int,
        expected_output_tokens: int,
        prefix_blocks: Sequence[str] = (),
    ) -> RoutedRequest:
        """Record a new request and dispatch it (it waits for a retry if no worker takes it).
        Admitting an id again returns its record and does nothing."""
        rec, new = self.model.admit(
            request_id, prompt_tokens, expected_output_tokens, prefix_blocks, self.clock.now()
        )
        if new:
            await self._dispatch(rec)
        return rec

    # The model's records and counters, read by tests, the demo and the benchmarks.
    @property
    def requests(self) -> dict[str, RoutedRequest]:
        return self.model.requests

    @property
    def stopped(self) -> set[str]:
        return self.model.stopped

    @property
    def unresponsive(self) -> set[str]:
        return self.model.unresponsive

    @property
    def admitted(self) -> int:
        return self.model.admitted

    @property
    def completed(self) -> int:
        return self.model.completed

    @property
    def lost(self) -> int:
        return self.model.lost

    @property
    def requeued(self) -> int:
        return self.model.requeued

    @property
    def updates_seen(self) -> int:
        return self.model.updates_seen

    @property
    def updates_ignored(self) -> int:
        return self.model.updates_ignored

    def add_worker(self, worker_id: str) -> None:
        self.model.add_worker(worker_id)

    def all_done(self) -> bool:
        """Every admitted request has ended (completed or lost)."""
        return self.model.all_done()

    def summary(self) -> dict[str, int]:
        return self.model.summary()

    def load(self, worker_id: str) -> int:
        return self.model.load(worker_id)

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
        await self._dispatch_waiting()

    async def on_metrics(self, m: WorkerMetrics, _raw: Msg) -> None:
        if self.model.metrics_from(m.worker_id):
            await self._dispatch_waiting()

    async def on_update(self, u: RequestUpdate, _raw: Msg) -> None:
        self.model.update(u.request_id, u.worker_id, u.state, u.generated_tokens, u.sent_at)

    async def on_stop_routing(self, cmd: StopRouting, raw: Msg) -> None:
        await self._ack(raw, cmd.msg_id, self.model.stop_routing(cmd.worker_id))

    async def on_requeue(self, cmd: Requeue, raw: Msg) -> None:
        try:
            taken = self.model.requeue(cmd.request_id, cmd.worker_id, cmd.generated_tokens)
        except Refused as err:
            raise Rejected(str(err)) from None
        if taken.cancel_on is not None:  # stop the copy still running there
            await self._cancel_on(taken.cancel_on, cmd.request_id)
        await self._ack(raw, cmd.msg_id, taken.reply)
        if taken.dispatch:
            await self._dispatch_waiting()

    async def on_worker_lost(self, cmd: WorkerLost, raw: Msg) -> None:
        taken = self.model.worker_lost(cmd.worker_id)
        await self._ack(raw, cmd.msg_id, taken.reply)
        if taken.dispatch:
            await self._dispatch_waiting()

    # --- dispatch ---------------------------------------------------------------------------------

    def _env(self, correlation_id: str = "") -> Envelope:
        return envelope(self.source, sent_at=self.clock.now(), correlation_id=correlation_id)

    async def _ack(self, raw: Msg, msg_id: str, reply: Reply) -> None:
        await self.bus.respond(
            raw, RouterAck(**self._env(correlation_id=msg_id), **dataclasses.asdict(reply))
        )

    async def _dispatch_waiting(self) -> None:
        """One pass over the waiting requests, in admission order; a worker that refuses one (full) is not
        asked again in this pass."""
        refused: set[str] = set()
        for rec in self.model.waiting():
            if not self.model.any_routable(besides=refused):
                return  # every worker is full: the rest wait for the next pass (O(workers), not O(waiting))
            if rec.state == "waiting":
                await self._dispatch(rec, refused)

    async def _dispatch(self, rec: RoutedRequest, refused: set[str] | None = None) -> None:
        tried: set[str] = set() if refused is None else refused
        while rec.state == "waiting":
            worker = self.model.start_dispatch(rec, tried)
            if worker is None:
                return  # stays waiting: the timer retries
            reply = await self._submit(rec, worker)
            accepted = isinstance(reply, WorkerAck) and reply.ok
            answered = self.model.answered(rec, worker, accepted=accepted, silent=reply is None, tried=tried)
            if answered.cancel:
                await self._cancel_on(worker, rec.request_id)
            if not answered.retry:
                return
            self.model.retry(rec)

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
            self.model.no_answer_from(worker)  # nobody listens there: it surely did not take it
            return ErrorReply(**self._env(), error=f"{worker}: no responders")
        except (TimeoutError, nats.errors.Error, msgspec.DecodeError):
            self.model.no_answer_from(worker)
            return None

    async def _cancel_on(self, worker: str, request_id: str) -> None:
        """Tell ``worker`` to drop ``request_id``, without waiting for an answer (it may be gone)."""
        subject = self.bus.subjects.worker_request(worker, "cancel")
        try:
            await self.bus.publish(subject, Cancel(**self._env(), request_id=request_id))
        except nats.errors.Error as err:  # the connection is closing
            _log.warning("cancel_not_sent", worker_id=worker, request_id=request_id, error=str(err))
