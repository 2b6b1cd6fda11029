"""Capacity strategies for the backtest: ours (``rolling``) and the baselines it is judged against."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
import numpy as np

from agent.core.capacity import SloConfig, instances_needed, rps_per_instance
from agent.core.catalog import Catalog
from agent.core.commitment import plan_commitment, seed_rule
from agent.core.comparison import planning_steps
from agent.core.demand import Demand, DemandForecast
from agent.core.hedging import headroom_for_budget
from agent.core.optimizer import Fleet, OptimizerConfig, PoolKey, SpotMarket, TickInput, optimize_tick
from agent.core.profiler import DemandProfiler, ProfilerEmptyError
from agent.sim.replay import Market, Targets, View


def peak_nodes(catalog: Catalog, demand: Sequence[Demand], slo: SloConfig) -> int:
    """Nodes of the catalog's main type the busiest step needs."""
    return max((instances_needed(catalog.main_type, d, slo) for d in demand), default=0)


@dataclass(slots=True)
class StaticPolicy:
    """The seed's baselines: a fixed fleet of the main type sized for the peak, 24/7."""

    name: str
    catalog: Catalog
    nodes: int
    tier: str  # "reserved" or "ondemand"

    def observe(self, t: float, demand: Demand) -> None:
        return None

    def commit(self, t: float, market: Market) -> dict[str, int]:
        return {self.catalog.main_type.name: self.nodes} if self.tier == "reserved" else {}

    def wants_plan(self, t: float, demand: Demand) -> bool:
        return False

    def plan(self, view: View) -> Targets:
        if self.tier == "reserved":
            return Targets({}, {})
        key = (self.catalog.main_type.name, self.catalog.main_type.pools[0])
        return Targets({}, {key: self.nodes})


@dataclass(slots=True)
class RollingPolicy:
    """Ours: the online profiler, the commitment planner at the start, the tick optimizer every tick.

    The tick covers the measured demand times a headroom (sized so that, on the observed history, demand
    growth during one lead time — a boot plus a tick — would leave at most ``headroom_budget`` unserved),
    and (with ``forecast_next_hour``) for the next hour the larger of that and the profile's P50 over the
    coming hour times the same headroom. Spot
    reliability over the lead time comes from the reclaims in the history seen so far. The commitment
    planner sizes reserved nodes on the same rule: the profile's P50 times the headroom.
    """

    catalog: Catalog
    profiler: DemandProfiler
    slo: SloConfig
    cfg: OptimizerConfig
    name: str = "rolling"
    horizon_days: float = 30.0
    levels: int = 48
    use_spot: bool = True
    use_reserved: bool = True
    use_ondemand: bool = True
    reclaim: dict[PoolKey, float] = field(default_factory=dict)
    lead_steps: int = 11
    """Steps from a decision until the next decision's nodes serve (boot + one tick), for the headroom."""
    boot_steps: int = 1
    """Steps before a decision's nodes serve: until then the previous decision's capacity serves."""
    base_window_steps: int = 1
    """Size to the peak demand of this many recent steps, not the last step alone: traffic that swings
    between adjacent windows would otherwise be chased down and up again, a boot behind each time."""
    replan_on_surge: bool = False
    """Plan at once when a step's demand exceeds the base the last plan was sized to."""
    headroom_budget: float = 0.0005
    """Share of demand the headroom may leave unserved on the history (half a 99.9% SLO's miss; the
    other half is left for reclaims)."""
    history_steps: int = 7 * 1440
    forecast_next_hour: bool = False
    """Also prepare for the profile's P50 over the coming hour. Off by default: on the ServeGen traces
    the week-old profile misses by 25-40% (bench/forecast.py), more than the ramps it would foresee,
    and the headroom already carries the ramps the observed history shows."""
    _observed: deque[float] = field(default_factory=deque)
    _recent: deque[Demand] = field(default_factory=deque)
    _planned_base_rps: float = math.inf
    _headroom: float = 1.0
    _headroom_at: float = -math.inf

    def observe(self, t: float, demand: Demand) -> None:
        self.profiler.record(t, demand.rps, demand.prompt_tokens, demand.output_tokens)
        self._observed.append(demand.rps)
        if len(self._observed) > self.history_steps:
            self._observed.popleft()
        self._recent.append(demand)
        if len(self._recent) > self.base_window_steps:
            self._recent.popleft()

    def wants_plan(self, t: float, demand: Demand) -> bool:
        return self.replan_on_surge and demand.rps > self._planned_base_rps

    def _base(self, fallback: Demand) -> Demand:
        """The busiest of the recent steps (by nodes it needs of the main type), or ``fallback``."""
        main = self.catalog.main_type

        def nodes(d: Demand) -> float:
            per_node = rps_per_instance(main, d.prompt_tokens, d.output_tokens, self.slo)
            return d.rps / per_node if per_node > 0 and math.isfinite(per_node) else 0.0

        return max(self._recent, key=nodes, default=fallback)

    def _current_headroom(self, t: float) -> float:
        if t - self._headroom_at >= 3600:  # refit hourly: a week of history moves slowly
            self._headroom = headroom_for_budget(
                list(self._observed),
                self.lead_steps,
                self.headroom_budget,
                first_step=min(max(1, self.boot_steps), max(1, self.lead_steps)),
                base_window=self.base_window_steps,
            )
            self._headroom_at = t
        return self._headroom

    def commit(self, t: float, market: Market) -> dict[str, int]:
        history = market.available
        self.reclaim = _reclaim_over_lead_time(market, self.lead_steps)
        if not self.use_reserved or self.profiler.sample_count == 0:
            return {}  # nothing observed yet (no warm-up): commit to nothing rather than guess
        headroom = self._current_headroom(t)

        def as_the_tick_sizes(at: float) -> DemandForecast:
            p50 = self.profiler.predict(at).p50.scaled(headroom)
            return DemandForecast(p50, p50, p50, 0.0, 0.0, 0.0, 0, "cell")

        steps = planning_steps(as_the_tick_sizes, t, self.horizon_days * 24, self.profiler.bin_minutes)
        # Expect the pools to offer what they offered at their median during the history seen so far.
        expected = {k: int(np.median(history[:, i])) for i, k in enumerate(market.pools)}
        plan = plan_commitment(
            self.catalog,
            steps,
            self.slo,
            self.cfg,
            allow_spot=self.use_spot,
            allow_ondemand=self.use_ondemand,
            spot_available=expected,
            levels=self.levels,
        )
        return plan.reserved

    def plan(self, view: View) -> Targets:
        observed = self._base(view.demand_now)
        self._planned_base_rps = observed.rps
        headroom = self._current_headroom(view.t)
        demand_now = observed.scaled(headroom)
        demand_next = demand_now
        if self.forecast_next_hour:
            # Where the profile expects more traffic within the hour than is measured now, prepare for
            # that level (with the same headroom): a boot takes minutes.
            try:
                ahead = max(
                    (self.profiler.predict(view.t + m * 60).p50 for m in range(10, 61, 10)),
                    key=lambda d: d.rps,
                )
            except ProfilerEmptyError:
                ahead = observed
            demand_next = _larger(demand_now, ahead.scaled(headroom))
        available = view.available if self.use_spot else {k: 0 for k in view.available}
        # The optimizer discounts spot by (1 − this): here the share lost before a replacement serves.
        market = SpotMarket(available=available, reclaim_per_hour=self.reclaim)
        cfg = self.cfg if self.use_ondemand else msgspec.structs.replace(self.cfg, allow_ondemand=False)
        if cfg.survive_zone_loss > 0:
            # ``survive_zone_loss`` is a share of the demand measured (the base); the tick's demand
            # carries the headroom for growth on top, which a zone loss need not also be covered for.
            cfg = msgspec.structs.replace(cfg, survive_zone_loss=min(1.0, cfg.survive_zone_loss / headroom))
        alloc = optimize_tick(
            self.catalog,
            TickInput(demand_now, demand_next, Fleet(view.reserved, view.spot, view.ondemand), market),
            self.slo,
            cfg,
        )
        return Targets(alloc.spot, alloc.ondemand)


def _larger(a: Demand, b: Demand) -> Demand:
    return a if a.rps >= b.rps else b


def _reclaim_over_lead_time(market: Market, lead_steps: int) -> dict[PoolKey, float]:
    """Per pool, the share of held spot capacity the history says is lost within one lead time.

    Observed reclaim rates on real traces exceed one per node-hour; what matters to the tick is what is
    lost before a replacement can serve, so the hourly rate is turned into a loss over the lead time.
    """
    out: dict[PoolKey, float] = {}
    counts = market.available.astype(float)
    if counts.shape[0] < 2:
        return out
    for i, key in enumerate(market.pools):
        c = counts[:, i]
        drops = float(np.sum(np.clip(c[:-1] - c[1:], 0, None)))
        held = float(np.sum(c[:-1]))
        if held > 0:
            rate_per_step = drops / held
            out[key] = 1.0 - math.exp(-rate_per_step * lead_steps)
    return out


@dataclass(slots=True)
class SkyServePolicy:
    """SkyServe-style (SkyPilot): replicas from the request rate, spot first, on-demand fallback.

    Target replicas = measured rps ÷ one replica's rps at the SLO, changed only after the new target has
    held for ``upscale_delay_s`` (up) or ``downscale_delay_s`` (down). All target replicas are spot,
    spread over the pools that have room; ``base_ondemand`` on-demand replicas always run, plus one for
    every target replica not yet *ready* on spot (dynamic fallback). No reserved nodes, no forecast, and
    no use of the preemption notice beyond noticing the node is gone.
    """

    catalog: Catalog
    slo: SloConfig
    name: str = "skyserve"
    base_ondemand: int = 1
    upscale_delay_s: float = 300.0
    downscale_delay_s: float = 1200.0
    _target: int = 0
    _pending: int = 0
    _pending_since: float = 0.0

    def observe(self, t: float, demand: Demand) -> None:
        return None

    def commit(self, t: float, market: Market) -> dict[str, int]:
        return {}

    def wants_plan(self, t: float, demand: Demand) -> bool:
        return False

    def plan(self, view: View) -> Targets:
        main = self.catalog.main_type
        d = view.demand_now
        per_replica = rps_per_instance(main, d.prompt_tokens, d.output_tokens, self.slo)
        desired = math.ceil(d.rps / per_replica - 1e-9) if per_replica > 0 else 0
        if view.reason == "start":
            self._target = self._pending = desired
            self._pending_since = view.t
        elif desired == self._target:
            self._pending, self._pending_since = desired, view.t  # the change did not hold
        else:
            if desired != self._pending:
                self._pending, self._pending_since = desired, view.t
            delay = self.upscale_delay_s if desired > self._target else self.downscale_delay_s
            if view.t - self._pending_since >= delay:
                self._target = desired
        pools = [k for k in view.available if k[0] == main.name]
        spot = _spread(self._target, pools, view.spot, view.available)
        if view.reason == "start":  # the scored start has every planned node up already
            ready = sum(n for k, n in spot.items() if view.available.get(k, 0) >= n)
        else:
            ready = sum(n for k, n in view.spot_ready.items() if k[0] == main.name)
        fallback = self.base_ondemand + max(0, self._target - ready)
        return Targets(spot, {(main.name, main.pools[0]): fallback})


def _spread(
    total: int, pools: list[PoolKey], held: dict[PoolKey, int], available: dict[PoolKey, int]
) -> dict[PoolKey, int]:
    """Place ``total`` spot nodes: keep what is held where the pool still has room, then fill the pools
    with the most room first (spreading, as SpotHedge does)."""
    out = {k: min(held.get(k, 0), available.get(k, 0)) for k in pools}
    left = total - sum(out.values())
    if left < 0:
        for k in sorted(pools, key=lambda p: out[p], reverse=True):
            cut = min(out[k], -left)
            out[k] -= cut
            left += cut
            if left == 0:
                break
    while left > 0:
        room = [k for k in pools if available.get(k, 0) > out[k]]
        if not room:
            # No room anywhere: keep asking in the first pool (the launch fails; fallback covers it).
            if pools:
                out[pools[0]] += left
            break
        best = min(room, key=lambda k: out[k])
        out[best] += 1
        left -= 1
    return {k: v for k, v in out.items() if v > 0}


@dataclass(slots=True)
class SeedHybridPolicy:
    """The seed's HybridCapacityStrategy: reserved = P25 of the nodes the forecast needs, spot up to
    P75, on-demand up to P99 (of the main type); each tick fills the forecast P75 in that order."""

    catalog: Catalog
    profiler: DemandProfiler
    slo: SloConfig
    name: str = "seed-hybrid"
    horizon_days: float = 30.0
    _spot_max: int = 0
    _od_max: int = 0
    _reserved: int = 0

    def observe(self, t: float, demand: Demand) -> None:
        self.profiler.record(t, demand.rps, demand.prompt_tokens, demand.output_tokens)

    def commit(self, t: float, market: Market) -> dict[str, int]:
        if self.profiler.sample_count == 0:
            return {}  # no warm-up: the rule has no forecast to take percentiles of
        steps = planning_steps(self.profiler.predict, t, self.horizon_days * 24, self.profiler.bin_minutes)
        rule = seed_rule(self.catalog, steps, self.slo)
        self._reserved, self._spot_max, self._od_max = rule.reserved, rule.spot, rule.ondemand_max
        return {rule.type_name: rule.reserved}

    def wants_plan(self, t: float, demand: Demand) -> bool:
        return False

    def plan(self, view: View) -> Targets:
        main = self.catalog.main_type
        try:
            forecast = self.profiler.predict(view.t).p75
        except ProfilerEmptyError:
            forecast = view.demand_now
        need = instances_needed(main, forecast, self.slo)
        rest = max(0, need - self._reserved)
        spot_total = min(self._spot_max, math.ceil(rest / main.spot_reliability - 1e-9))
        od = min(self._od_max, max(0, math.ceil(rest - spot_total * main.spot_reliability - 1e-9)))
        if self._reserved == 0 and od == 0:
            od = 1  # the seed's one non-spot node
        pools = [k for k in view.available if k[0] == main.name]
        spot = _spread(spot_total, pools, view.spot, view.available)
        return Targets(spot, {(main.name, main.pools[0]): od})
