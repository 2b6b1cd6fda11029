"""How many preemption notices a minute become drains: a token bucket, with a bounded queue for the rest.

A real reclaim wave is a zone's spot nodes at once, so the bucket holds a whole minute's worth: a burst up
to ``per_minute`` notices is let through at once. Beyond it, notices are held, not each turned into a drain
(200 notices in 10 ms made 200 drains and 200 plans), and released at the rate, the earliest deadline
first, so that a flood delays but never loses a real notice. One notice per instance is held (a repeat is
nothing new); beyond ``max_held`` the newcomer is dropped (counted by the caller).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

T = TypeVar("T")

Admission = Literal["now", "held", "repeat", "dropped"]
"""``now``: act on it; ``held``: queued for :meth:`NoticeGate.release`; ``repeat``: that instance's notice
is held already; ``dropped``: the queue is full."""


@dataclass(slots=True)
class NoticeGate(Generic[T]):
    per_minute: float
    max_held: int
    started: float
    """The clock's time at creation: the bucket is full then."""
    _tokens: float = field(init=False)
    _at: float = field(init=False)
    _heap: list[tuple[float, int, str]] = field(init=False, default_factory=list)
    _held: dict[str, T] = field(init=False, default_factory=dict)
    _order: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if not self.per_minute > 0 or self.max_held < 1:
            raise ValueError(
                f"per_minute, max_held: must be > 0 and ≥ 1, got {self.per_minute!r}, {self.max_held!r}"
            )
        self._tokens = self.per_minute
        self._at = self.started

    @property
    def held(self) -> int:
        return len(self._held)

    def is_held(self, key: str) -> bool:
        return key in self._held

    def admit(self, now: float, key: str, deadline: float, item: T) -> Admission:
        """Let the notice for ``key`` through if the rate allows and nothing is waiting before it."""
        if key in self._held:
            return "repeat"
        self._refill(now)
        if not self._held and self._tokens >= 1.0:
            self._tokens -= 1.0
            return "now"
        if len(self._held) >= self.max_held:
            return "dropped"
        self._held[key] = item
        self._order += 1
        heapq.heappush(self._heap, (deadline, self._order, key))
        return "held"

    def release(self, now: float) -> list[T]:
        """Held notices the rate lets through by ``now``, the earliest deadline first."""
        self._refill(now)
        out: list[T] = []
        while self._heap and self._tokens >= 1.0:
            _deadline, _order, key = heapq.heappop(self._heap)
            self._tokens -= 1.0
            out.append(self._held.pop(key))
        return out

    def _refill(self, now: float) -> None:
        elapsed = max(now - self._at, 0.0)  # a clock stepped back refills nothing
        self._tokens = min(self.per_minute, self._tokens + elapsed * self.per_minute / 60.0)
        self._at = max(now, self._at)
