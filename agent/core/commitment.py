"""The commitment planner: how many reserved nodes of each type to commit to, from a forecast horizon.

Reserved nodes are paid every hour of the term whether used or not; spot and on-demand nodes are paid
only for the hours they run. So the right number of reserved nodes depends on the whole shape of the
forecast, not on one percentile of it. We solve one integer program over the horizon (default 30 days):

    minimise  H · Σ_t reserved_t · price_reserved_t  +  Σ_levels hours_l · (spot and on-demand cost at l)

where every forecast step must be covered exactly as the tick optimizer covers it (current P75 and
next-hour P95, spot discounted by reliability, the non-spot floor, pool shares, quotas). Steps with about
the same demand are grouped into levels (a level's demand is the largest of its steps, so grouping only
ever over-provisions), which keeps the program small whatever the horizon's length.

The seed's own rule (reserved = P25 of the nodes needed, spot up to P75, on-demand up to P99) is kept for
comparison, priced honestly on the same forecast hours rather than with the seed's invented 60% spot and
10% on-demand utilizations (which :class:`SeedRulePlan` also reports, to show the difference).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint

from agent.core.capacity import SloConfig, rps_per_instance
from agent.core.catalog import HOURS_PER_MONTH, Catalog, Tier
from agent.core.demand import Demand
from agent.core.highs import solve_milp
from agent.core.optimizer import OptimizerConfig, PoolKey

# A plan within 0.01% of the optimum is as good as the forecast it rests on; the time limit only guards
# against a pathological catalog (the answer then is the best found, still feasible).
_GAP = 1e-4
_TIME_LIMIT_S = 30.0


@dataclass(frozen=True, slots=True)
class PlanningStep:
    """One step of the forecast horizon: what the tick would have to cover then, and for how long."""

    now: Demand
    next_hour: Demand
    hours: float


@dataclass(frozen=True, slots=True)
class CommitmentPlan:
    reserved: dict[str, int]
    horizon_hours: float
    expected_cost: float
    cost_by_tier: dict[Tier, float]
    avg_instances: dict[Tier, float]
    """Hour-weighted mean nodes per tier over the horizon."""
    levels: int
    solve_seconds: float
    feasible: bool = True

    @property
    def monthly_cost(self) -> float:
        return self.expected_cost * HOURS_PER_MONTH / self.horizon_hours if self.horizon_hours else 0.0


@dataclass(frozen=True, slots=True)
class SeedRulePlan:
    """The seed's P25/P75/P99 rule for one node type, with its cost over the forecast hours."""

    type_name: str
    reserved: int
    spot: int
    ondemand_max: int
    expected_cost: float
    avg_instances: dict[Tier, float]
    horizon_hours: float
    seed_formula_monthly_cost: float
    """What the seed's own formula claims (spot at 60%, on-demand at 10% utilization, 30 days)."""
    shortfall_hours: float = 0.0
    """Hours in which the rule's caps left demand uncovered."""

    @property
    def monthly_cost(self) -> float:
        return self.expected_cost * HOURS_PER_MONTH / self.horizon_hours if self.horizon_hours else 0.0


@dataclass(frozen=True, slots=True)
class _Level:
    now: Demand
    next_hour: Demand
    hours: float


def group_levels(steps: Sequence[PlanningStep], levels: int) -> list[_Level]:
    """Group steps into bands of equal width by the larger of their two demands: at most ``levels``,
    plus one for steps with no demand at all."""
    if levels < 1:
        raise ValueError("levels must be ≥ 1")
    top = max((max(s.now.rps, s.next_hour.rps) for s in steps), default=0.0)
    width = top / levels if top > 0 else 1.0
    groups: dict[int, list[PlanningStep]] = {}
    for s in steps:
        groups.setdefault(math.ceil(max(s.now.rps, s.next_hour.rps) / width - 1e-9), []).append(s)
    return [
        _Level(
            now=_envelope([m.now for m in members]),
            next_hour=_envelope([m.next_hour for m in members]),
            hours=sum(m.hours for m in members),
        )
        for _key, members in sorted(groups.items())
    ]


def _envelope(demands: Sequence[Demand]) -> Demand:
    return Demand(
        rps=max(d.rps for d in demands),
        prompt_tokens=max(d.prompt_tokens for d in demands),
        output_tokens=max(d.output_tokens for d in demands),
    )


@dataclass(slots=True)
class _Program:
    width: int = 0
    cost: list[float] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)
    rows: list[dict[int, float]] = field(default_factory=list)
    lo: list[float] = field(default_factory=list)
    hi: list[float] = field(default_factory=list)

    def var(self, cost: float, upper: float = math.inf) -> int:
        self.cost.append(cost)
        self.upper.append(upper)
        self.width += 1
        return self.width - 1

    def row(self, coeffs: dict[int, float], lo: float, hi: float) -> None:
        self.rows.append(coeffs)
        self.lo.append(lo)
        self.hi.append(hi)

    def solve(self) -> np.ndarray | None:
        a = np.zeros((len(self.rows), self.width))
        for i, coeffs in enumerate(self.rows):
            for j, v in coeffs.items():
                a[i, j] += v
        res = solve_milp(
            np.array(self.cost),
            LinearConstraint(a, np.array(self.lo), np.array(self.hi)) if self.rows else None,
            np.ones(self.width),
            Bounds(np.zeros(self.width), np.array(self.upper)),
            gap=_GAP,
            time_limit_s=_TIME_LIMIT_S,
        )
        return None if res.x is None else np.round(np.asarray(res.x, dtype=float))


def plan_commitment(
    catalog: Catalog,
    steps: Sequence[PlanningStep],
    slo: SloConfig | None = None,
    cfg: OptimizerConfig | None = None,
    *,
    allow_spot: bool = True,
    allow_ondemand: bool = True,
    allow_reserved: bool = True,
    spot_available: Mapping[PoolKey, int] | None = None,
    levels: int = 48,
) -> CommitmentPlan:
    """Reserved nodes per type that minimise expected cost over the horizon ``steps`` cover."""
    started = time.perf_counter()
    horizon = sum(s.hours for s in steps)
    grouped = group_levels(steps, levels)
    program = _HorizonProgram(
        catalog,
        slo or SloConfig(),
        cfg or OptimizerConfig(),
        allow_spot=allow_spot,
        allow_ondemand=allow_ondemand,
        spot_available=spot_available or {},
    )
    program.add_reserved(horizon, allow_reserved)
    for level in grouped:
        program.add_level(level)
    x = program.solve()
    if x is None:
        return _infeasible_plan(list(program.reserved), horizon, len(grouped), started)
    return _priced_plan(program, grouped, x, horizon, started)


@dataclass(frozen=True, slots=True)
class _LevelColumns:
    """A level's spot and on-demand columns, one per pool in the catalog's order."""

    spot: list[int]
    ondemand: list[int]


@dataclass(slots=True)
class _HorizonProgram:
    """The horizon's program, built phase by phase: reserved columns, then each level's columns and the
    rows that make it covered as a tick would cover it."""

    catalog: Catalog
    slo: SloConfig
    cfg: OptimizerConfig
    allow_spot: bool
    allow_ondemand: bool
    spot_available: Mapping[PoolKey, int]
    prog: _Program = field(default_factory=_Program)
    reserved: dict[str, int] = field(default_factory=dict)
    """The reserved column of each type."""
    reserved_upper: dict[str, float] = field(default_factory=dict)
    """Reserved nodes of a type beyond those covering the busiest level alone are never optimal."""
    levels: list[_LevelColumns] = field(default_factory=list)
    pools: list[PoolKey] = field(init=False)

    def __post_init__(self) -> None:
        self.pools = self.catalog.pools()

    def add_reserved(self, horizon: float, allowed: bool) -> None:
        """One column per type, paid every hour of the horizon, within the type's quota."""
        for t in self.catalog.types.values():
            quota = t.max_instances if t.max_instances is not None else math.inf
            self.reserved[t.name] = self.prog.var(horizon * t.reserved_hourly, quota if allowed else 0.0)
            self.reserved_upper[t.name] = 0.0

    def add_level(self, level: _Level) -> None:
        caps = {
            t.name: (
                rps_per_instance(t, level.now.prompt_tokens, level.now.output_tokens, self.slo),
                rps_per_instance(t, level.next_hour.prompt_tokens, level.next_hour.output_tokens, self.slo),
            )
            for t in self.catalog.types.values()
        }
        cols = self._level_columns(level, caps)
        self.levels.append(cols)
        self._cover(level, caps, cols)
        self._non_spot(level, caps, cols)
        self._pool_share(cols)
        self._quota(cols)

    def _reliability(self, type_name: str) -> float:
        return (
            self.catalog.types[type_name].spot_reliability if self.cfg.discount_spot_by_reliability else 1.0
        )

    def _level_columns(self, level: _Level, caps: Mapping[str, tuple[float, float]]) -> _LevelColumns:
        """Spot and on-demand columns per pool, paid for the level's hours, bounded as in the tick: more
        nodes of one pool than cover the level alone are never optimal."""
        cfg = self.cfg
        cols = _LevelColumns([], [])
        for key in self.pools:
            itype = self.catalog.types[key[0]]
            alone = _nodes_alone(level, caps[key[0]], 1.0)
            od_upper = max(alone, cfg.min_non_spot_instances) if self.allow_ondemand else 0.0
            self.reserved_upper[key[0]] = max(self.reserved_upper[key[0]], alone, cfg.min_non_spot_instances)
            spot_upper = float(self.spot_available.get(key, math.inf)) if self.allow_spot else 0.0
            if cfg.max_pool_share >= 0.5:
                spot_upper = min(spot_upper, _nodes_alone(level, caps[key[0]], self._reliability(key[0])))
            cols.spot.append(self.prog.var(level.hours * itype.spot_hourly, spot_upper))
            cols.ondemand.append(self.prog.var(level.hours * itype.ondemand_hourly, od_upper))
        return cols

    def _cover(self, level: _Level, caps: Mapping[str, tuple[float, float]], cols: _LevelColumns) -> None:
        """The level's current P75 and next-hour P95 demand covered, spot counted at its reliability."""
        for which, rps in ((0, level.now.rps), (1, level.next_hour.rps)):
            coeffs = {self.reserved[t]: caps[t][which] for t in self.reserved}
            for key, sv, dv in zip(self.pools, cols.spot, cols.ondemand, strict=True):
                coeffs[sv] = caps[key[0]][which] * self._reliability(key[0])
                coeffs[dv] = caps[key[0]][which]
            self.prog.row(coeffs, rps, math.inf)

    def _non_spot(self, level: _Level, caps: Mapping[str, tuple[float, float]], cols: _LevelColumns) -> None:
        """The tick's non-spot floors: a node count, and a share of the next hour's demand."""
        cfg = self.cfg
        if cfg.min_non_spot_instances > 0:
            coeffs = {j: 1.0 for j in self.reserved.values()} | {dv: 1.0 for dv in cols.ondemand}
            self.prog.row(coeffs, cfg.min_non_spot_instances, math.inf)
        if cfg.min_non_spot_fraction > 0:
            coeffs = {self.reserved[t]: caps[t][1] for t in self.reserved}
            coeffs |= {dv: caps[key[0]][1] for key, dv in zip(self.pools, cols.ondemand, strict=True)}
            self.prog.row(coeffs, cfg.min_non_spot_fraction * level.next_hour.rps, math.inf)

    def _pool_share(self, cols: _LevelColumns) -> None:
        """No pool holds more than ``max_pool_share`` of the level's spot nodes (plus one)."""
        if not (self.cfg.max_pool_share < 1 and len(self.pools) >= 2 and self.allow_spot):
            return
        total = self.prog.var(0.0)  # Σ spot of the level: keeps each share row to two entries
        self.prog.row({sv: 1.0 for sv in cols.spot} | {total: -1.0}, 0.0, 0.0)
        for sv in cols.spot:
            self.prog.row({sv: 1.0, total: -self.cfg.max_pool_share}, -math.inf, 1.0)

    def _quota(self, cols: _LevelColumns) -> None:
        """A type's reserved, spot and on-demand nodes within its quota."""
        for t in self.catalog.types.values():
            if t.max_instances is None:
                continue
            coeffs = {self.reserved[t.name]: 1.0}
            for key, sv, dv in zip(self.pools, cols.spot, cols.ondemand, strict=True):
                if key[0] == t.name:
                    coeffs[sv] = 1.0
                    coeffs[dv] = 1.0
            self.prog.row(coeffs, -math.inf, float(t.max_instances))

    def solve(self) -> np.ndarray | None:
        for name, j in self.reserved.items():
            self.prog.upper[j] = min(self.prog.upper[j], self.reserved_upper[name])
        return self.prog.solve()


def _infeasible_plan(types: list[str], horizon: float, levels: int, started: float) -> CommitmentPlan:
    return CommitmentPlan(
        reserved=dict.fromkeys(types, 0),
        horizon_hours=horizon,
        expected_cost=math.inf,
        cost_by_tier={"reserved": 0.0, "spot": math.inf, "ondemand": math.inf},
        avg_instances={"reserved": 0.0, "spot": 0.0, "ondemand": 0.0},
        levels=levels,
        solve_seconds=time.perf_counter() - started,
        feasible=False,
    )


def _priced_plan(
    program: _HorizonProgram, grouped: Sequence[_Level], x: np.ndarray, horizon: float, started: float
) -> CommitmentPlan:
    """The solution's reserved nodes, with its cost and mean nodes per tier over the horizon."""
    types = program.catalog.types
    reserved = {t: int(x[j]) for t, j in program.reserved.items()}
    cost_by_tier: dict[Tier, float] = {
        "reserved": sum(horizon * types[t].reserved_hourly * n for t, n in reserved.items()),
        "spot": 0.0,
        "ondemand": 0.0,
    }
    node_hours: dict[Tier, float] = {
        "reserved": horizon * sum(reserved.values()),
        "spot": 0.0,
        "ondemand": 0.0,
    }
    for level, cols in zip(grouped, program.levels, strict=True):
        for key, sv, dv in zip(program.pools, cols.spot, cols.ondemand, strict=True):
            itype = types[key[0]]
            spot, od = float(x[sv]), float(x[dv])
            cost_by_tier["spot"] += level.hours * itype.spot_hourly * spot
            cost_by_tier["ondemand"] += level.hours * itype.ondemand_hourly * od
            node_hours["spot"] += level.hours * spot
            node_hours["ondemand"] += level.hours * od
    return CommitmentPlan(
        reserved=reserved,
        horizon_hours=horizon,
        expected_cost=sum(cost_by_tier.values()),
        cost_by_tier=cost_by_tier,
        avg_instances={tier: (h / horizon if horizon else 0.0) for tier, h in node_hours.items()},
        levels=len(grouped),
        solve_seconds=time.perf_counter() - started,
    )


def _nodes_alone(level: _Level, caps: tuple[float, float], reliability: float) -> float:
    """Nodes of one type (each counted at ``reliability``) that cover the level without any other."""
    need = 0.0
    for rps, cap in ((level.now.rps, caps[0]), (level.next_hour.rps, caps[1])):
        if rps > 0:
            effective = cap * reliability
            need = max(need, rps / effective if effective > 0 else math.inf)
    return math.ceil(need) + 1 if math.isfinite(need) else math.inf


def nodes_needed(catalog: Catalog, step: PlanningStep, slo: SloConfig, type_name: str | None = None) -> float:
    """Fractional nodes of one type (default: the catalog's main type) the step's demand needs."""
    itype = catalog.type(type_name) if type_name else catalog.main_type
    return max(
        step.now.rps / rps_per_instance(itype, step.now.prompt_tokens, step.now.output_tokens, slo),
        step.next_hour.rps
        / rps_per_instance(itype, step.next_hour.prompt_tokens, step.next_hour.output_tokens, slo),
    )


def seed_rule(
    catalog: Catalog,
    steps: Sequence[PlanningStep],
    slo: SloConfig | None = None,
    *,
    type_name: str | None = None,
) -> SeedRulePlan:
    """The seed's HybridCapacityStrategy rule, priced on the forecast hours.

    Reserved = P25 of the whole nodes needed per step; spot covers up to P75 (each spot node counted at
    its reliability, as in the tick); on-demand covers the rest, capped at P99 − P75 as the seed sizes it.
    """
    slo = slo or SloConfig()
    itype = catalog.type(type_name) if type_name else catalog.main_type
    needs = np.array([nodes_needed(catalog, s, slo, itype.name) for s in steps])
    whole = np.ceil(needs - 1e-9)
    reserved = int(np.percentile(whole, 25))
    p75 = int(np.percentile(whole, 75))
    p99 = int(np.percentile(whole, 99))
    spot_max = max(p75 - reserved, 0)
    od_max = max(p99 - p75, 0)
    horizon = sum(s.hours for s in steps)
    cost = horizon * reserved * itype.reserved_hourly
    hours: dict[Tier, float] = {"reserved": horizon * reserved, "spot": 0.0, "ondemand": 0.0}
    shortfall_hours = 0.0
    for need, step in zip(needs, steps, strict=True):
        rest = max(0.0, float(need) - reserved)
        spot = min(spot_max, math.ceil(rest / itype.spot_reliability - 1e-9))
        rest = max(0.0, rest - spot * itype.spot_reliability)
        od = math.ceil(rest - 1e-9)
        if od > od_max:
            shortfall_hours += step.hours
            od = od_max
        if reserved == 0 and od == 0 and spot > 0:
            od = 1  # the seed's constraint: at least one non-spot node
        cost += step.hours * (spot * itype.spot_hourly + od * itype.ondemand_hourly)
        hours["spot"] += step.hours * spot
        hours["ondemand"] += step.hours * od
    seed_formula = (
        reserved * itype.reserved_hourly * 720
        + spot_max * itype.spot_hourly * 720 * 0.6
        + od_max * itype.ondemand_hourly * 720 * 0.1
    )
    return SeedRulePlan(
        type_name=itype.name,
        reserved=reserved,
        spot=spot_max,
        ondemand_max=od_max,
        expected_cost=cost,
        avg_instances={tier: (h / horizon if horizon else 0.0) for tier, h in hours.items()},
        horizon_hours=horizon,
        seed_formula_monthly_cost=seed_formula,
        shortfall_hours=shortfall_hours,
    )
