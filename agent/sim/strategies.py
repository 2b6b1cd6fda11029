"""Capacity strategies for the backtest: ours (``rolling``) and the baselines it is judged against."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import msgspec
import numpy as np

from agent.core.capacity import SloConfig, instances_needed, rps_per_instance
from agent.core.catalog import Catalog
from agent.core.commitment import plan_commitment, seed_rule
from agent.core.comparison import planning_steps
from agent.core.demand import Demand, DemandForecast
from agent.core.optimizer import Fleet, OptimizerConfig, PoolKey, SpotMarket, TickInput, optimize_tick
from agent.core.profiler import DemandProfiler, ProfilerEmptyError
from agent.core.rolling_demand import RollingDemand, expected_over
from agent.core.spot_loss import ReclaimWaves, non_spot_floor
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

    Each tick covers what :class:`agent.core.rolling_demand.RollingDemand` says (the recent peak, held at
    the profile's expectation through an outage, times the headroom the history's forecast error calls
    for), the rule the agent's optimizer applies too. The commitment planner sizes reserved nodes on the
    same rule: the profile's P50 times the headroom. The non-spot floor is the optimizer's, or (``floor_rule
    = "waves"``) learned from the reclaim waves seen; each pool's reclaim rate is learned from the
    availability drops seen (used when the optimizer discounts spot by its reliability).
    """

    catalog: Catalog
    profiler: DemandProfiler
    slo: SloConfig
    cfg: OptimizerConfig
    demand: RollingDemand = field(default_factory=RollingDemand)
    name: str = "rolling"
    horizon_days: float = 30.0
    levels: int = 48
    use_spot: bool = True
    use_reserved: bool = True
    use_ondemand: bool = True
    replan_on_surge: bool = True
    """Plan at once when a step's demand exceeds the base the last plan was sized to."""
    floor_rule: Literal["fixed", "waves"] = "fixed"
    """The non-spot floor: ``fixed`` (the optimizer's ``min_non_spot_fraction``) or ``waves`` (from the
    reclaim waves seen, :mod:`agent.core.spot_loss`, never below the configured floor)."""
    gap_s: float = 240.0
    """How long a reclaimed node is missed: a boot after its notice (boot − notice, ≥ 0)."""
    commit_headroom: float | None = None
    """The commitment planner sizes reserved nodes to the profile's P50 × this; None: the tick's headroom."""
    reclaim: dict[PoolKey, float] = field(default_factory=dict)
    waves: ReclaimWaves = field(default_factory=lambda: ReclaimWaves(window_s=360.0))
    _seen_at: float | None = None
    _seen: dict[PoolKey, int] = field(default_factory=dict)
    _drops: dict[PoolKey, float] = field(default_factory=dict)
    _exposure: dict[PoolKey, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        main = self.catalog.main_type

        def nodes(d: Demand) -> float:
            per_node = rps_per_instance(main, d.prompt_tokens, d.output_tokens, self.slo)
            return d.rps / per_node if per_node > 0 and math.isfinite(per_node) else 0.0

        self.demand.nodes = nodes

    def observe(self, t: float, demand: Demand) -> None:
        self.profiler.record(t, demand.rps, demand.prompt_tokens, demand.output_tokens)
        self.demand.observe(demand)

    def wants_plan(self, t: float, demand: Demand) -> bool:
        return self.replan_on_surge and self.demand.surged(demand)

    @property
    def _learns_market(self) -> bool:
        """The reclaim waves and the pools' reclaim rates are read only by the waves floor and by the
        optimizer's reliability discount: without either, the market is not followed."""
        return self.floor_rule == "waves" or self.cfg.discount_spot_by_reliability

    def _expected(self, t: float) -> Demand | None:
        """The profile's P50 at its busiest over the coming lead time (None without a profile)."""
        return expected_over(self.profiler, t, self.demand.lead_s)

    def _see_market(self, t: float, available: dict[PoolKey, int]) -> None:
        """What the market offers now: into the reclaim waves (per zone) and each pool's reclaim rate."""
        zones: dict[str, int] = {}
        for (_type, pool), n in available.items():
            zones[pool] = zones.get(pool, 0) + n
        self.waves.observe(t, zones)
        if self._seen_at is not None and t > self._seen_at:
            minutes = (t - self._seen_at) / 60.0
            for key, before in self._seen.items():
                self._drops[key] = self._drops.get(key, 0.0) + max(0, before - available.get(key, before))
                self._exposure[key] = self._exposure.get(key, 0.0) + before * minutes
        self._seen_at, self._seen = t, dict(available)

    def _learned_reclaim(self) -> dict[PoolKey, float]:
        """Per pool, the share of held spot lost within one lead time at the rate seen so far."""
        out: dict[PoolKey, float] = {}
        for key, exposure in self._exposure.items():
            if exposure > 0:
                per_minute = self._drops.get(key, 0.0) / exposure
                out[key] = 1.0 - math.exp(-per_minute * self.demand.lead_steps)
        return out

    def commit(self, t: float, market: Market) -> dict[str, int]:
        history = market.available
        if self._learns_market:
            step_s = 60.0
            start = t - len(history) * step_s
            for i in range(len(history)):
                self._see_market(
                    start + i * step_s, {k: int(history[i, j]) for j, k in enumerate(market.pools)}
                )
            self.reclaim = self._learned_reclaim()
        if not self.use_reserved or self.profiler.sample_count == 0:
            return {}  # nothing observed yet (no warm-up): commit to nothing rather than guess
        headroom = self.demand.headroom(t) if self.commit_headroom is None else self.commit_headroom

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
        cover = self.demand.cover(view.t, view.demand_now, lambda: self._expected(view.t))
        if self._learns_market:
            self._see_market(view.t, view.available)
            self.reclaim = self._learned_reclaim()
        available = view.available if self.use_spot else {k: 0 for k in view.available}
        # The optimizer discounts spot by (1 − this): here the share lost before a replacement serves.
        market = SpotMarket(available=available, reclaim_per_hour=self.reclaim)
        cfg = self.cfg if self.use_ondemand else msgspec.structs.replace(self.cfg, allow_ondemand=False)
        floor = self._non_spot_floor(cover.headroom)
        if floor != cfg.min_non_spot_fraction:
            cfg = msgspec.structs.replace(cfg, min_non_spot_fraction=floor)
        cfg = msgspec.structs.replace(cfg, survive_zone_loss=cover.zone_loss_share(cfg.survive_zone_loss))
        alloc = optimize_tick(
            self.catalog,
            TickInput(cover.demand, cover.demand, Fleet(view.reserved, view.spot, view.ondemand), market),
            self.slo,
            cfg,
        )
        return Targets(alloc.spot, alloc.ondemand)

    def _non_spot_floor(self, headroom: float) -> float:
        """The non-spot share this plan holds (see ``floor_rule``), never below the configured one."""
        configured = self.cfg.min_non_spot_fraction
        if self.floor_rule != "waves":
            return configured
        # With the zone rule the widest single zone's loss is already survived: only what a wave takes
        # beyond one zone must be carried by non-spot capacity.
        beyond = 1 if self.cfg.survive_zone_loss > 0 else 0
        floor = non_spot_floor(
            self.waves.shares(beyond_zones=beyond),
            self.waves.span_s(),
            gap_s=self.gap_s,
            slack=headroom - 1.0,
            budget=self.demand.headroom_budget,
        )
        return max(configured, floor)


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
