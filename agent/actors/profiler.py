"""DemandProfiler actor.

Listens to: ``{ns}.evt.worker.metrics.*`` (WorkerMetrics from every worker).
Publishes:  ``{ns}.evt.demand.snapshot`` (DemandSnapshot), one per closed bin.
Guarantees: each report costs O(1) (added to its bin's sums); a bin closes ``close_delay_seconds`` after
it ends and becomes one profiler sample; a late report is counted in the open bin, and a report stamped
more than one bin ahead of the agent's clock is counted now, so none is dropped. The
profile and the current demand it keeps are read by the optimizer tick in the same process.
Durable (``[state]``, key ``demand_profile``): the profile is saved at each closed bin and taken back when
the actor starts, if it was binned the same way (a different bin width, zone or history is logged and
ignored); the open bin's reports are not (a restart loses at most one bin).
"""

from __future__ import annotations

from collections.abc import Sequence

from nats.aio.msg import Msg

from agent.bus import Bus
from agent.core.demand_bins import ClosedBin, DemandBins
from agent.core.profiler import DemandProfiler, ProfilerEmptyError
from agent.runtime.actor import Listen
from agent.runtime.clock import Clock
from agent.runtime.persistent_actor import PersistentActor
from agent.runtime.state_store import Snapshots
from schemas import Band, DemandSnapshot, WorkerMetrics


class DemandProfilerActor(PersistentActor):
    name = "demand_profiler"
    state_key = "demand_profile"

    def __init__(
        self,
        bus: Bus,
        clock: Clock,
        profiler: DemandProfiler,
        bins: DemandBins,
        snapshots: Snapshots | None = None,
    ) -> None:
        # Check for closed bins often enough that a snapshot is at most a few seconds late.
        super().__init__(bus, clock, interval_s=min(bins.bin_seconds / 10, 5.0), snapshots=snapshots)
        self.profiler = profiler
        self.bins = bins
        self.snapshots = 0
        self._late = bus.metrics.late_reports
        self._closed = bus.metrics.profiler_bins
        self._skewed = bus.metrics.clock_skew_reports
        self._evicted_counted = bins.evicted

    def encode_state(self) -> bytes:
        return self.profiler.to_bytes()

    def restore_state(self, data: bytes) -> None:
        self.profiler.restore(data)  # the optimizer's too: it is the same profiler

    def subscriptions(self) -> Sequence[Listen]:
        return [Listen(self.bus.subjects.worker_metrics_all, WorkerMetrics, self.on_metrics)]

    async def on_metrics(self, m: WorkerMetrics, _raw: Msg) -> None:
        t = m.sent_at
        now = self.clock.now()
        if t > now + self.bins.bin_seconds:
            # A worker whose clock runs ahead would open bins that close only in its future (and grow
            # memory with every odd timestamp): count its report now instead, and say so in a metric.
            t = now
            self._skewed.inc()
        late = self.bins.add(
            m.worker_id,
            t,
            m.interval_s,
            m.requests_completed,
            m.prompt_tokens,
            m.output_tokens,
            m.in_flight,
            m.queued,
        )
        if late:
            self._late.inc()

    async def on_timer(self) -> None:
        # Off the ingest path: sources the bins forgot to stay bounded (made-up worker ids), into the metric.
        if self.bins.evicted > self._evicted_counted:
            self.bus.metrics.registry_evicted.inc(self.bins.evicted - self._evicted_counted)
            self._evicted_counted = self.bins.evicted
        closed_any = False
        for closed in self.bins.close_due(self.clock.now()):
            self.profiler.record(closed.start, closed.rps, closed.prompt_mean, closed.output_mean)
            self._closed.inc()
            await self.bus.publish(self.bus.subjects.demand_snapshot, self._snapshot(closed))
            self.snapshots += 1
            closed_any = True
        if closed_any:
            await self.save_now()

    def _snapshot(self, closed: ClosedBin) -> DemandSnapshot:
        try:
            forecast = self.profiler.predict(closed.start)
            band: Band | None = Band(
                p50_rps=forecast.p50.rps, p75_rps=forecast.p75.rps, p95_rps=forecast.p95.rps
            )
        except ProfilerEmptyError:
            band = None
        return DemandSnapshot(
            **self.bus.envelope(),
            bin_start=closed.start,
            bin_seconds=closed.seconds,
            rps=closed.rps,
            tokens_per_s=closed.tokens_per_s,
            prompt_tokens_mean=closed.prompt_mean,
            output_tokens_mean=closed.output_mean,
            workers=closed.workers,
            reports=closed.reports,
            in_flight=closed.in_flight,
            queued=closed.queued,
            forecast=band,
        )
