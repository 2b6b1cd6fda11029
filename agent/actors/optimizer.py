"""OptimizerTick actor.

Listens to: its timer (``[optimizer] interval_seconds``), ``{ns}.cmd.plan.tick`` (ReplanRequest),
``{ns}.evt.fleet.instance.*`` (InstanceEvent) and ``{ns}.evt.spot.price.*`` (SpotPrice).
Publishes:  ``{ns}.evt.plan.allocation`` (AllocationPlan).
Guarantees:
- Each trigger (a timer tick, a request's ``msg_id``, a fleet event's ``msg_id``) is planned for at most
  once: a redelivered request is ignored. Triggers that arrive while a plan is being made are answered
  together by the next plan, which lists all their ids.
- While the agent's own NATS link is down (``bus.link``), triggers (the timer's ticks) are held, not
  planned: the first timer wake once the link is back answers all of them with one plan, instead of a
  burst of stale plans buffered by the client and delivered at the reconnection.
- A fleet change triggers a plan only when it takes the fleet below the latest plan (a launched or ready
  node the plan wanted starts draining or is gone); the changes the plan itself asked for do not, nor
  does the termination of a node already draining.
- With arrivals (a Dynamo frontend's), the plan covers what the backtest's ``rolling`` covers, by the
  same rule (``agent.core.rolling_demand``, from ``Settings.rolling_demand``): the busiest minute of the
  last ``base_window_seconds``, held at the profile's expectation through an outage, times the headroom
  the last week's one-minute arrivals call for. With worker reports only (completions, not arrivals), it
  covers the larger of the profile's P75 now and the busiest demand observed over the base window
  (``agent.core.recent_peak``), and the profile's next-hour P95 (``agent.core.tick_demand``). Reserved
  nodes are never changed; spot prices older than ``spot_price_max_age_seconds`` are ignored.
- Between ticks, every ``surge_check_seconds``, demand observed above what the latest plan covered
  triggers a plan at once (reason ``demand``): a node asked for at the surge serves a boot later, not a
  boot plus the rest of the tick.
- Those three settings, when ``"auto"``, follow the kind of demand the profiler's bins hold at each check
  and each plan (``agent.core.demand_policy``): a Dynamo frontend's arrivals get the backtest's rolling
  values, worker reports alone none. Every plan's ``detail`` says which applied; a change is logged
  (``demand_policy``).
- Durable (``[state]``, key ``optimizer``): the last plan and the fleet it planned from are saved at each
  plan and fleet change; a restarted agent holds them again (the step limits keep their reference, a
  fleet change is judged against the last plan, the surge check against what it covered).
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Final

import msgspec
import structlog
from nats.aio.msg import Msg

from agent.actors.spot_quotes import SavedQuote, received_quote, restore_quotes, saved_quotes
from agent.bus import Bus, Rejected
from agent.config import OptimizerSettings
from agent.core.capacity import SloConfig
from agent.core.catalog import Catalog, Tier
from agent.core.demand import Demand
from agent.core.demand_bins import DemandBins
from agent.core.demand_policy import DemandPolicy, demand_kind
from agent.core.fleet_state import FleetSnapshot, FleetState
from agent.core.optimizer import Allocation, FleetLimits, SpotMarket, TickInput, optimize_tick
from agent.core.profiler import DemandProfiler
from agent.core.recent_peak import RecentMean, RecentPeak
from agent.core.rolling_demand import Cover, RollingDemand, expected_over
from agent.core.spot_prices import SpotPriceBook
from agent.core.tick_demand import NO_DEMAND, TickDemand, tick_demand
from agent.runtime.actor import Listen
from agent.runtime.clock import Clock
from agent.runtime.persistent_actor import PersistentActor
from agent.runtime.state_store import Snapshots, decode_state, encode_state
from schemas import AllocationPlan, InstanceEvent, PlanReason, ReplanRequest, SpotPrice, Target, new_msg_id

_EPSILON_S: Final = 1e-9  # a timer wake at a due time counts as on time despite float sums


def _describe(cover: Cover) -> str:
    """Where a rolling plan's demand came from, for its detail."""
    held = "the profile's expectation (an outage)" if cover.outage else "the observed peak"
    return f"rolling: {held} × headroom {cover.headroom:.2f}"


def _next_due(due: float, now: float, period: float) -> float:
    """The first time after ``now`` on the schedule ``due + k × period`` (drift-free, skipping missed)."""
    return due + period * ((now - due) // period + 1)


# Ids of triggers already planned for, kept to recognise a redelivery.
_REMEMBER_TRIGGERS: Final = 4096
_PRIORITY: Final[dict[str, int]] = {"tick": 0, "demand": 1, "fleet": 2, "manual": 3, "preemption": 4}


class OptimizerState(msgspec.Struct, frozen=True, tag="optimizer.v1", tag_field="kind"):
    last_plan: AllocationPlan | None
    fleet: FleetSnapshot
    prices: list[SavedQuote] = msgspec.field(default_factory=list)
    recent: list[tuple[float, float, float, float]] = msgspec.field(default_factory=list)
    """The recent peak's observations: (time, rps, prompt tokens, output tokens)."""
    minutes: list[float] = msgspec.field(default_factory=list)
    """The rolling rule's one-minute arrival rates (the headroom's history), oldest first."""
    base_window: list[tuple[float, float, float]] = msgspec.field(default_factory=list)
    """The rolling rule's base window: (rps, prompt tokens, output tokens) per minute."""
    minute_due: float | None = None


class OptimizerTickActor(PersistentActor):
    name = "optimizer_tick"
    state_key = "optimizer"

    def __init__(
        self,
        bus: Bus,
        clock: Clock,
        *,
        catalog: Catalog,
        slo: SloConfig,
        settings: OptimizerSettings,
        profiler: DemandProfiler,
        bins: DemandBins,
        fleet: FleetState,
        limits: FleetLimits | None = None,
        snapshots: Snapshots | None = None,
        rolling: RollingDemand | None = None,
    ) -> None:
        self.limits = limits or FleetLimits()
        self.rolling = rolling or RollingDemand()
        self.demand_config = settings.demand_policy()
        fine_s = self.demand_config.timer_s()
        # One timer: the tick's, or a finer one for sampling demand and the surge check that also keeps
        # the tick's schedule.
        fine = 0 < fine_s < settings.interval_seconds
        super().__init__(
            bus, clock, interval_s=fine_s if fine else settings.interval_seconds, snapshots=snapshots
        )
        self.catalog = catalog
        self.slo = slo
        self.settings = settings
        self.config = settings.to_core()
        self.profiler = profiler
        self.bins = bins
        self.fleet = fleet
        self._evicted_counted = fleet.evicted
        self.last_plan: AllocationPlan | None = None
        self.plans = 0
        self.prices = SpotPriceBook(settings.spot_price_max_age_seconds)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._pending: list[tuple[PlanReason, str]] = []
        self._planning = False
        self.policy = self.demand_config.resolve("completions")
        self._peak = RecentPeak(self.policy.base_window_s)
        self._smooth = RecentMean(self.policy.smoothing_s)
        self._covered_rps = 0.0
        self._tick_due = clock.now() + settings.interval_seconds
        self._dues = [clock.now(), clock.now()]  # the next sample and surge check (DemandPolicy.periods)
        self._minute_due = clock.now() + self.rolling.step_s  # the rolling rule's next observation
        self._log = structlog.get_logger("agent.optimizer").bind(actor=self.name)

    def encode_state(self) -> bytes:
        recent = [(t, d.rps, d.prompt_tokens, d.output_tokens) for t, d in self._peak.held()]
        minutes, window = self.rolling.history()
        return encode_state(
            OptimizerState(
                self.last_plan,
                self.fleet.snapshot(),
                saved_quotes(self.prices),
                recent,
                minutes,
                [(d.rps, d.prompt_tokens, d.output_tokens) for d in window],
                self._minute_due,
            )
        )

    def restore_state(self, data: bytes) -> None:
        saved = decode_state(OptimizerState, data)
        if saved.last_plan is not None:
            for i, t in enumerate(saved.last_plan.targets):
                try:
                    self.fleet.check(t.instance_type, t.pool, t.tier)
                except ValueError as err:
                    raise ValueError(f"last_plan.targets[{i}].{err}") from None
        recent = [(at, Demand(rps, prompt, output)) for at, rps, prompt, output in saved.recent]
        # Checked before anything is taken over, as ``recent`` is: a bad snapshot changes nothing.
        window = [Demand(*d) for d in saved.base_window]
        if not all(math.isfinite(rps) and rps >= 0 for rps in saved.minutes):
            raise ValueError("minutes: every rate must be a finite number ≥ 0")
        if saved.minute_due is not None and not math.isfinite(saved.minute_due):
            raise ValueError("minute_due: must be a finite time")  # NaN: no minute would be due again
        prices = SpotPriceBook(self.prices.max_age_s)
        restore_quotes(prices, self.fleet, saved.prices)
        self.fleet.restore(saved.fleet)
        self.prices = prices
        for at, demand in recent:
            self._peak.add(at, demand)
        self.rolling.restore(saved.minutes, window)
        if saved.minute_due is not None:
            self._minute_due = saved.minute_due
        self.last_plan = saved.last_plan
        if saved.last_plan is not None:
            # The surge check compares a minute with the base the last plan covered, not with the plan's
            # demand (the base × headroom): the restored window holds that base again.
            planned = saved.last_plan.demand_now_rps
            self._covered_rps = min(planned, self.rolling.base(Demand(planned, 0.0, 0.0)).rps)

    def subscriptions(self) -> Sequence[Listen]:
        s = self.bus.subjects
        return [
            Listen(s.plan_tick, ReplanRequest, self.on_replan),
            Listen(s.fleet_instance_all, InstanceEvent, self.on_instance),
            Listen(s.spot_price_all, SpotPrice, self.on_price),
        ]

    async def on_timer(self) -> None:
        now = self.clock.now()
        interval = self.settings.interval_seconds
        if now >= self._tick_due - _EPSILON_S or self.interval_s == interval:
            self._tick_due = _next_due(self._tick_due, now, interval)
            await self.trigger("tick", f"tick-{new_msg_id()}")
            return
        if self._pending and not self._planning and self.bus.link.connected:
            await self._plan_pending()  # what was held while the link was down: one plan for all of it
            return
        # The timer runs at the finest period any kind of demand may ask for; the kind seen now says
        # which of sampling and the surge check are due.
        sample, check = [
            self._due(i, now, period) for i, period in enumerate(self._follow_demand(now).periods())
        ]
        if not (sample or check):
            return
        observed = self._observe(now)
        if check and observed is not None and self.last_plan is not None and observed.rps > self._covered_rps:
            await self.trigger("demand", f"demand-{new_msg_id()}")

    def _due(self, which: int, now: float, period: float) -> bool:
        """Whether the periodic step ``which`` is due now (then its next time is set); never for period 0."""
        if not period > 0 or now < self._dues[which] - _EPSILON_S:
            return False
        self._dues[which] = _next_due(self._dues[which], now, period)
        return True

    async def on_replan(self, request: ReplanRequest, _raw: Msg) -> None:
        await self.trigger("manual", request.msg_id)

    async def on_instance(self, event: InstanceEvent, _raw: Msg) -> None:
        before = self.fleet.state(event.instance_id)
        try:
            changed = self.fleet.apply(
                event.instance_id, event.instance_type, event.pool, event.tier, event.state, event.sent_at
            )
        except ValueError as err:
            raise Rejected(str(err)) from None
        self._count_evicted()
        if changed:
            self.changed()
        # Capacity is lost when a serving (or booting) node starts draining or vanishes; a node that was
        # already draining, or never seen, takes nothing more away when it terminates.
        lost = before in ("launched", "ready") and event.state in ("draining", "terminated")
        if changed and lost and self._below_plan(event):
            await self.trigger("fleet", event.msg_id)

    async def capacity_lost(
        self, lost: Sequence[tuple[str, tuple[str, str, str] | None]], trigger_id: str
    ) -> None:
        """Nodes are going (a preemption notice, or their workers fell silent; each with its (type, pool,
        tier) when known): plan without them, now, in one plan however many went at once."""
        for instance_id, described in lost:
            self._take_out(instance_id, described)
        self._count_evicted()
        self.changed()
        await self.trigger("preemption", trigger_id)

    def _count_evicted(self) -> None:
        new = self.fleet.evicted - self._evicted_counted
        if new:
            self.bus.metrics.registry_evicted.inc(new)
            self._evicted_counted = self.fleet.evicted

    def _take_out(self, instance_id: str, described: tuple[str, str, str] | None) -> None:
        inst = self.fleet.get(instance_id)
        before = inst.state if inst is not None else None
        if inst is not None and before in ("launched", "ready"):
            self.fleet.apply(
                instance_id, inst.instance_type, inst.pool, inst.tier, "draining", self.clock.now()
            )
        elif before is None and described is not None:
            name, pool, tier = described
            if tier in ("reserved", "spot", "ondemand"):
                # Not a catalog node (ValueError): there is nothing to take out of the plan's fleet.
                with contextlib.suppress(ValueError):
                    self.fleet.apply(instance_id, name, pool, tier, "draining", self.clock.now())  # type: ignore[arg-type]

    async def on_price(self, quote: SpotPrice, _raw: Msg) -> None:
        self.prices.offer(*received_quote(self.fleet, quote, self.clock.now()))

    def _below_plan(self, event: InstanceEvent) -> bool:
        plan = self.last_plan
        if plan is None or event.tier == "reserved":
            return False
        wanted = sum(
            t.count
            for t in plan.targets
            if (t.instance_type, t.pool, t.tier) == (event.instance_type, event.pool, event.tier)
        )
        fleet = self.fleet.fleet()
        held = (fleet.spot if event.tier == "spot" else fleet.ondemand).get(
            (event.instance_type, event.pool), 0
        )
        return held < wanted

    async def trigger(self, reason: PlanReason, trigger_id: str) -> bool:
        """Plan for this trigger unless it was planned for already; False for a repeat."""
        if trigger_id in self._seen:
            return False
        self._seen[trigger_id] = None
        if len(self._seen) > _REMEMBER_TRIGGERS:
            self._seen.popitem(last=False)
        if not self.bus.link.connected:
            # One held trigger per reason: an outage of hours must not pile up a tick per interval.
            self._pending = [(r, t) for r, t in self._pending if r != reason]
        self._pending.append((reason, trigger_id))
        if self._planning or not self.bus.link.connected:
            # The plan in progress picks it up when it is done; while the link is down, the first timer
            # wake after it is back does (a plan made now would reach nobody, then arrive stale).
            return True
        await self._plan_pending()
        return True

    async def _plan_pending(self) -> None:
        self._planning = True
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._plan(batch)
        finally:
            self._planning = False

    def _follow_demand(self, now: float) -> DemandPolicy:
        """The policy for the kind of demand the bins hold now; its windows apply from this observation."""
        policy = self.demand_config.resolve(demand_kind(self.bins.sources(now), self.policy.kind))
        if policy != self.policy:
            # The windows change in place: observations already held stay while the new window keeps them.
            self._peak.window_s = policy.base_window_s
            self._smooth.window_s = policy.smoothing_s
            self.policy = policy
            self._log.info(
                "demand_policy",
                kind=policy.kind,
                base_window_s=policy.base_window_s,
                surge_check_s=policy.surge_check_s,
                smoothing_s=policy.smoothing_s,
            )
        return policy

    def _observe(self, now: float) -> Demand | None:
        """The demand observed now, smoothed over ``demand_smoothing_seconds``, into the recent peak; and
        at each minute's end, with arrivals, the minute's mean into the rolling rule (one observation a
        minute, as the backtest's; a minute with no report is missed, as a trace's gap is zero)."""
        current = self.bins.current(now)
        if current is None:
            return None
        smoothed = self._smooth.add(now, current)
        self._peak.add(now, smoothed)
        if now >= self._minute_due - _EPSILON_S:
            self._minute_due = _next_due(self._minute_due, now, self.rolling.step_s)
            if self.policy.kind == "arrivals":
                self.rolling.observe(smoothed)
                self.changed()
        return smoothed

    def market(self, now: float) -> SpotMarket:
        fresh = self.prices.fresh(now)
        return SpotMarket(
            price={k: q.price_hourly for k, q in fresh.items()},
            available={k: q.available for k, q in fresh.items() if q.available is not None},
            reclaim_per_hour={
                k: q.reclaim_per_hour for k, q in fresh.items() if q.reclaim_per_hour is not None
            },
        )

    async def _plan(self, batch: list[tuple[PlanReason, str]]) -> None:
        now = self.clock.now()
        policy = self._follow_demand(now)
        observed = self._observe(now)
        if policy.kind == "arrivals":
            cover = self.rolling.cover(
                now, observed or NO_DEMAND, lambda: expected_over(self.profiler, now, self.rolling.lead_s)
            )
            demand = TickDemand(cover.demand, cover.demand, _describe(cover))
            self._covered_rps = cover.base.rps  # a minute busier than the base asks for a plan
            zone_loss = cover.zone_loss_share(self.config.survive_zone_loss)
            config = msgspec.structs.replace(self.config, survive_zone_loss=zone_loss)
        else:
            demand = tick_demand(self.profiler, now, self._peak.peak(now))
            self._covered_rps = demand.now.rps
            config = self.config
        fleet = self.fleet.fleet()
        inp = TickInput(demand.now, demand.next_hour, fleet, self.market(now))
        alloc = optimize_tick(self.catalog, inp, self.slo, config, self.limits)
        reason = max((r for r, _ in batch), key=_PRIORITY.__getitem__)
        plan = AllocationPlan(
            **self.bus.envelope(correlation_id=batch[0][1]),
            plan_id=new_msg_id(),
            reason=reason,
            trigger_ids=[t for _, t in batch],
            targets=self._targets(alloc),
            hourly_cost=alloc.hourly_cost,
            status=alloc.status,
            binding=list(alloc.binding),
            detail=f"{alloc.reason}; demand from {demand.source} ({policy.describe()})",
            demand_now_rps=demand.now.rps,
            demand_next_rps=demand.next_hour.rps,
            capacity_now_rps=alloc.capacity_now_rps,
            capacity_next_rps=alloc.capacity_next_rps,
            solve_seconds=alloc.solve_seconds,
        )
        metrics = self.bus.metrics
        metrics.solve_seconds.observe(alloc.solve_seconds)
        for tier in ("reserved", "spot", "ondemand"):
            metrics.planned_instances.labels(tier).set(alloc.total(tier))
        metrics.planned_hourly_cost.set(alloc.hourly_cost)
        metrics.plans_published.labels(reason).inc()
        self.last_plan = plan
        self.plans += 1
        await self.bus.publish(self.bus.subjects.plan_allocation, plan)
        if alloc.limited:
            self._limited(plan, alloc)
        self._log.info(
            "plan_published",
            plan_id=plan.plan_id,
            msg_id=plan.msg_id,
            reason=reason,
            triggers=len(batch),
            status=alloc.status,
            hourly_cost=round(alloc.hourly_cost, 2),
            reserved=alloc.total("reserved"),
            spot=alloc.total("spot"),
            ondemand=alloc.total("ondemand"),
            demand_now_rps=round(demand.now.rps, 3),
            demand_kind=policy.kind,
            solve_ms=round(alloc.solve_seconds * 1000, 2),
        )
        await self.save_now()  # with the fleet it planned from; last, so that the plan is not held up

    def _limited(self, plan: AllocationPlan, alloc: Allocation) -> None:
        """Alert: the team's [limits] clamped this plan (demand asked for more than they allow)."""
        for name in alloc.limited:
            self.bus.metrics.plan_limited.labels(name.removeprefix("limit:")).inc()
        unlimited = alloc.unlimited
        self._log.warning(
            "plan_limited",
            plan_id=plan.plan_id,
            limits=list(alloc.limited),
            status=alloc.status,
            hourly_cost=round(alloc.hourly_cost, 2),
            instances=sum(t.count for t in plan.targets),
            unlimited_hourly_cost=None if unlimited is None else round(unlimited.hourly_cost, 2),
            unlimited_instances=None if unlimited is None else unlimited.instances,
            demand_now_rps=round(plan.demand_now_rps, 3),
        )

    def _targets(self, alloc: Allocation) -> list[Target]:
        targets: list[Target] = []
        reserved_pools: dict[tuple[str, str], int] = {}
        for inst in self.fleet.instances():
            if inst.tier == "reserved" and inst.state != "draining":
                key = (inst.instance_type, inst.pool)
                reserved_pools[key] = reserved_pools.get(key, 0) + 1
        for (name, pool), count in sorted(reserved_pools.items()):
            targets.append(Target(instance_type=name, pool=pool, tier="reserved", count=count))
        tiers: tuple[tuple[Tier, dict[tuple[str, str], int]], ...] = (
            ("spot", alloc.spot),
            ("ondemand", alloc.ondemand),
        )
        for tier, counts in tiers:
            for name, pool in self.catalog.pools():
                targets.append(
                    Target(instance_type=name, pool=pool, tier=tier, count=counts.get((name, pool), 0))
                )
        return targets
