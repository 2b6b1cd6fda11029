"""DynamoSource actor: the demand where requests arrive (Dynamo's frontends) and the workers' load (Dynamo's
event plane), into the agent.

Reads:      every ``[dynamo] frontend_urls`` entry's ``/metrics`` each ``scrape_interval_seconds`` (its
            timer); Dynamo's ``forward-pass-metrics`` and ``kv_metrics`` subjects (msgpack), on the agent's
            own NATS connection, or with ``[dynamo] nats_url`` on a connection of its own to Dynamo's NATS.
Writes:     the profiler's :class:`~agent.core.demand_bins.DemandBins` (shared in-process), one entry per
            frontend keyed ``frontend:<url>``; :attr:`DynamoSource.latest` (the demand of the last
            interval, summed over frontends); :attr:`DynamoSource.workers` (the per-worker registry).
Guarantees: a frontend that does not answer is counted (``costagent_dynamo_frontend_scrape_failures``)
            and logged once per outage, and the others are read as usual; an event-plane message that does
            not decode is counted as rejected and dropped; neither stops the actor.

Why arrivals: DemandBins was written for workers' completion counts, but a completion is counted one
request's duration late, and not at all for a request that a saturated fleet queues or drops. The
frontend's arrival counter is the demand itself, before any worker, so it is what is added as the
``requests`` of each interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final

import structlog
from nats.aio.msg import Msg

from agent.bus import Bus
from agent.config import DynamoSettings
from agent.core.demand_bins import DemandBins
from agent.core.dynamo_workers import DynamoWorkers
from agent.providers.dynamo.event_plane import (
    DynamoEvent,
    DynamoSubjects,
    ForwardPassMetrics,
    KvMetrics,
    decode_event,
)
from agent.providers.dynamo.frontend_metrics import (
    FrontendDemand,
    FrontendMetricsError,
    FrontendSnapshot,
    demand_between,
    parse_frontend_metrics,
)
from agent.providers.httpclient import HttpClient, ServiceUnavailable
from agent.runtime.actor import Actor, ListenBytes
from agent.runtime.clock import Clock
from agent.runtime.connection import connect

log = structlog.get_logger("agent.dynamo_source")

EVENT_TAG: Final = "dynamo.event"  # the metric label of Dynamo's event-plane messages
MAX_SCRAPE_SECONDS: Final = 5.0
WORKER_STALE_INTERVALS: Final = 3  # scrape intervals without a message before a worker is not live
MIN_WORKER_STALE_SECONDS: Final = 5.0  # the idle heartbeat is about 1 s: a few missed are not an exit


def bins_key(frontend: str) -> str:
    """The frontend's entry in the DemandBins (workers report under their own ids)."""
    return f"frontend:{frontend}"


class DynamoSource(Actor):
    name = "dynamo_source"

    def __init__(self, bus: Bus, clock: Clock, settings: DynamoSettings, bins: DemandBins) -> None:
        if not settings.frontend_urls:
            raise ValueError("DynamoSource: [dynamo] frontend_urls is empty")
        super().__init__(bus, clock, interval_s=settings.scrape_interval_seconds)
        self.event_plane_url = settings.nats_url
        """Dynamo's own NATS (its NATS_SERVER), when it is not the agent's: read on a connection of this
        actor's, opened at each start and closed at each stop."""
        self._event_bus: Bus | None = None
        self.frontends = settings.urls()
        self.subjects = DynamoSubjects(settings.namespace, settings.component, settings.endpoint)
        self.bins = bins
        # A scrape must end before the next one is due.
        self.scrape_timeout_s = min(MAX_SCRAPE_SECONDS, settings.scrape_interval_seconds * 0.8)
        self.workers = DynamoWorkers(
            stale_after_s=max(
                MIN_WORKER_STALE_SECONDS, WORKER_STALE_INTERVALS * settings.scrape_interval_seconds
            )
        )
        self.latest: FrontendDemand | None = None
        """The demand over the last interval, all frontends summed (None before the second scrape)."""
        self.previous: dict[str, FrontendSnapshot] = {}
        """Each frontend's last good snapshot (kept through an outage: the next interval spans it)."""
        self._migrations = 0.0
        self.down: set[str] = set()
        self.scrapes = 0
        self.reads = 0
        """Scrapes at which at least one frontend answered."""
        self._http: HttpClient | None = None
        m = bus.metrics
        self._failures = {f: m.dynamo_scrape_failures.labels(f) for f in self.frontends}
        self._rejected = {f: m.dynamo_frontend_rejected.labels(f) for f in self.frontends}
        self._live = m.dynamo_live_workers

    def subscriptions(self) -> Sequence[ListenBytes]:
        return [
            ListenBytes(subject, EVENT_TAG, decode_event, self.on_event)
            for subject in (self.subjects.forward_pass_metrics, self.subjects.kv_metrics)
        ]

    def listen_bus(self) -> Bus:
        return self._event_bus or self.bus

    async def on_start(self) -> None:
        if self.event_plane_url:
            # Dynamo's NATS is Dynamo's (typically its platform's, without our accounts): no credentials of
            # ours go to it. A server that cannot be reached fails this start; the supervisor retries.
            nc = await connect(self.event_plane_url, f"{self.bus.source}:dynamo-event-plane")
            self._event_bus = Bus(
                nc, self.bus.subjects, source=self.bus.source, clock=self.clock, metrics=self.bus.metrics
            )
        self._http = await HttpClient().__aenter__()

    async def on_stop(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.__aexit__(None, None, None)
        event_bus, self._event_bus = self._event_bus, None
        if event_bus is not None:
            await event_bus.nc.close()  # only reads on it: nothing of ours to flush

    async def on_event(self, event: DynamoEvent, _raw: Msg) -> None:
        # Runs for every forward pass of every worker: the key comes parsed (and checked) with the event.
        payload, key = event.payload, event.worker
        if key is None:
            return  # a topic not read here
        if isinstance(payload, ForwardPassMetrics):
            s, q = payload.scheduled_requests, payload.queued_requests
            self.workers.forward_pass(
                key,
                self.clock.now(),
                s.num_prefill_requests + s.num_decode_requests,
                q.num_prefill_requests + q.num_decode_requests,
            )
        elif isinstance(payload, KvMetrics):
            self.workers.kv(key, self.clock.now(), payload.kv_used_blocks)

    async def on_timer(self) -> None:
        now = self.clock.now()
        self.workers.prune(now)
        self._live.set(self.workers.live(now))
        current: dict[str, FrontendSnapshot] = {}
        for frontend, snapshot in zip(
            self.frontends, await asyncio.gather(*(self._scrape(f) for f in self.frontends)), strict=True
        ):
            if snapshot is not None:
                current[frontend] = snapshot
        for frontend, snapshot in current.items():
            self._add(frontend, snapshot)
            self._count_migrations(self.previous.get(frontend), snapshot)
        self.latest = demand_between(self.previous, current)
        self.previous.update(current)
        self.scrapes += 1
        if current:
            self.reads += 1

    def migrations_read(self) -> tuple[float, int] | None:
        """(requests the frontends have migrated since this source began reading them, reads so far with
        at least one frontend answering); None before the first read. A frontend's restart does not take
        the count back."""
        return (self._migrations, self.reads) if self.previous else None

    def _count_migrations(self, previous: FrontendSnapshot | None, snapshot: FrontendSnapshot) -> None:
        if previous is None:
            return  # what it migrated before we read it is not ours to count
        grown = snapshot.migrations - previous.migrations
        self._migrations += grown if grown >= 0 else snapshot.migrations  # below: a restart, from 0

    def _add(self, frontend: str, snapshot: FrontendSnapshot) -> None:
        """The frontend's interval since its previous snapshot, into the DemandBins."""
        previous = self.previous.get(frontend)
        if previous is None:
            return  # the first read gives no interval
        demand = demand_between({frontend: previous}, {frontend: snapshot})
        if demand.rejected:
            self._rejected[frontend].inc()
            log.warning("dynamo_frontend_rejected", frontend=frontend, reason=demand.rejected[0][1])
            return
        arrivals = round(demand.arrivals_per_second * demand.interval_seconds)
        # Token means are per observed request (input: streaming requests only); times arrivals they are
        # the tokens the interval's arrivals ask for.
        self.bins.add(
            bins_key(frontend),
            snapshot.at,
            demand.interval_seconds,
            arrivals,
            round((demand.mean_input_tokens or 0.0) * arrivals),
            round((demand.mean_output_tokens or 0.0) * arrivals),
            round(demand.inflight),
            round(demand.queued),
        )

    async def _scrape(self, frontend: str) -> FrontendSnapshot | None:
        """One frontend's snapshot now, or None (counted, logged once per outage) when it is unusable."""
        assert self._http is not None, "scraped outside run()"
        try:
            answer = await self._http.request("GET", f"{frontend}/metrics", timeout_s=self.scrape_timeout_s)
            if answer.status != 200:
                raise ServiceUnavailable(f"/metrics answered {answer.status}")
            snapshot = parse_frontend_metrics(answer.body.decode("utf-8", "replace"), at=self.clock.now())
        except (ServiceUnavailable, FrontendMetricsError) as err:
            self._failures[frontend].inc()
            if frontend not in self.down:
                self.down.add(frontend)
                log.warning("dynamo_frontend_unavailable", frontend=frontend, error=str(err))
            return None
        if frontend in self.down:
            self.down.discard(frontend)
            log.info("dynamo_frontend_recovered", frontend=frontend)
        return snapshot
