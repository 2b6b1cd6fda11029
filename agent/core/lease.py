"""The leader lease: which replica of the agent leads, decided without comparing two machines' clocks.

The lease is one key (:data:`LEASE_KEY`) in a NATS JetStream key-value bucket (:func:`lease_bucket`, one
per namespace). Its value is the holder's replica id; its revision (the stream sequence of the key's
last write) changes at every write. Every write is a compare-and-set: *create* succeeds only while the
key is absent, *update* only while the key is still at the revision the writer names, so of two replicas
racing for one revision exactly one wins.

The rules, each a pure function of what the replica saw and its own monotonic clock:

- A follower that finds no lease creates it (:func:`follower_decision`).
- A follower takes a lease over (an update on the revision it saw) once it has itself seen that revision
  unchanged for ``lease_s``: the interval is measured on its own monotonic clock, from its first sight
  (:func:`sight`), so clocks of different machines are never compared and their skew does not matter.
  Only their rates could, and those differ by parts per million.
- A leader renews (an update on the revision it wrote) every ``renew_every_s`` (:func:`leader_decision`),
  counted from the instant it *sent* its last successful write: that instant is no later than the write
  itself, hence no later than any follower's first sight of it.
- A leader whose last successful write was sent ``step_down_after_s`` ago steps down (stops its actors);
  by ``fence_after_s`` the connection its actors publish on is closed, whatever they were doing. Both
  come before ``lease_s``, so a follower that takes over at the earliest moment the rules allow
  (``lease_s`` after a first sight that is no earlier than the send) finds the old leader silent: fencing
  by time, with ``lease_s - fence_after_s`` to spare for the two clocks' rates and a late wake-up.
- A replica that finds the lease still at the revision its own last write produced (it stepped down
  while the server was out of reach, and nobody wrote since) takes it back at once: nobody else can lead
  at that revision, since taking over writes a new one, and of two replicas writing on it one wins.
- A write refused because the revision moved means another replica holds the lease (or it was released):
  the leader steps down at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

LEASE_KEY: Final = "leader"
MIN_LEASE_SECONDS: Final = 3.0
"""Below this, one slow round trip to the NATS server (a renewal has ``poll_s``) costs the lease."""
MAX_LEASE_SECONDS: Final = 300.0
"""Beyond five minutes a killed leader leaves the fleet unattended for longer than a spot notice lasts."""
MAX_REPLICA_ID_LENGTH: Final = 128
REPLICA_ID_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9_.:@-]*"
"""Letters, digits and ``_.:@-``: a pod name, a host name with a pid, an address."""
_BUCKET_SAFE = re.compile(r"^[a-z0-9_.-]+$")

Action = Literal["create", "take_over", "renew", "wait", "step_down"]


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    """The lease's periods, all derived from ``lease_s`` (seconds)."""

    lease_s: float

    def __post_init__(self) -> None:
        if not MIN_LEASE_SECONDS <= self.lease_s <= MAX_LEASE_SECONDS:
            raise ValueError(
                f"lease_seconds: must be within [{MIN_LEASE_SECONDS:g}, {MAX_LEASE_SECONDS:g}], "
                f"got {self.lease_s!r}"
            )

    @property
    def renew_every_s(self) -> float:
        """Three tries fit in a lease: one lost round trip does not cost it."""
        return self.lease_s / 3

    @property
    def step_down_after_s(self) -> float:
        """Two renewals missed: the leader stops its actors, with a third of the lease left for that."""
        return self.lease_s * 2 / 3

    @property
    def fence_after_s(self) -> float:
        """Whatever is still publishing then is cut off (its connection closed)."""
        return self.lease_s * 0.9

    @property
    def poll_s(self) -> float:
        """How often a replica looks at the lease, and the bound on one round trip to the server."""
        return self.lease_s / 10


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    revision: int = 0
    """The revision the compare-and-set names (``take_over`` and ``renew``)."""


@dataclass(frozen=True, slots=True)
class Sighting:
    """What a follower last saw of the lease, and since when (its own monotonic clock)."""

    holder: str | None
    """The leader's replica id; None when there is no lease (never created, or released)."""
    revision: int
    since: float


@dataclass(frozen=True, slots=True)
class Held:
    """A leader's lease: the revision its last successful write produced and when it sent that write."""

    revision: int
    sent_at: float


def sight(previous: Sighting | None, holder: str | None, revision: int, now: float) -> Sighting:
    """The follower's view after reading ``holder`` at ``revision``: the clock starts at a new revision."""
    if holder is None:
        revision = 0
    if previous is not None and previous.revision == revision and previous.holder == holder:
        return previous
    return Sighting(holder, revision, now)


def follower_decision(seen: Sighting, now: float, timing: LeaseTiming, last_written: int = 0) -> Decision:
    """``last_written``: the revision this replica's own last write produced (0: none)."""
    if seen.holder is None:
        return Decision("create")
    if seen.revision == last_written or now - seen.since >= timing.lease_s:
        return Decision("take_over", seen.revision)
    return Decision("wait")


def leader_decision(held: Held, now: float, timing: LeaseTiming) -> Decision:
    age = now - held.sent_at
    if age >= timing.step_down_after_s:
        return Decision("step_down")
    if age >= timing.renew_every_s:
        return Decision("renew", held.revision)
    return Decision("wait")


def fence_deadline(held: Held, timing: LeaseTiming) -> float:
    """When a leader that has not renewed since ``held`` must have gone silent (its monotonic clock)."""
    return held.sent_at + timing.fence_after_s


def lease_bucket(namespace: str) -> str:
    """The key-value bucket of a namespace's lease, named like the state store's
    (``costagent-state-{ns}``): bucket names allow no dot, so a namespace's dots become ``_``."""
    if not _BUCKET_SAFE.fullmatch(namespace):
        raise ValueError(f"namespace {namespace!r}: lowercase letters, digits, '_', '-' and '.' only")
    return f"costagent-leader-{namespace.replace('.', '_')}"


def default_replica_id(hostname: str, pid: int) -> str:
    """``hostname-pid``, made a valid replica id whatever the host is called."""
    host = re.sub(r"[^A-Za-z0-9_.:@-]", "_", hostname).lstrip("_.:@-") or "host"
    suffix = f"-{pid}"
    return host[: MAX_REPLICA_ID_LENGTH - len(suffix)] + suffix


def holder_of(value: bytes) -> str:
    """The replica id a lease value names, as far as it can be read: anyone with access to the bucket may
    write garbage there, and a lease held by garbage expires like any other."""
    return value[:MAX_REPLICA_ID_LENGTH].decode("utf-8", errors="replace") or "?"
