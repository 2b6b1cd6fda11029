"""One leader among replicas: campaign for the KV lease, run a *term* while holding it, end it in time.

A replica connects, then campaigns (:meth:`Leadership.run`): every ``poll_s`` it reads the lease and acts
on :func:`agent.core.lease.follower_decision` (create an absent lease, take over one it has seen unchanged
for a whole lease, else wait). On winning it logs ``leader_elected`` and starts a term (what leads: the
agent's actors, on a NATS connection of their own; :class:`Term`), while a keeper task renews the lease by
:func:`agent.core.lease.leader_decision`. The term ends when

- the lease is lost: not renewed for ``step_down_after_s`` (the server unreachable or slow), or a renewal
  refused because another replica holds it. The term is stopped at once and must be silent by the fence
  deadline (``fence_after_s`` after the last renewal was sent): whatever is still running then has its
  connection closed, before any follower may take over;
- the replica is told to stop (SIGTERM): the term stops, then the lease is released (a compare-and-set
  delete), so a follower takes over at its next look instead of a lease later;
- the term ends by itself (an actor past its restart budget): the lease is released and the replica
  exits 1, so that a process manager restarts it while another replica leads.

After a lost lease (``leader_lost``) the replica campaigns again. ``costagent_leader`` (1 while leading)
and ``costagent_leader_changes_total`` follow it. Every lease operation is bounded by ``poll_s``: a server
that does not answer is a failed operation, tried again at the next look.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import structlog
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.api import KeyValueConfig
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue

from agent.core.lease import (
    LEASE_KEY,
    Held,
    LeaseTiming,
    Sighting,
    fence_deadline,
    follower_decision,
    holder_of,
    leader_decision,
    sight,
)
from agent.runtime.clock import wait_event
from agent.runtime.connection import CANCEL_WAIT_SECONDS
from agent.runtime.metrics import AgentMetrics

log = structlog.get_logger("agent.leadership")

OPEN_TIMEOUT_SECONDS: Final = 5.0
"""Finding or creating the bucket at start-up (a clustered bucket takes its replicas' agreement)."""
_WRONG_LAST_SEQUENCE = frozenset({10071, 10164})
"""JetStream's error codes for a compare-and-set whose revision moved (nats-py maps them for an update,
not for a delete)."""


class LeaseError(ConnectionError):
    """The lease cannot be used at all (no JetStream): one line, exit 2, like an unreachable server."""


class LeaseConflict(Exception):
    """A compare-and-set refused: another replica wrote the lease first."""


class LeaseUnavailable(Exception):
    """A lease operation that failed or had no answer in time: try again at the next look."""


class KvLease:
    """The lease key in its bucket, on the replica's own connection; values are replica ids."""

    def __init__(self, kv: KeyValue, replica_id: str) -> None:
        self.kv = kv
        self.replica_id = replica_id

    @classmethod
    async def open(cls, nc: NATS, bucket: str, replica_id: str, timeout_s: float) -> KvLease:
        """The bucket, created if need be; each later operation has ``timeout_s`` to get its answer."""
        setup = nc.jetstream(timeout=OPEN_TIMEOUT_SECONDS)
        try:
            try:
                await setup.key_value(bucket)
            except BucketNotFoundError:
                # Replicas creating it at once is fine: the same configuration is accepted twice.
                await setup.create_key_value(KeyValueConfig(bucket=bucket, history=1))
            kv = await nc.jetstream(timeout=timeout_s).key_value(bucket)
        except ServiceUnavailableError:
            raise LeaseError(
                "[leader]: the NATS server has no JetStream, which the lease needs; run it with JetStream "
                "(nats-server -js), or set [leader] enabled = false to run one agent without a lease"
            ) from None
        except (NatsError, TimeoutError) as err:
            raise LeaseError(
                f"[leader]: cannot open the lease's KV bucket {bucket!r}: {type(err).__name__} {err}".rstrip()
            ) from None
        return cls(kv, replica_id)

    async def read(self) -> tuple[str | None, int]:
        """The holder and the revision; (None, 0) when there is no lease."""
        try:
            entry = await self.kv.get(LEASE_KEY)
        except KeyNotFoundError:  # never created, or released (nats-py reports a deleted key so too)
            return None, 0
        except (NatsError, TimeoutError) as err:
            raise LeaseUnavailable(type(err).__name__) from err
        return holder_of(entry.value or b""), entry.revision or 0

    async def create(self) -> int:
        return await self._write(self.kv.create(LEASE_KEY, self.replica_id.encode()))

    async def update(self, revision: int) -> int:
        return await self._write(self.kv.update(LEASE_KEY, self.replica_id.encode(), last=revision))

    async def release(self, revision: int) -> None:
        """Delete the lease if it is still ours at ``revision``; a lease someone else holds is left."""
        try:
            await self.kv.delete(LEASE_KEY, last=revision)
        except APIError as err:
            if err.err_code not in _WRONG_LAST_SEQUENCE:
                raise LeaseUnavailable(type(err).__name__) from err
        except (NatsError, TimeoutError) as err:
            raise LeaseUnavailable(type(err).__name__) from err

    @staticmethod
    async def _write(write: Awaitable[int]) -> int:
        try:
            return await write
        except KeyWrongLastSequenceError as err:
            raise LeaseConflict(str(err)) from err
        except (NatsError, TimeoutError) as err:
            raise LeaseUnavailable(type(err).__name__) from err


class Term(Protocol):
    """What runs while this replica leads (the agent's actors)."""

    @property
    def ended(self) -> asyncio.Event:
        """Set when the term ends by itself (an actor past its restart budget), or is stopped."""
        ...

    @property
    def failed(self) -> bool:
        """The term ended by itself: the replica should exit 1."""
        ...

    async def stop(self, silent_by: float) -> None:
        """Stop; publish nothing after ``silent_by`` (``time.monotonic()``), whatever is still running."""
        ...

    def health(self) -> dict[str, object]: ...


StartTerm = Callable[[Callable[[], bool]], Awaitable[Term]]
"""Starts a term, given the fence to keep: while it returns True the term must publish nothing."""


class Leadership:
    def __init__(
        self,
        lease: KvLease,
        nc: NATS,
        timing: LeaseTiming,
        start_term: StartTerm,
        metrics: AgentMetrics,
    ) -> None:
        self.lease = lease
        self.nc = nc
        self.timing = timing
        self.start_term = start_term
        self.metrics = metrics
        self.replica_id = lease.replica_id
        self.seen: Sighting | None = None
        self.held: Held | None = None
        self.last_written = 0
        """The revision of this replica's last successful write: the lease is still ours while it is there."""
        self.term: Term | None = None
        self.failed = False
        """The last term ended by itself: the replica exits 1."""
        self._log = log.bind(replica=self.replica_id)

    def health(self) -> dict[str, object]:
        """The term's health while leading (``starting`` until it runs); else a follower's (healthy while it
        can campaign)."""
        if self.term is not None:
            return {**self.term.health(), "role": "leader", "replica": self.replica_id}
        connected = self.nc.is_connected
        if self.held is not None:  # the lease won, the agent's actors loading their state
            return {"status": "starting", "role": "leader", "replica": self.replica_id}
        return {
            "status": "follower" if connected else "unavailable",
            "role": "follower",
            "replica": self.replica_id,
            "leader": self.seen.holder if self.seen is not None else None,
            "nats_connected": connected,
        }

    def silenced(self) -> bool:
        """Past the fence of the lease last renewed, or not leading: the term must say nothing. Checked
        at each publish, since a process frozen past its lease (a paused VM, a starved event loop) wakes
        with messages to handle before its keeper has had a turn to step down."""
        held = self.held
        return held is None or time.monotonic() >= fence_deadline(held, self.timing)

    async def run(self, stop: asyncio.Event) -> int:
        """Campaign and lead until ``stop``: 0, or 1 when a term ended by itself."""
        self.metrics.leader.set(0)
        while not stop.is_set():
            held = await self._campaign(stop)
            if held is None:
                break
            await self._lead(held, stop)
            if self.failed:
                return 1
        return 0

    async def _campaign(self, stop: asyncio.Event) -> Held | None:
        """Until this replica holds the lease (its :class:`Held`), or ``stop`` (None)."""
        failing = False
        wait_s = 0.0
        while not await wait_event(stop, wait_s):
            wait_s = self.timing.poll_s
            try:
                holder, revision = await self.lease.read()
                self.seen = sight(self.seen, holder, revision, time.monotonic())
                decision = follower_decision(self.seen, time.monotonic(), self.timing, self.last_written)
                if decision.action == "wait":
                    failing = False
                    continue
                sent_at = time.monotonic()
                if decision.action == "create":
                    revision = await self.lease.create()
                else:
                    revision = await self.lease.update(decision.revision)
            except LeaseConflict:
                continue  # another replica won this revision: look again
            except LeaseUnavailable as err:
                if not failing:  # once per outage, not every look
                    self._log.warning("lease_unavailable", error=str(err))
                failing = True
                continue
            return Held(revision, sent_at)
        return None

    async def _lead(self, held: Held, stop: asyncio.Event) -> None:
        self.held = held
        self.last_written = held.revision
        previous = self.seen.holder if self.seen is not None else None
        self.seen = None  # seen afresh after this term
        self._log.info("leader_elected", revision=held.revision, previous=previous)
        self.metrics.leader.set(1)
        self.metrics.leader_changes.inc()
        lost = asyncio.Event()
        done = asyncio.Event()
        keeper = asyncio.create_task(self._keep(lost, done), name="lease-keeper")
        try:
            self.term = await self._begin()
            if self.term is not None:
                await _first_set(stop, lost, self.term.ended)
        finally:
            if self.term is not None:
                await self.term.stop(fence_deadline(self.held, self.timing))
                self.failed = self.term.failed
                self.term = None
            done.set()
            reason = await keeper
            if reason == "stopped":
                await self._release()
            self.held = None
            self.metrics.leader.set(0)
            self.metrics.leader_changes.inc()
            self._log.info("leader_lost", reason="failed" if self.failed else reason)

    async def _begin(self) -> Term | None:
        """The term, started; None when it could not start before the fence (the lease was lost)."""
        assert self.held is not None
        starting = asyncio.ensure_future(self.start_term(self.silenced))
        while not starting.done():
            left = fence_deadline(self.held, self.timing) - time.monotonic()
            if left <= 0:
                # The start_term callable closes what it opened when cancelled.
                starting.cancel()
                await asyncio.wait({starting}, timeout=CANCEL_WAIT_SECONDS)
                return None
            await asyncio.wait({starting}, timeout=left)
        return starting.result()

    async def _keep(self, lost: asyncio.Event, done: asyncio.Event) -> str:
        """Renew the lease until ``done`` ("stopped") or until it is lost (``lost`` set; the reason)."""
        failing = False
        while True:
            assert self.held is not None
            decision = leader_decision(self.held, time.monotonic(), self.timing)
            if decision.action == "step_down":
                lost.set()
                return "not_renewed"
            if decision.action == "renew":
                sent_at = time.monotonic()
                try:
                    self.held = Held(await self.lease.update(decision.revision), sent_at)
                    self.last_written = self.held.revision
                    failing = False
                except LeaseConflict:
                    lost.set()
                    return "taken_over"
                except LeaseUnavailable as err:
                    if not failing:
                        self._log.warning("lease_renew_failed", error=str(err))
                    failing = True
            if await wait_event(done, self.timing.poll_s):
                return "stopped"

    async def _release(self) -> None:
        """Hand the lease over now rather than a lease later; a failure leaves it to expire."""
        assert self.held is not None
        try:
            await self.lease.release(self.held.revision)
        except LeaseUnavailable as err:
            self._log.warning("lease_release_failed", error=str(err))


async def _first_set(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
