"""The request router emulator's book: who holds each request, and where the next one goes.

Pure and synchronous (no asyncio, nats or logging): :class:`~agent.sim.router.RouterEmulator` feeds it
what it hears (updates, metrics, commands) and the answers to its submits, and does what it returns
(send a submit, a cancel, start a dispatch pass). Times are passed in.

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

Dispatch: to the least-loaded routable worker (fewest requests the router has on it or is sending to it),
ties broken by the longest run of leading prefix blocks in common with a request recently sent there, then
by the order workers became known.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from schemas.workerproto import RequestState

RouterState = Literal["waiting", "dispatching", "running", "in_transit", "completed", "lost"]
TERMINAL: Final[frozenset[str]] = frozenset({"completed", "lost"})


class Refused(Exception):
    """A router command that cannot be done; the text names the field. Nothing changed."""


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


@dataclass(frozen=True, slots=True)
class Reply:
    """A router command's outcome (the fields of a ``router.ack.v1``, without its envelope)."""

    op: str
    ok: bool
    requests: int = 0
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Taken:
    """What a ``requeue`` or ``worker_lost`` did: its reply, and what the router must do next."""

    reply: Reply
    cancel_on: str | None = None
    """Tell this worker to drop the request (a copy may still run there)."""
    dispatch: bool = False
    """Requests went back to waiting: a dispatch pass is due."""


@dataclass(frozen=True, slots=True)
class Answered:
    """What the answer to a submit means: cancel a copy there, and/or try the next worker."""

    cancel: bool
    retry: bool


class RouterModel:
    """The router's records and rules (see the module doc)."""

    def __init__(self, recent_prefixes: int = 32) -> None:
        if recent_prefixes < 1:
            raise ValueError("router emulator: need recent_prefixes ≥ 1")
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
        self._replies: dict[tuple[str, ...], Reply] = {}
        self._order = itertools.count()

    # --- what it looks like -----------------------------------------------------------------------

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

    def waiting(self) -> list[RoutedRequest]:
        """The requests waiting for a dispatch, in admission order."""
        return [self.requests[rid] for rid in self._waiting]

    def any_routable(self, besides: set[str]) -> bool:
        return any(self.routable(w) and w not in besides for w in self.workers)

    # --- what it hears ----------------------------------------------------------------------------

    def add_worker(self, worker_id: str) -> None:
        if worker_id not in self.workers:
            self.workers[worker_id] = next(self._order)
            self._held[worker_id] = set()
            self._recent[worker_id] = deque(maxlen=self._recent_len)

    def admit(
        self,
        request_id: str,
        prompt_tokens: int,
        expected_output_tokens: int,
        prefix_blocks: Sequence[str],
        at: float,
    ) -> tuple[RoutedRequest, bool]:
        """The record of a request, and True when it is new (it then waits for a dispatch)."""
        rec = self.requests.get(request_id)
        if rec is not None:
            return rec, False
        rec = RoutedRequest(
            request_id=request_id,
            prompt_tokens=prompt_tokens,
            output_tokens=expected_output_tokens,
            prefix_blocks=tuple(prefix_blocks),
            admitted_at=at,
        )
        self.requests[request_id] = rec
        self.admitted += 1
        self._waiting[request_id] = None
        return rec, True

    def metrics_from(self, worker_id: str) -> bool:
        """A worker reported: known and answering again. True when that opens a place for waiting work."""
        new = worker_id not in self.workers or worker_id in self.unresponsive
        self.add_worker(worker_id)
        self.unresponsive.discard(worker_id)
        return new and bool(self._waiting) and self.routable(worker_id)

    def update(
        self, request_id: str, worker: str, state: RequestState, generated_tokens: int, at: float
    ) -> None:
        """A worker's word on a request (see the module doc for which count)."""
        self.updates_seen += 1
        if state == "lost":
            self.stopped.add(worker)  # an emulator's post-mortem: that worker is dead
        rec = self.requests.get(request_id)
        if rec is None or rec.terminal or worker in rec.abandoned:
            self.updates_ignored += 1
            return
        if state == "started":
            if not (rec.state == "running" and rec.holder == worker):
                self._move(rec, "running", worker)
            return
        if rec.holder != worker:  # done, lost, moved_out count only from the holder
            self.updates_ignored += 1
            return
        rec.generated_tokens = generated_tokens
        if state == "moved_out":
            if rec.state == "running":
                self._move(rec, "in_transit")
            else:  # refused or cancelled before the submit's answer: nothing holds it any more
                self.updates_ignored += 1
        elif state == "done":
            self._move(rec, "completed")
            self.completed += 1
            rec.finished_at = at
        else:
            self._move(rec, "lost")
            self.lost += 1
            rec.finished_at = at

    def stop_routing(self, worker_id: str) -> Reply:
        self.add_worker(worker_id)
        self.stopped.add(worker_id)
        return Reply(op="stop_routing", ok=True)

    def requeue(self, request_id: str, worker_id: str, generated_tokens: int) -> Taken:
        """Take a request back from ``worker_id`` to serve it elsewhere; a repeat returns the first reply."""
        key = ("requeue", request_id, worker_id)
        reply = self._replies.get(key)
        if reply is not None:
            return Taken(reply)
        rec = self.requests.get(request_id)
        if rec is None:
            raise Refused(f"request_id: {request_id!r} was never admitted here")
        was_running = rec.state == "running"
        reply, taken = self._requeue(rec, worker_id, generated_tokens)
        self._replies[key] = reply
        if not taken:
            return Taken(reply)
        return Taken(reply, cancel_on=worker_id if was_running else None, dispatch=True)

    def _requeue(self, rec: RoutedRequest, w: str, generated_tokens: int) -> tuple[Reply, bool]:
        if rec.terminal:
            return Reply(op="requeue", ok=rec.state == "completed", detail=f"already {rec.state}"), False
        if (rec.state == "running" and rec.holder == w) or (rec.state == "in_transit" and rec.owner == w):
            rec.abandoned.add(w)
            rec.already_generated = min(generated_tokens, rec.output_tokens)
            rec.requeues += 1
            self.requeued += 1
            self._move(rec, "waiting")
            return Reply(op="requeue", ok=True, requests=1, detail=f"taken from {w}"), True
        if rec.state == "running":
            return Reply(op="requeue", ok=True, detail=f"served by {rec.holder}"), False
        if rec.state == "in_transit":
            return Reply(op="requeue", ok=False, detail=f"in transit from {rec.owner}, not {w}"), False
        return Reply(op="requeue", ok=True, detail="already with the router"), False

    def worker_lost(self, worker_id: str) -> Taken:
        """Take back everything ``worker_id`` held, served again from the prompt; a repeat returns the
        first reply."""
        key = ("worker_lost", worker_id)
        reply = self._replies.get(key)
        if reply is not None:
            return Taken(reply)
        self.add_worker(worker_id)
        self.stopped.add(worker_id)
        taken = 0
        for rid in sorted(self._held[worker_id], key=lambda r: self.requests[r].admitted_at):
            rec = self.requests[rid]
            rec.abandoned.add(worker_id)
            rec.already_generated = 0  # the client's stream broke: served again from the prompt
            rec.requeues += 1
            self.requeued += 1
            self._move(rec, "waiting")
            taken += 1
        reply = Reply(op="worker_lost", ok=True, requests=taken)
        self._replies[key] = reply
        return Taken(reply, dispatch=taken > 0)

    def no_answer_from(self, worker_id: str) -> None:
        """A submit to ``worker_id`` went unanswered: not routed to until it reports metrics again."""
        self.unresponsive.add(worker_id)

    # --- dispatch ---------------------------------------------------------------------------------

    def start_dispatch(self, rec: RoutedRequest, tried: set[str]) -> str | None:
        """The worker to send a waiting request to (it is then ``dispatching`` there), or None."""
        candidates = [
            w for w in self.workers if self.routable(w) and w not in rec.abandoned and w not in tried
        ]
        if not candidates:
            return None  # stays waiting: the timer retries
        worker = min(candidates, key=lambda w: (self.load(w), -self._common_prefix(rec, w), self.workers[w]))
        self._move(rec, "dispatching", worker)
        rec.dispatches += 1
        return worker

    def answered(
        self, rec: RoutedRequest, worker: str, *, accepted: bool, silent: bool, tried: set[str]
    ) -> Answered:
        """The submit of ``rec`` to ``worker`` was accepted, refused or not answered (``silent``)."""
        if not accepted:
            tried.add(worker)
        if rec.state == "dispatching" and rec.holder == worker:  # nothing happened to it meanwhile
            if accepted:
                self._move(rec, "running", worker)
                self._placed(rec, worker)
                return Answered(cancel=False, retry=False)
            if silent:  # it may hold the request: never use it for this one again
                rec.abandoned.add(worker)
            return Answered(cancel=silent, retry=True)
        # It changed while the submit was out: started elsewhere, ended, or taken back (worker_lost).
        if accepted:
            self._placed(rec, worker)
            if rec.owner != worker and worker not in rec.abandoned:
                rec.abandoned.add(worker)  # a second copy: stop it
                return Answered(cancel=True, retry=False)
        return Answered(cancel=False, retry=False)

    def retry(self, rec: RoutedRequest) -> None:
        """Back to waiting after a refused or unanswered submit."""
        self._move(rec, "waiting")

    # --- moves --------------------------------------------------------------------------------------

    def _placed(self, rec: RoutedRequest, worker: str) -> None:
        self.dispatched += 1
        self._recent[worker].append(rec.prefix_blocks)

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
