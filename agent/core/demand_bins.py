"""Worker reports summed into demand bins, and the current demand read from the latest reports.

Each GPU worker reports its own counters every few seconds; the fleet's demand is their sum. Reports are
added to the bin of their end time (``sent_at``) in O(1) and kept as sums, never as lists. A bin closes
``close_delay_s`` after it ends (time for stragglers), producing one :class:`ClosedBin`: the profiler
records that, one sample per bin. A report that arrives for a bin already closed is counted in the
earliest open bin instead, so no served request is lost, only shifted by one bin; ``add`` says so.

:meth:`DemandBins.current` is the demand right now: the sum of each worker's latest rate, over workers
that reported within ``stale_after_s`` (a worker that stopped reporting stops counting). It is what the
optimizer covers before the profile has history.

Memory is bounded whatever worker ids a client invents: at most ``max_sources`` latest reports are kept
(beyond, the stale ones go first, then the oldest half; counted in :attr:`DemandBins.evicted`), and a bin
keeps the gauges of at most that many workers. Pruning is amortised: nothing is done per report but a
length check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from agent.core.demand import Demand

MAX_SOURCES = 10_000
"""Far above a fleet's real workers and frontends (a thousand 8-GPU nodes, a worker per GPU, is 8,000)."""


@dataclass(frozen=True, slots=True)
class ClosedBin:
    start: float
    seconds: float
    requests: float
    prompt_tokens: float
    output_tokens: float
    workers: int
    reports: int
    in_flight: int
    queued: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return (self.prompt_tokens + self.output_tokens) / self.seconds

    @property
    def prompt_mean(self) -> float:
        return self.prompt_tokens / self.requests if self.requests > 0 else 0.0

    @property
    def output_mean(self) -> float:
        return self.output_tokens / self.requests if self.requests > 0 else 0.0


class _Open:
    __slots__ = ("gauges", "output", "prompt", "reports", "requests")

    def __init__(self) -> None:
        self.requests = 0.0
        self.prompt = 0.0
        self.output = 0.0
        self.reports = 0
        # worker → (t, in_flight, queued) of its latest report in the bin, by report time (reports may
        # arrive out of order): gauges are not summed over time.
        self.gauges: dict[str, tuple[float, int, int]] = {}


class _Latest(NamedTuple):
    # A tuple, not a dataclass: one is built per report, on the ingest hot path (bench/ingest.py).
    t: float
    rps: float
    prompt_per_s: float
    output_per_s: float


class DemandBins:
    def __init__(
        self, bin_seconds: float, close_delay_s: float, stale_after_s: float, max_sources: int = MAX_SOURCES
    ) -> None:
        if not bin_seconds > 0 or close_delay_s < 0 or not stale_after_s > 0 or max_sources < 1:
            raise ValueError("need bin_seconds > 0, close_delay_s ≥ 0, stale_after_s > 0 and max_sources ≥ 1")
        self.max_sources = max_sources
        self.evicted = 0
        """Latest reports forgotten to stay within ``max_sources``."""
        self.bin_seconds = bin_seconds
        self.close_delay_s = close_delay_s
        self.stale_after_s = stale_after_s
        self._open: dict[float, _Open] = {}
        self._closed_until = -math.inf  # every bin starting before this is closed
        self._latest: dict[str, _Latest] = {}

    def add(
        self,
        worker: str,
        t: float,
        interval_s: float,
        requests: int,
        prompt_tokens: int,
        output_tokens: int,
        in_flight: int = 0,
        queued: int = 0,
    ) -> bool:
        """Add one report; True when it was late (its bin had closed) and went to the open bin."""
        start = math.floor(t / self.bin_seconds) * self.bin_seconds
        late = start < self._closed_until
        if late:
            start = self._closed_until
        acc = self._open.get(start)
        if acc is None:
            acc = self._open[start] = _Open()
        acc.requests += requests
        acc.prompt += prompt_tokens
        acc.output += output_tokens
        acc.reports += 1
        gauge = acc.gauges.get(worker)
        if (gauge is None and len(acc.gauges) < self.max_sources) or (gauge is not None and t >= gauge[0]):
            acc.gauges[worker] = (t, in_flight, queued)
        previous = self._latest.get(worker)
        if previous is None or t >= previous.t:
            self._latest[worker] = _Latest(
                t, requests / interval_s, prompt_tokens / interval_s, output_tokens / interval_s
            )
            if previous is None and len(self._latest) > self.max_sources:
                self._prune(t)
        return late

    def _prune(self, now: float) -> None:
        """Back under ``max_sources``: the stale first, then the oldest half of the rest."""
        before = len(self._latest)
        fresh = self._fresh(now)
        if len(fresh) > self.max_sources:
            keep = sorted(fresh.items(), key=lambda item: item[1].t)[len(fresh) - self.max_sources // 2 :]
            fresh = dict(keep)
        self._latest = fresh
        self.evicted += before - len(fresh)

    def close_due(self, now: float) -> list[ClosedBin]:
        """Close, oldest first, every bin that ended at least ``close_delay_s`` before ``now``."""
        horizon = now - self.close_delay_s - self.bin_seconds  # bins starting at or before this are due
        due = sorted(start for start in self._open if start <= horizon)
        closed = []
        for start in due:
            acc = self._open.pop(start)
            closed.append(
                ClosedBin(
                    start=start,
                    seconds=self.bin_seconds,
                    requests=acc.requests,
                    prompt_tokens=acc.prompt,
                    output_tokens=acc.output,
                    workers=len(acc.gauges),
                    reports=acc.reports,
                    in_flight=sum(g[1] for g in acc.gauges.values()),
                    queued=sum(g[2] for g in acc.gauges.values()),
                )
            )
        if horizon >= self._closed_until:
            # (k + 1) × bin, computed as ``add`` computes a bin's start: k × bin + bin may be another float.
            self._closed_until = (math.floor(horizon / self.bin_seconds) + 1) * self.bin_seconds
        stale = [w for w, latest in self._latest.items() if latest.t < now - self.stale_after_s]
        for worker in stale:
            del self._latest[worker]
        return closed

    def current(self, now: float) -> Demand | None:
        """The fleet's demand now from each fresh worker's latest report; None when no worker is fresh."""
        fresh = list(self._fresh(now).values())
        if not fresh:
            return None
        rps = sum(x.rps for x in fresh)
        prompt = sum(x.prompt_per_s for x in fresh)
        output = sum(x.output_per_s for x in fresh)
        if rps <= 0:
            return Demand(0.0, 0.0, 0.0)
        return Demand(rps, prompt / rps, output / rps)

    def sources(self, now: float) -> list[str]:
        """The entries :meth:`current` sums now: worker ids, and ``frontend:<url>`` for arrivals."""
        return list(self._fresh(now))

    def _fresh(self, now: float) -> dict[str, _Latest]:
        return {key: x for key, x in self._latest.items() if x.t >= now - self.stale_after_s}

    @property
    def workers(self) -> int:
        return len(self._latest)
