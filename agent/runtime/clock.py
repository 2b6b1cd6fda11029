"""Clocks: real time, scaled time (accelerated simulation) and a fake clock that tests advance by hand.

Every actor reads time and waits through a :class:`Clock`, never through ``time`` or ``asyncio.sleep``
directly, so the same actor runs live, ten times faster in a demo, or step by step in a test. Waiting
always also watches a stop event, so a timer wakes at once on shutdown.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """UNIX seconds, as this clock sees them."""
        ...

    async def wait_until(self, deadline: float, stop: asyncio.Event) -> bool:
        """Return when ``now() >= deadline`` (False) or when ``stop`` is set (True), whichever is first."""
        ...

    def real_seconds(self, clock_seconds: float) -> float:
        """How long ``clock_seconds`` of this clock last in real time (for network timeouts)."""
        ...


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow a cancellation (CONVENTIONS.md).
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=max(seconds, 0.0))
    finally:
        if not waiter.done():
            waiter.cancel()
    return event.is_set()


class RealClock:
    def now(self) -> float:
        return time.time()

    def real_seconds(self, clock_seconds: float) -> float:
        return clock_seconds

    async def wait_until(self, deadline: float, stop: asyncio.Event) -> bool:
        while not stop.is_set():
            remaining = deadline - self.now()
            if remaining <= 0:
                return False
            await wait_event(stop, remaining)
        return True


class ScaledClock:
    """Time that runs ``speed`` times faster than the wall clock: ``start`` (UNIX seconds) at the wall-clock
    instant ``anchor`` (UNIX seconds, default now). Two processes given the same three numbers share one
    simulated time, which is how the demo's agent process and its simulated cloud agree on the hour."""

    def __init__(self, speed: float, start: float | None = None, anchor: float | None = None) -> None:
        if not speed > 0:
            raise ValueError(f"clock speed must be > 0, got {speed!r}")
        self.speed = speed
        self.anchor = time.time() if anchor is None else anchor
        self.start = self.anchor if start is None else start

    def now(self) -> float:
        return self.start + (time.time() - self.anchor) * self.speed

    async def wait_until(self, deadline: float, stop: asyncio.Event) -> bool:
        while not stop.is_set():
            remaining = deadline - self.now()
            if remaining <= 0:
                return False
            await wait_event(stop, remaining / self.speed)
        return True

    def real_seconds(self, clock_seconds: float) -> float:
        return clock_seconds / self.speed


class FakeClock:
    """Stands still until :meth:`advance` moves it; waiters whose deadline passed then wake."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._moved = asyncio.Event()

    def now(self) -> float:
        return self._now

    def real_seconds(self, clock_seconds: float) -> float:
        # The fake clock stands still while a network call is in flight: give it real time as is.
        return clock_seconds

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._now += seconds
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    async def wait_until(self, deadline: float, stop: asyncio.Event) -> bool:
        while not stop.is_set() and self._now < deadline:
            moved = asyncio.ensure_future(self._moved.wait())
            stopped = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({moved, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (moved, stopped):
                    if not task.done():
                        task.cancel()
        return stop.is_set()
