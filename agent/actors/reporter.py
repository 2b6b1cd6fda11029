"""CostReporter actor.

Listens to: ``{ns}.evt.fleet.instance.*`` (what is paid for), ``{ns}.evt.spot.price.*`` (what spot costs),
``{ns}.evt.worker.metrics.*`` (tokens and requests served), ``{ns}.evt.plan.allocation`` (AllocationPlan:
what the agent would run), ``{ns}.req.cost.report`` (CostReportRequest).
Publishes:  ``{ns}.evt.cost.report`` (CostReport) every ``[reporter] interval_seconds``, and answers each
request with the report as of that moment.
Guarantees: instance-hours are accrued on the agent's clock from the moment it starts, at each instance
type's own price per tier (spot at the latest fresh quote for the pools held, else the catalog's); every
node from ``launched`` until ``terminated`` is paid for. Each report also compares the fleet paid for now
with the newest plan (by ``sent_at``: a plan older than the one held is ignored), both priced at the same
prices now (:mod:`agent.core.plan_gap`); a plan naming a type or pool outside the catalog is refused. Memory
is bounded by the catalog, the live fleet and one plan, not by how long it runs.
Durable (``[state]``, key ``cost_reporter``): the ledger, the fleet with the time of the last accrual,
and the plan held are saved at each fleet event and plan, and every ``snapshot_seconds`` otherwise; a
restarted agent continues the ledger and bills the fleet it knew for the time it was down.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from nats.aio.msg import Msg

from agent.actors.spot_quotes import SavedQuote, received_quote, restore_quotes, saved_quotes
from agent.bus import Bus, Rejected
from agent.core.catalog import Catalog
from agent.core.fleet_state import FleetSnapshot, FleetState
from agent.core.ledger import CostLedger, LedgerState
from agent.core.plan_gap import paid_slots, plan_gap
from agent.core.reconcile import Slot
from agent.core.spot_prices import SpotPriceBook
from agent.runtime.actor import Listen
from agent.runtime.clock import Clock
from agent.runtime.persistent_actor import PersistentActor
from agent.runtime.state_store import Snapshots, decode_state, encode_state
from schemas import AllocationPlan, CostReport, CostReportRequest, InstanceEvent, SpotPrice, WorkerMetrics

_SECONDS_PER_HOUR = 3600.0


class ReporterState(msgspec.Struct, frozen=True, tag="cost_reporter.v1", tag_field="kind"):
    ledger: LedgerState
    fleet: FleetSnapshot
    since: float | None
    """The ledger's last accrual, on the agent's clock: from there, the fleet is billed on restart."""
    tokens: float
    requests: float
    plan: AllocationPlan | None
    prices: list[SavedQuote] = msgspec.field(default_factory=list)
    """The latest quote per spot pool: the gap is billed at the price that held."""


class CostReporterActor(PersistentActor):
    name = "cost_reporter"
    state_key = "cost_reporter"

    def __init__(
        self,
        bus: Bus,
        clock: Clock,
        *,
        catalog: Catalog,
        fleet: FleetState,
        interval_s: float,
        price_max_age_s: float,
        snapshots: Snapshots | None = None,
    ) -> None:
        super().__init__(bus, clock, interval_s=interval_s, snapshots=snapshots)
        self.catalog = catalog
        self.fleet = fleet
        self.ledger = CostLedger(catalog)
        self.reports = 0
        self._since: float | None = None
        self._tokens = 0.0
        self._requests = 0.0
        self.prices = SpotPriceBook(price_max_age_s)
        self.plan: AllocationPlan | None = None
        self._plan_slots: dict[Slot, int] = {}

    async def on_start(self) -> None:
        await super().on_start()  # a saved state first: its last accrual is where billing resumes
        if self._since is None:
            self._since = self.clock.now()

    def encode_state(self) -> bytes:
        self.accrue()
        return encode_state(
            ReporterState(
                ledger=self.ledger.state(),
                fleet=self.fleet.snapshot(),
                since=self._since,
                tokens=self._tokens,
                requests=self._requests,
                plan=self.plan,
                prices=saved_quotes(self.prices),
            )
        )

    def restore_state(self, data: bytes) -> None:
        saved = decode_state(ReporterState, data)
        fleet, ledger = FleetState(self.catalog), CostLedger(self.catalog)
        fleet.restore(saved.fleet)
        ledger.restore(saved.ledger)
        prices = SpotPriceBook(self.prices.max_age_s)
        restore_quotes(prices, fleet, saved.prices)
        slots = self._slots(saved.plan) if saved.plan is not None else {}
        self.fleet, self.ledger, self.plan, self._plan_slots = fleet, ledger, saved.plan, slots
        self.prices = prices
        self._since, self._tokens, self._requests = saved.since, saved.tokens, saved.requests

    def subscriptions(self) -> Sequence[Listen]:
        s = self.bus.subjects
        return [
            Listen(s.fleet_instance_all, InstanceEvent, self.on_instance),
            Listen(s.spot_price_all, SpotPrice, self.on_price),
            Listen(s.worker_metrics_all, WorkerMetrics, self.on_metrics),
            Listen(s.plan_allocation, AllocationPlan, self.on_plan),
            Listen(s.cost_report_request, CostReportRequest, self.on_request),
        ]

    async def on_instance(self, event: InstanceEvent, _raw: Msg) -> None:
        try:
            self.fleet.check(event.instance_type, event.pool, event.tier)
        except ValueError as err:
            raise Rejected(str(err)) from None
        self.accrue()  # the fleet as it was up to now, then the change
        if self.fleet.apply(
            event.instance_id, event.instance_type, event.pool, event.tier, event.state, event.sent_at
        ):
            await self.save_now()  # what is paid for: kill -9 must not lose it

    async def on_price(self, quote: SpotPrice, _raw: Msg) -> None:
        pool, received = received_quote(self.fleet, quote, self.clock.now())
        if self.prices.is_news(pool, received):
            self.accrue()  # time so far at the old price
            self.prices.offer(pool, received)
            self.changed()

    async def on_metrics(self, m: WorkerMetrics, _raw: Msg) -> None:
        self._tokens += m.prompt_tokens + m.output_tokens
        self._requests += m.requests_completed
        self.changed()

    async def on_plan(self, plan: AllocationPlan, _raw: Msg) -> None:
        if self.plan is not None and plan.sent_at < self.plan.sent_at:
            return  # a late plan: the one held already replaced it
        try:
            slots = self._slots(plan)
        except ValueError as err:
            raise Rejected(str(err)) from None
        self.plan = plan
        self._plan_slots = slots
        self.changed()

    def _slots(self, plan: AllocationPlan) -> dict[Slot, int]:
        """The plan's nodes per slot; ValueError naming the target that is not in the catalog."""
        slots: dict[Slot, int] = {}
        for i, target in enumerate(plan.targets):
            try:
                self.fleet.check(target.instance_type, target.pool, target.tier)
            except ValueError as err:
                raise ValueError(f"targets[{i}].{err}") from None
            slot = (target.instance_type, target.pool, target.tier)
            slots[slot] = slots.get(slot, 0) + target.count
        return slots

    async def on_request(self, request: CostReportRequest, raw: Msg) -> None:
        await self.bus.respond(raw, self.report(correlation_id=request.msg_id))

    async def on_timer(self) -> None:
        await self.bus.publish(self.bus.subjects.cost_report, self.report())
        self.reports += 1
        self.changed()

    def _spot_prices(self, since: float) -> dict[str, float]:
        """Per type: the held-weighted mean of the quotes for the pools its spot nodes run in, each quote
        that was fresh when the interval began (the catalog's price otherwise)."""
        weighted: dict[str, tuple[float, int]] = {}
        for (name, pool), count in self.fleet.spot_pools_held().items():
            price = self.prices.price((name, pool), since)
            if price is None:
                price = self.catalog.types[name].spot_hourly
            total, n = weighted.get(name, (0.0, 0))
            weighted[name] = (total + price * count, n + count)
        return {name: total / n for name, (total, n) in weighted.items() if n > 0}

    def accrue(self) -> None:
        now = self.clock.now()
        since = now if self._since is None else self._since
        if now < since:
            return  # a clock step back: accrue from where the ledger is, once time passes it
        self.ledger.record(
            (now - since) / _SECONDS_PER_HOUR,
            self.fleet.paid_counts(),
            tokens=self._tokens,
            requests=self._requests,
            spot_prices=self._spot_prices(since),
            start_h=since / _SECONDS_PER_HOUR,
        )
        self._since = now
        self._tokens = 0.0
        self._requests = 0.0

    def report(self, correlation_id: str = "") -> CostReport:
        self.accrue()
        r = self.ledger.report()
        now = self.clock.now()
        fresh = {pool: quote.price_hourly for pool, quote in self.prices.fresh(now).items()}
        gap = plan_gap(
            self.catalog,
            paid_slots(self.fleet.instances()),
            self._plan_slots if self.plan is not None else None,
            fresh,
        )
        metrics = self.bus.metrics
        metrics.cost_total.set(r.total_cost)
        metrics.fleet_hourly_cost.set(gap.fleet_hourly_cost)
        if gap.plan_hourly_cost is not None:
            metrics.plan_hourly_cost.set(gap.plan_hourly_cost)
        start = r.period_start_h * _SECONDS_PER_HOUR if r.period_start_h is not None else now
        end = r.period_end_h * _SECONDS_PER_HOUR if r.period_end_h is not None else start
        return CostReport(
            **self.bus.envelope(correlation_id=correlation_id),
            period_start=start,
            period_end=end,
            hours=r.hours,
            total_cost=r.total_cost,
            avg_hourly_cost=r.avg_hourly_cost,
            monthly_cost=r.monthly_cost,
            tokens=r.tokens,
            requests=r.requests,
            cost_per_mtok=r.cost_per_mtok,
            cost_per_request=r.cost_per_request,
            instance_hours={str(k): v for k, v in r.instance_hours.items()},
            instance_hours_by_type={
                n: {str(k): v for k, v in d.items()} for n, d in r.instance_hours_by_type.items()
            },
            cost_by_tier={str(k): v for k, v in r.cost_by_tier.items()},
            cost_by_type=dict(r.cost_by_type),
            spot_fraction=r.spot_fraction,
            ondemand_equivalent_cost=r.ondemand_equivalent_cost,
            savings=r.savings,
            savings_fraction=r.savings_fraction,
            intervals=r.intervals,
            fleet_hourly_cost=gap.fleet_hourly_cost,
            fleet_nodes={str(k): v for k, v in gap.fleet_nodes.items()},
            plan_id=self.plan.plan_id if self.plan is not None else None,
            plan_hourly_cost=gap.plan_hourly_cost,
            plan_nodes={str(k): v for k, v in gap.plan_nodes.items()},
            plan_gap_hourly=gap.plan_gap_hourly,
        )
