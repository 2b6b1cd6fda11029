"""The agent's Prometheus metrics, in a registry of its own (so tests can run several agents).

Labels are bounded: ``actor`` is an actor's name (each actor subscribes for itself, so one message
that two actors read counts once for each), ``subject`` is a subscription pattern without the namespace
(``evt.worker.metrics.*``), ``type`` a message tag, ``reason`` one of ``malformed`` (did not decode) or
``invalid`` (decoded, but refused by the actor, e.g. an unknown instance type).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

_SOLVE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HandledCounts(Collector):
    """``costagent_messages_handled_total``, kept as plain integers.

    It is incremented once per message on the ingest hot path, where a prometheus-client counter's lock
    costs a measurable share (bench/ingest.py); the event loop is single-threaded, so a list cell per
    label set is enough, and this collector exposes them at scrape time.
    """

    name = "costagent_messages_handled"
    documentation = "Messages decoded and handled, per actor, subscription subject and message type."
    labels = ("actor", "subject", "type")

    def __init__(self) -> None:
        self._cells: dict[tuple[str, str, str], list[int]] = {}

    def cell(self, actor: str, subject: str, type_: str) -> list[int]:
        """The counter for one label set: increment ``cell[0]``."""
        return self._cells.setdefault((actor, subject, type_), [0])

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=list(self.labels))
        for labels, cell in self._cells.items():
            family.add_metric(list(labels), cell[0])
        yield family


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.messages_handled = HandledCounts()
        r.register(self.messages_handled)
        self.messages_rejected = Counter(
            "costagent_messages_rejected",
            "Messages dropped as malformed (did not decode) or invalid (refused by the actor).",
            ["actor", "subject", "type", "reason"],
            registry=r,
        )
        self.messages_dropped = Counter(
            "costagent_messages_dropped",
            "Messages the NATS client dropped before any handler saw them, because the subscription's queue "
            "was full (a handler fell behind: a slow consumer), per subscription subject.",
            ["subject"],
            registry=r,
        )
        self.nats_disconnections = Counter(
            "costagent_nats_disconnections",
            "Times this process's NATS connection was lost: a server restart, a network failure, or the "
            "server cutting off a slow consumer; what was sent to it meanwhile is lost (core NATS).",
            registry=r,
        )
        self.messages_published = Counter(
            "costagent_messages_published",
            "Messages published, per message type.",
            ["type"],
            registry=r,
        )
        self.actor_restarts = Counter(
            "costagent_actor_restarts", "Actor restarts after a crash.", ["actor"], registry=r
        )
        self.solve_seconds = Histogram(
            "costagent_optimizer_solve_seconds",
            "Wall time of one optimizer tick (all attempts).",
            buckets=_SOLVE_BUCKETS,
            registry=r,
        )
        self.planned_instances = Gauge(
            "costagent_planned_instances", "Instances in the latest plan, per tier.", ["tier"], registry=r
        )
        self.planned_hourly_cost = Gauge(
            "costagent_planned_hourly_cost_dollars", "Hourly cost of the latest plan.", registry=r
        )
        self.plans_published = Counter(
            "costagent_plans_published", "Allocation plans published, per trigger.", ["reason"], registry=r
        )
        self.cost_total = Gauge(
            "costagent_cost_dollars", "Fleet cost accrued since start, by the ledger.", registry=r
        )
        self.fleet_hourly_cost = Gauge(
            "costagent_fleet_hourly_cost_dollars",
            "Hourly cost of the nodes paid for now (launched, ready, draining), as of the latest cost "
            "report.",
            registry=r,
        )
        self.plan_hourly_cost = Gauge(
            "costagent_plan_hourly_cost_dollars",
            "Hourly cost of the latest plan's targets at the same prices as the fleet's, as of the latest "
            "cost report (0 until a plan has been seen).",
            registry=r,
        )
        self.profiler_bins = Counter(
            "costagent_profiler_bins_closed", "Demand bins closed and recorded.", registry=r
        )
        self.clock_skew_reports = Counter(
            "costagent_profiler_clock_skew_reports",
            "Worker reports stamped more than one bin ahead of the agent's clock, counted as of now.",
            registry=r,
        )
        self.late_reports = Counter(
            "costagent_profiler_late_reports",
            "Worker reports for an already closed bin, counted into the open bin.",
            registry=r,
        )
        self.dynamo_scrape_failures = Counter(
            "costagent_dynamo_frontend_scrape_failures",
            "Dynamo frontend /metrics reads that failed (no answer, not 200, unusable text), per frontend.",
            ["frontend"],
            registry=r,
        )
        self.dynamo_frontend_rejected = Counter(
            "costagent_dynamo_frontend_rejected",
            "Dynamo frontend intervals left out of the demand (impossible increase), per frontend.",
            ["frontend"],
            registry=r,
        )
        self.dynamo_live_workers = Gauge(
            "costagent_dynamo_live_workers",
            "Dynamo workers (worker id × DP rank) heard from recently on the event plane.",
            registry=r,
        )
        self.plan_limited = Counter(
            "costagent_plan_limited",
            "Plans the [limits] clamped, per limit (spot, ondemand, total, hourly_cost; reserved: reserved "
            "nodes above their limit): demand asked for more than the team allows.",
            ["limit"],
            registry=r,
        )
        self.notices_held = Counter(
            "costagent_spot_notices_held",
            "Preemption notices above [spot_monitor] max_notices_per_minute, held and released at that rate.",
            registry=r,
        )
        self.notices_dropped = Counter(
            "costagent_spot_notices_dropped",
            "Held preemption notices dropped: the queue was full (max_held_notices).",
            registry=r,
        )
        self.registry_evicted = Counter(
            "costagent_registry_evicted",
            "Workers and instances the agent forgot to stay within its bounds (the spot monitor's registry: "
            "least recently heard first; the optimizer's fleet view: longest draining first): many means "
            "made-up ids, or a fleet above the bound.",
            registry=r,
        )
        self.state_snapshots_rejected = Counter(
            "costagent_state_snapshots_rejected",
            "Saved state ([state] store) that could not be read at start-up (corrupt, another version, "
            "another catalog): ignored, the actor started empty. Per key.",
            ["key"],
            registry=r,
        )
        self.state_save_failures = Counter(
            "costagent_state_save_failures",
            "Snapshots the state store refused or did not answer (retried at the next save). Per key.",
            ["key"],
            registry=r,
        )
        self.state_saves = Counter(
            "costagent_state_saves", "Snapshots saved in the state store, per key.", ["key"], registry=r
        )
        self.state_snapshot_bytes = Gauge(
            "costagent_state_snapshot_bytes",
            "Size of the last snapshot saved (compressed), per key.",
            ["key"],
            registry=r,
        )
        self.leader = Gauge(
            "costagent_leader",
            "1 while this replica holds the leader lease and runs the agent's actors, else 0 ([leader]).",
            registry=r,
        )
        self.leader_changes = Counter(
            "costagent_leader_changes",
            "Times this replica became leader or stopped leading.",
            registry=r,
        )
        self.messages_silenced = Counter(
            "costagent_messages_silenced",
            "Messages a replica did not send, per message type: its leader lease was past its fence, so "
            "another replica may be leading ([leader]).",
            ["type"],
            registry=r,
        )
