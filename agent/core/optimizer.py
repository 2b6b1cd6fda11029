"""The tick optimizer: the cheapest spot / on-demand mix, per node type and pool, that meets the SLO now.

Runs every few minutes (and at once on a preemption). It is an integer program solved with HiGHS through
``scipy.optimize.milp`` — counts of nodes are integers, so we never round an LP relaxation.

Decision variables, for every (type, pool): spot nodes and on-demand nodes. Reserved nodes are an input:
they are a long-term commitment, which only the commitment planner changes.

The constraints are in :mod:`agent.core.tick_program`, one function per family, each named as it is
reported in ``Allocation.binding`` (``cover_now``, ``cover_next_hour``, ``non_spot_min``,
``non_spot_fraction``, ``zone_loss:<zone>``, ``spot_available:<type>/<pool>``, ``pool_share:<type>/<pool>``,
``quota:<type>``, ``step_up:<tier>`` / ``step_down:<tier>``), with its docstring saying what it guarantees.
The step limits are lifted for a tick whose demand cannot be covered within them, or where they conflict
with quotas, availability or pool shares (status ``relaxed``, with the reason): being short of capacity
is worse than a jump.

When even the relaxed problem cannot cover demand (quotas, no spot), a version whose coverage rows may
fall short, at a penalty far above any price, gives the allocation that covers the most: status
``fallback``, with the shortfall named in ``reason`` — never a silent failure.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.optimize import linprog

from agent.core import tick_program
from agent.core.capacity import SloConfig, rps_per_instance
from agent.core.catalog import Catalog, Tier
from agent.core.demand import Demand
from agent.core.highs import solve_milp
from agent.core.optimizer_config import FleetLimits, OptimizerConfig
from agent.core.tick_program import TOLERANCE, PoolKey, Problem, significant

__all__ = [
    "Allocation",
    "AllocationStatus",
    "Fleet",
    "FleetLimits",
    "OptimizerConfig",
    "PoolKey",
    "SpotMarket",
    "TickInput",
    "hourly_cost",
    "optimize_tick",
    "seed_lp_ceil",
    "violations",
]

AllocationStatus = Literal["optimal", "relaxed", "fallback"]


@dataclass(frozen=True, slots=True)
class Fleet:
    """Nodes held now: reserved per type; spot and on-demand per (type, pool)."""

    reserved: Mapping[str, int] = field(default_factory=dict)
    spot: Mapping[PoolKey, int] = field(default_factory=dict)
    ondemand: Mapping[PoolKey, int] = field(default_factory=dict)

    def total(self, tier: Tier) -> int:
        if tier == "reserved":
            return sum(self.reserved.values())
        return sum((self.spot if tier == "spot" else self.ondemand).values())


@dataclass(frozen=True, slots=True)
class SpotMarket:
    """What the spot market says now; a missing key falls back to the catalog (price, reclaim rate) or to
    no limit (availability)."""

    price: Mapping[PoolKey, float] = field(default_factory=dict)
    available: Mapping[PoolKey, int] = field(default_factory=dict)
    reclaim_per_hour: Mapping[PoolKey, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TickInput:
    demand_now: Demand
    """Demand to cover now: the current P75."""
    demand_next: Demand
    """Demand to cover within the hour: the next hour's P95 forecast."""
    fleet: Fleet = field(default_factory=Fleet)
    market: SpotMarket = field(default_factory=SpotMarket)


@dataclass(frozen=True, slots=True)
class Unlimited:
    """The plan the same tick would make without ``[limits]``: what the limits held back."""

    instances: int
    """Spot and on-demand nodes, reserved included."""
    hourly_cost: float


@dataclass(frozen=True, slots=True)
class Allocation:
    reserved: dict[str, int]
    spot: dict[PoolKey, int]
    ondemand: dict[PoolKey, int]
    hourly_cost: float
    status: AllocationStatus
    binding: tuple[str, ...]
    reason: str
    capacity_now_rps: float
    capacity_next_rps: float
    solve_seconds: float = 0.0
    limited: tuple[str, ...] = ()
    """The ``[limits]`` that clamped this plan (``limit:<name>``): without them it would hold more nodes
    or cost more (``unlimited``), or hold reserved nodes above their limit (``limit:reserved``)."""
    unlimited: Unlimited | None = None
    """What the plan would have been without the limits, when they clamped it."""

    def total(self, tier: Tier) -> int:
        if tier == "reserved":
            return sum(self.reserved.values())
        return sum((self.spot if tier == "spot" else self.ondemand).values())

    def counts(self) -> dict[tuple[str, Tier], int]:
        """Nodes per (type, tier), pools summed: what a cost ledger prices."""
        out: dict[tuple[str, Tier], int] = {}
        for name, n in self.reserved.items():
            out[(name, "reserved")] = out.get((name, "reserved"), 0) + n
        for (name, _pool), n in self.spot.items():
            out[(name, "spot")] = out.get((name, "spot"), 0) + n
        for (name, _pool), n in self.ondemand.items():
            out[(name, "ondemand")] = out.get((name, "ondemand"), 0) + n
        return out


def _problem(
    catalog: Catalog,
    inp: TickInput,
    slo: SloConfig,
    cfg: OptimizerConfig,
    limits: FleetLimits | None = None,
) -> Problem:
    pools = catalog.pools()
    for name in inp.fleet.reserved:
        catalog.type(name)  # raises on an unknown type
    n = len(pools)
    spot_price = np.empty(n)
    od_price = np.empty(n)
    reliability = np.empty(n)
    cap_now = np.empty(n)
    cap_next = np.empty(n)
    spot_cap = np.full(n, math.inf)
    cur_spot = np.zeros(n)
    cur_od = np.zeros(n)
    caps = {name: _capacities(catalog, name, inp, slo) for name in catalog.types}
    for i, key in enumerate(pools):
        itype = catalog.types[key[0]]
        cap_now[i], cap_next[i] = caps[itype.name]
        spot_price[i] = inp.market.price.get(key, itype.spot_hourly)
        od_price[i] = itype.ondemand_hourly
        reclaim = inp.market.reclaim_per_hour.get(key, itype.spot_reclaim_per_hour)
        reliability[i] = (1.0 - min(max(reclaim, 0.0), 1.0)) if cfg.discount_spot_by_reliability else 1.0
        if key in inp.market.available:
            spot_cap[i] = max(0, inp.market.available[key])
        cur_spot[i] = inp.fleet.spot.get(key, 0)
        cur_od[i] = inp.fleet.ondemand.get(key, 0)
    reserved_cap_now = sum(caps[t][0] * r for t, r in inp.fleet.reserved.items())
    reserved_cap_next = sum(caps[t][1] * r for t, r in inp.fleet.reserved.items())
    reserved_n = sum(inp.fleet.reserved.values())
    quotas = {
        t.name: float(t.max_instances - inp.fleet.reserved.get(t.name, 0))
        for t in catalog.types.values()
        if t.max_instances is not None
    }
    return Problem(
        pools=pools,
        spot_price=spot_price,
        od_price=od_price,
        reliability=reliability,
        cap_now=cap_now,
        cap_next=cap_next,
        spot_cap=spot_cap,
        cur_spot=cur_spot,
        cur_od=cur_od,
        need_now=significant(inp.demand_now.rps - reserved_cap_now),
        need_now_total=inp.demand_now.rps,
        need_next=significant(inp.demand_next.rps - reserved_cap_next),
        need_non_spot=max(0.0, cfg.min_non_spot_instances - reserved_n),
        need_non_spot_rps=significant(cfg.min_non_spot_fraction * inp.demand_next.rps - reserved_cap_next),
        reserved_cost=sum(catalog.type(t).reserved_hourly * r for t, r in inp.fleet.reserved.items()),
        reserved_cap_now=reserved_cap_now,
        reserved_cap_next=reserved_cap_next,
        quotas=quotas,
        share_applies=cfg.max_pool_share < 1 and n >= 2,
        reserved_n=float(reserved_n),
        limits=limits or FleetLimits(),
    )


def _capacities(catalog: Catalog, type_name: str, inp: TickInput, slo: SloConfig) -> tuple[float, float]:
    """Requests/s one node of the type serves at the SLO, for the current and the next-hour token mix."""
    itype = catalog.type(type_name)
    now = rps_per_instance(itype, inp.demand_now.prompt_tokens, inp.demand_now.output_tokens, slo)
    nxt = rps_per_instance(itype, inp.demand_next.prompt_tokens, inp.demand_next.output_tokens, slo)
    # Requests without tokens (no traffic yet, or an empty mix) cost no node time: one node serves them
    # all. A finite figure keeps the program's coefficients finite.
    return (
        now if math.isfinite(now) else max(inp.demand_now.rps, 1.0),
        nxt if math.isfinite(nxt) else max(inp.demand_next.rps, 1.0),
    )


def _allocation(
    catalog: Catalog,
    inp: TickInput,
    p: Problem,
    spot: np.ndarray,
    od: np.ndarray,
    *,
    status: AllocationStatus,
    binding: tuple[str, ...],
    reason: str,
    started: float,
    limited: tuple[str, ...] = (),
    unlimited: Unlimited | None = None,
) -> Allocation:
    n = len(p.pools)
    cap_now = p.reserved_cap_now + float(np.sum(p.cap_now * (p.reliability * spot + od)))
    cap_next = p.reserved_cap_next + float(np.sum(p.cap_next * (p.reliability * spot + od)))
    cost = p.reserved_cost + float(p.spot_price @ spot + p.od_price @ od)
    return Allocation(
        reserved={t: int(r) for t, r in inp.fleet.reserved.items()},
        spot={p.pools[i]: int(spot[i]) for i in range(n) if spot[i] > 0},
        ondemand={p.pools[i]: int(od[i]) for i in range(n) if od[i] > 0},
        hourly_cost=cost,
        status=status,
        binding=binding,
        reason=reason,
        capacity_now_rps=cap_now,
        capacity_next_rps=cap_next,
        solve_seconds=time.perf_counter() - started,
        limited=limited,
        unlimited=unlimited,
    )


def _hold_current(catalog: Catalog, inp: TickInput, p: Problem, reason: str, started: float) -> Allocation:
    """The fallback when no program can be solved: keep every node the market still allows."""
    held = np.minimum(p.cur_spot, p.spot_cap)
    return _allocation(
        catalog, inp, p, held, p.cur_od.copy(), status="fallback", binding=(), reason=reason, started=started
    )


def optimize_tick(
    catalog: Catalog,
    inp: TickInput,
    slo: SloConfig | None = None,
    cfg: OptimizerConfig | None = None,
    limits: FleetLimits | None = None,
) -> Allocation:
    """The least-cost integral spot/on-demand allocation for this tick (reserved unchanged), within the
    team's ``limits`` (none by default)."""
    started = time.perf_counter()
    cfg = cfg or OptimizerConfig()
    p = _problem(catalog, inp, slo or SloConfig(), cfg, limits)
    solved = _solve(p, cfg)
    if solved is None:
        reason = "solver found no allocation within quotas and step limits; holding the current fleet"
        return _hold_current(catalog, inp, p, reason, started)
    status, program, exact = solved
    cols = program.cols
    x = np.round(exact)
    x[cols.shortfalls] = exact[cols.shortfalls]
    binding = tick_program.binding(p, program.rows, x)
    if status == "fallback":
        reason = _fallback_reason(cols, x, binding)
    elif status == "relaxed":
        reason = _relaxed_reason(p, cfg, x[cols.spot], x[cols.ondemand])
    else:
        reason = "least-cost allocation covering current P75 and next-hour P95 demand"
    limited, unlimited = _clamped_by(p, cfg, x[cols.spot], x[cols.ondemand], binding)
    if limited:
        reason += f"; clamped by [limits] ({', '.join(limited)})"
        if unlimited is not None:
            reason += f": without them {unlimited.instances} nodes, ${unlimited.hourly_cost:.2f}/h"
    return _allocation(
        catalog,
        inp,
        p,
        x[cols.spot],
        x[cols.ondemand],
        status=status,
        binding=binding,
        reason=reason,
        started=started,
        limited=limited,
        unlimited=unlimited,
    )


def _clamped_by(
    p: Problem, cfg: OptimizerConfig, spot: np.ndarray, od: np.ndarray, binding: tuple[str, ...]
) -> tuple[tuple[str, ...], Unlimited | None]:
    """The limits that changed this plan, and the plan without them.

    A limit row can be tight by chance (the least-cost fleet happens to sit at it): only when the same
    tick without limits would hold more nodes or cost more did the limits clamp it. That second solve
    runs only when a limit is tight, so a plan within its limits costs nothing more.
    """
    tight = tuple(name for name in binding if name.startswith("limit:") and name != "limit:reserved")
    reserved = ("limit:reserved",) if "limit:reserved" in binding else ()
    if not tight:
        return reserved, None
    free = dataclasses.replace(p, limits=FleetLimits())
    solved = _solve(free, cfg)
    if solved is None:
        return reserved, None
    _status, program, exact = solved
    cols = program.cols
    x = np.round(exact)
    free_spot, free_od = x[cols.spot], x[cols.ondemand]
    cost = float(p.spot_price @ spot + p.od_price @ od)
    free_cost = float(p.spot_price @ free_spot + p.od_price @ free_od)
    nodes = float(np.sum(spot) + np.sum(od))
    free_nodes = float(np.sum(free_spot) + np.sum(free_od))
    if free_cost <= cost + TOLERANCE and free_nodes <= nodes:
        return reserved, None
    unlimited = Unlimited(int(free_nodes + p.reserved_n), p.reserved_cost + free_cost)
    return tight + reserved, unlimited


def _solve(
    p: Problem, cfg: OptimizerConfig
) -> tuple[AllocationStatus, tick_program.Program, np.ndarray] | None:
    """The first of the attempts that has a solution: its status, its program and the solver's point.

    First within the step limits; if no allocation within them covers demand (or they conflict with
    quotas, availability or pool shares), without them: damping must never cost coverage. Only if
    demand cannot be covered at all, the elastic program finds the allocation that covers the most.
    """
    relaxable = cfg.relax_step_limits and (cfg.step_up_limit is not None or cfg.step_down_limit is not None)
    # (step-up limit, step-down limit, elastic coverage): lift the step-up limit first, since scaling up
    # is what coverage needs; the step-down limit only if it conflicts with quotas or the market.
    attempts: list[tuple[bool, bool, bool]] = [(True, True, False)]
    if relaxable:
        attempts += [(False, True, False), (False, False, False)]
    attempts.append((not relaxable, not relaxable, True))
    if p.limits.any() and not relaxable:
        # Limits are never lifted: if the fleet cannot shrink to them within the step-down limit, the step
        # limits give way, not the team's guardrails.
        attempts.append((False, False, True))
    for number, (up, down, elastic) in enumerate(attempts):
        program = tick_program.build(p, cfg, step_up=up, step_down=down, integral=True, elastic=elastic)
        res = solve_milp(
            program.cost,
            program.rows.constraint(),
            program.integrality,
            program.bounds,
            gap=1e-7,
            time_limit_s=cfg.time_limit_s,
        )
        if res.x is not None:
            status: AllocationStatus = "optimal" if number == 0 else "fallback" if elastic else "relaxed"
            return status, program, np.asarray(res.x, dtype=float)
    return None


def _fallback_reason(cols: tick_program.Columns, x: np.ndarray, binding: tuple[str, ...]) -> str:
    """What the elastic answer leaves short, and which limits keep it short."""
    shortfall = {family: float(x[cols.shortfall(family)]) for family in tick_program.SHORTFALLS}
    parts = tick_program.shortfall_reason(shortfall)
    limits = [b for b in binding if b.startswith(("quota", "spot_available", "pool_share", "limit"))]
    return "infeasible: " + "; ".join(parts) + (f" (limited by {', '.join(limits)})" if limits else "")


def _relaxed_reason(p: Problem, cfg: OptimizerConfig, spot: np.ndarray, od: np.ndarray) -> str:
    """Which step limit was lifted: the step-up limit when demand needed a larger step."""
    limit = cfg.step_up_limit
    stepped = limit is not None and (
        float(np.sum(spot)) > p.cur_spot.sum() + limit or float(np.sum(od)) > p.cur_od.sum() + limit
    )
    if stepped:
        return f"step-up limit +{limit} lifted: demand needs a larger step"
    return "step limits lifted: they conflict with quotas, spot availability or pool shares"


def seed_lp_ceil(
    catalog: Catalog, inp: TickInput, slo: SloConfig | None = None, cfg: OptimizerConfig | None = None
) -> Allocation:
    """The seed's method, for comparison only: solve the LP relaxation and round every count up.

    Same constraints as :func:`optimize_tick` (step limits included, nothing relaxed). The rounded answer
    may cost more than the integer optimum, and may break a ``≤`` constraint (pool share, availability,
    quota, step limits): :func:`violations` tells.
    """
    started = time.perf_counter()
    cfg = cfg or OptimizerConfig()
    p = _problem(catalog, inp, slo or SloConfig(), cfg)
    # The seed's LP knows nothing of our count bounds: solve it as it would be posed.
    program = tick_program.build(
        p, cfg, step_up=True, step_down=True, integral=False, elastic=True, tight=False
    )
    a_ub, b_ub = program.rows.as_upper_bounds()
    bounds = list(zip(program.bounds.lb, program.bounds.ub, strict=True))
    res = linprog(program.cost, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if res.x is None:
        return _hold_current(catalog, inp, p, f"LP relaxation infeasible: {res.message}", started)
    x = np.ceil(np.asarray(res.x) - 1e-9)
    cols = program.cols
    return _allocation(
        catalog,
        inp,
        p,
        x[cols.spot],
        x[cols.ondemand],
        status="optimal",
        binding=(),
        reason="LP relaxation, ceil",
        started=started,
    )


def violations(
    catalog: Catalog,
    inp: TickInput,
    alloc: Allocation,
    slo: SloConfig | None = None,
    cfg: OptimizerConfig | None = None,
    *,
    step_limits: bool = True,
    limits: FleetLimits | None = None,
) -> list[str]:
    """Names of the tick's constraints that ``alloc`` breaks (empty when it satisfies all of them)."""
    cfg = cfg or OptimizerConfig()
    p = _problem(catalog, inp, slo or SloConfig(), cfg, limits)
    broken: list[str] = []
    if alloc.reserved != {t: r for t, r in inp.fleet.reserved.items()}:
        broken.append("reserved_changed")
    for key, count in list(alloc.spot.items()) + list(alloc.ondemand.items()):
        if key not in p.pools:
            broken.append(f"unknown_pool:{key[0]}/{key[1]}")
        if count < 0 or count != int(count):
            broken.append(f"not_integral:{key[0]}/{key[1]}")
    program = tick_program.build(
        p, cfg, step_up=step_limits, step_down=step_limits, integral=True, elastic=False, tight=False
    )
    spot = np.array([alloc.spot.get(key, 0) for key in p.pools], dtype=float)
    od = np.array([alloc.ondemand.get(key, 0) for key in p.pools], dtype=float)
    broken += tick_program.broken(program.rows, program.cols.vector(p, spot, od))
    available = tick_program.spot_available(p)
    for i, (type_name, pool) in enumerate(p.pools):
        if spot[i] > available[i] + TOLERANCE:
            broken.append(f"spot_available:{type_name}/{pool}")
    return broken


def hourly_cost(catalog: Catalog, alloc: Allocation, market: SpotMarket | None = None) -> float:
    """Cost per hour of an allocation at catalog prices (spot at the market's price where given)."""
    market = market or SpotMarket()
    total = sum(catalog.type(t).reserved_hourly * r for t, r in alloc.reserved.items())
    total += sum(market.price.get(k, catalog.type(k[0]).spot_hourly) * v for k, v in alloc.spot.items())
    total += sum(catalog.type(k[0]).ondemand_hourly * v for k, v in alloc.ondemand.items())
    return total
