"""The tick optimizer: the cheapest spot / on-demand mix, per node type and pool, that meets the SLO now.

Runs every few minutes (and at once on a preemption). It is an integer program solved with HiGHS through
``scipy.optimize.milp`` — counts of nodes are integers, so we never round an LP relaxation.

Decision variables, for every (type, pool): spot nodes ``s`` and on-demand nodes ``d``. Reserved nodes are
an input: they are a long-term commitment, which only the commitment planner changes.

Constraints (names as reported in ``Allocation.binding``):

- ``cover_now``: capacity covers the current P75 demand, each spot node counted at its reliability
  (1 − reclaim probability per hour), so that expected reclaims do not leave us short.
- ``cover_next_hour``: the same for the P95 demand forecast for the next hour (nodes take minutes to boot).
- ``non_spot_min``: at least ``min_non_spot_instances`` reserved + on-demand nodes (a spot-only fleet can
  vanish at once).
- ``non_spot_fraction``: reserved + on-demand capacity covers ``min_non_spot_fraction`` of the next-hour
  demand (how much survives if every spot node goes).
- ``zone_loss:<zone>``: with ``survive_zone_loss`` and two zones or more, that share of current demand
  is still covered if every spot node in the zone were reclaimed at once (reclaims come in waves).
- ``spot_available:<type>/<pool>``: no more spot nodes than the market offers in that pool.
- ``pool_share:<type>/<pool>``: spot risk is correlated within a pool, so no pool holds more than
  ``max_pool_share`` of the spot fleet (plus one node, so that a small fleet is not forced off spot).
- ``quota:<type>``: the account's node limit for a type.
- ``step_up:<tier>`` / ``step_down:<tier>``: change limits per tick (the seed's +2/−1), against thrashing.
  Nodes the market has reclaimed do not count as voluntary releases. If coverage cannot be met within the
  limits, or they conflict with quotas, availability or pool shares, they are lifted for this tick (status
  ``relaxed``, with the reason): being short of capacity is worse than a jump.

When even the relaxed problem cannot cover demand (quotas, no spot), a version whose coverage rows may
fall short, at a penalty far above any price, gives the allocation that covers the most: status
``fallback``, with the shortfall named in ``reason`` — never a silent failure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog

from agent.core.capacity import SloConfig, rps_per_instance
from agent.core.catalog import Catalog, Tier
from agent.core.demand import Demand
from agent.core.highs import solve_milp

PoolKey = tuple[str, str]
"""(instance type name, pool name)."""

AllocationStatus = Literal["optimal", "relaxed", "fallback"]

# Tie-break: a launch costs this many hours of the node's price, so that among equally cheap answers the
# optimizer keeps the nodes it has instead of shuffling them between pools.
_TIE_BREAK_HOURS = 1e-4
_TOLERANCE = 1e-6
# Rows that define auxiliary columns rather than constrain the fleet: never reported as binding or broken.
_BOOKKEEPING = frozenset({"launch", "spot_total"})
# Rows measured in requests/s rather than nodes: binding means within one node's capacity.
_CAPACITY_ROWS = frozenset({"cover_now", "cover_next_hour", "non_spot_fraction"})


@dataclass(frozen=True, slots=True)
class OptimizerConfig:
    min_non_spot_instances: int = 1
    min_non_spot_fraction: float = 0.0
    max_pool_share: float = 0.5
    max_step_up: int | None = 2
    max_step_down: int | None = 1
    relax_step_limits: bool = True
    switching_cost_hours: float = 0.0
    """Charge each launch this many hours of its price (boot time is paid but not useful)."""
    discount_spot_by_reliability: bool = True
    allow_ondemand: bool = True
    """False for a reserved + spot-only fleet (the backtest's reserved-spot baseline)."""
    time_limit_s: float = 5.0
    """Per solve; the best allocation found by then is used (ticks take milliseconds: bench/optimizer.py)."""
    survive_zone_loss: float = 0.0
    """Share of current demand still covered if every spot node of any one zone (pool name, all types)
    were reclaimed at once; 0 turns the rule off. Reclaims come in waves per zone. Applies when the
    catalog has two zones or more (with one, ``min_non_spot_fraction`` is what survives a wave)."""

    def __post_init__(self) -> None:
        if self.min_non_spot_instances < 0:
            raise ValueError("min_non_spot_instances must be ≥ 0")
        if not 0 <= self.min_non_spot_fraction <= 1:
            raise ValueError("min_non_spot_fraction must be in [0, 1]")
        if not 0 < self.max_pool_share <= 1:
            raise ValueError("max_pool_share must be in (0, 1]")
        for name in ("max_step_up", "max_step_down"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be ≥ 0 or unset")
        if not 0 <= self.survive_zone_loss <= 1:
            raise ValueError("survive_zone_loss must be in [0, 1]")
        if not self.time_limit_s > 0:
            raise ValueError("time_limit_s must be > 0")
        if self.switching_cost_hours < 0:
            raise ValueError("switching_cost_hours must be ≥ 0")


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


@dataclass(frozen=True, slots=True)
class _Problem:
    """The tick's numbers, laid out per pool, shared by the MILP, the LP+ceil baseline and the checker."""

    pools: list[PoolKey]
    spot_price: np.ndarray
    od_price: np.ndarray
    reliability: np.ndarray
    cap_now: np.ndarray
    cap_next: np.ndarray
    spot_cap: np.ndarray  # availability bound per pool (inf when unknown)
    cur_spot: np.ndarray
    cur_od: np.ndarray
    need_now: float  # rps still to cover after reserved capacity
    need_now_total: float
    need_next: float
    need_non_spot: float
    need_non_spot_rps: float
    reserved_cost: float
    reserved_cap_now: float
    reserved_cap_next: float
    quotas: dict[str, float]
    share_applies: bool


def _problem(catalog: Catalog, inp: TickInput, slo: SloConfig, cfg: OptimizerConfig) -> _Problem:
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
    return _Problem(
        pools=pools,
        spot_price=spot_price,
        od_price=od_price,
        reliability=reliability,
        cap_now=cap_now,
        cap_next=cap_next,
        spot_cap=spot_cap,
        cur_spot=cur_spot,
        cur_od=cur_od,
        need_now=_significant(inp.demand_now.rps - reserved_cap_now),
        need_now_total=inp.demand_now.rps,
        need_next=_significant(inp.demand_next.rps - reserved_cap_next),
        need_non_spot=max(0.0, cfg.min_non_spot_instances - reserved_n),
        need_non_spot_rps=_significant(cfg.min_non_spot_fraction * inp.demand_next.rps - reserved_cap_next),
        reserved_cost=sum(catalog.type(t).reserved_hourly * r for t, r in inp.fleet.reserved.items()),
        reserved_cap_now=reserved_cap_now,
        reserved_cap_next=reserved_cap_next,
        quotas=quotas,
        share_applies=cfg.max_pool_share < 1 and n >= 2,
    )


def _significant(rps: float) -> float:
    """Demand left to cover, with amounts below the solver's tolerance (one request a week) taken as 0."""
    return rps if rps > _TOLERANCE else 0.0


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


@dataclass(slots=True)
class _Rows:
    """Constraint rows ``lo ≤ A x ≤ hi``, each with the name reported when it binds."""

    width: int
    rows: list[np.ndarray] = field(default_factory=list)
    lo: list[float] = field(default_factory=list)
    hi: list[float] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def add(self, name: str, coeffs: np.ndarray, lo: float, hi: float) -> None:
        self.rows.append(coeffs)
        self.lo.append(lo)
        self.hi.append(hi)
        self.names.append(name)

    def constraint(self) -> LinearConstraint:
        return LinearConstraint(np.vstack(self.rows), np.array(self.lo), np.array(self.hi))


@dataclass(frozen=True, slots=True)
class _Vars:
    """Column layout: spot and on-demand counts per pool, their launches, the spot total, shortfalls."""

    n: int

    @property
    def spot(self) -> slice:
        return slice(0, self.n)

    @property
    def od(self) -> slice:
        return slice(self.n, 2 * self.n)

    @property
    def spot_launch(self) -> slice:
        return slice(2 * self.n, 3 * self.n)

    @property
    def od_launch(self) -> slice:
        return slice(3 * self.n, 4 * self.n)

    @property
    def spot_total(self) -> int:
        # One column for Σ spot keeps each pool-share row to two entries instead of one per pool.
        return 4 * self.n

    @property
    def short(self) -> slice:
        """Shortfalls of: cover_now, cover_next_hour, non_spot_min, non_spot_fraction, zone_loss."""
        return slice(4 * self.n + 1, 4 * self.n + 6)

    @property
    def width(self) -> int:
        return 4 * self.n + 6


def _count_bounds(
    p: _Problem, cfg: OptimizerConfig, spot_floor: float, od_floor: float
) -> tuple[np.ndarray, np.ndarray]:
    """Upper bounds on spot and on-demand counts per pool that never cut off an optimal answer.

    Beyond enough nodes of one pool to cover every requirement alone, what it holds now, and the tier's
    floor under the step-down limit, a node can be removed without breaking any constraint, and the
    cost falls. Bounded integers make HiGHS's search far shorter. For spot this holds while a pool may
    hold at least half the spot fleet; below that, removing a node could break another pool's share.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        od_nodes = np.maximum.reduce(
            [p.need_now / p.cap_now, p.need_next / p.cap_next, p.need_non_spot_rps / p.cap_next]
        )
        spot_nodes = np.maximum(
            p.need_now / (p.cap_now * p.reliability), p.need_next / (p.cap_next * p.reliability)
        )
    od_nodes = np.where(np.isfinite(od_nodes), od_nodes, 0.0)
    od_upper = np.maximum.reduce(
        [np.ceil(od_nodes) + 1, np.full_like(od_nodes, max(p.need_non_spot, od_floor)), p.cur_od]
    )
    spot_upper = p.spot_cap.copy()
    if cfg.max_pool_share >= 0.5:
        spot_nodes = np.where(np.isfinite(spot_nodes), spot_nodes, 0.0)
        needed = np.maximum(np.maximum(np.ceil(spot_nodes) + 1, p.cur_spot), spot_floor)
        spot_upper = np.minimum(spot_upper, needed)
    return spot_upper, od_upper


def _build(
    p: _Problem,
    cfg: OptimizerConfig,
    *,
    step_up: bool,
    step_down: bool,
    integral: bool,
    elastic: bool,
    tight: bool = True,
) -> tuple[np.ndarray, _Rows, Bounds, np.ndarray]:
    v = _Vars(len(p.pools))
    s, d, sh = v.spot, v.od, v.short.start
    width = v.width
    launch_hours = cfg.switching_cost_hours + _TIE_BREAK_HOURS
    c = np.zeros(width)
    c[s] = p.spot_price
    c[d] = p.od_price
    c[v.spot_launch] = p.spot_price * launch_hours
    c[v.od_launch] = p.od_price * launch_hours
    # Only used when demand cannot be covered at all: a shortfall of a thousandth of the smallest node's
    # capacity must cost more than the dearest node, so the answer covers all it can.
    dearest = float(np.max(np.concatenate([p.od_price, p.spot_price]), initial=1.0))
    smallest = float(np.min(np.concatenate([p.cap_now, p.cap_next]), initial=1.0))
    big = 1e3 * dearest / max(smallest, _TOLERANCE)
    c[v.short] = [big, big, 1e3 * dearest, big, big]

    rows = _Rows(width)
    row = np.zeros(width)
    row[s] = -1.0
    row[v.spot_total] = 1.0
    rows.add("spot_total", row, 0.0, 0.0)
    row = np.zeros(width)
    row[s] = p.cap_now * p.reliability
    row[d] = p.cap_now
    row[sh] = 1.0
    rows.add("cover_now", row, p.need_now, math.inf)
    row = np.zeros(width)
    row[s] = p.cap_next * p.reliability
    row[d] = p.cap_next
    row[sh + 1] = 1.0
    rows.add("cover_next_hour", row, p.need_next, math.inf)
    if p.need_non_spot > 0:
        row = np.zeros(width)
        row[d] = 1.0
        row[sh + 2] = 1.0
        rows.add("non_spot_min", row, p.need_non_spot, math.inf)
    if cfg.min_non_spot_fraction > 0:
        row = np.zeros(width)
        row[d] = p.cap_next
        row[sh + 3] = 1.0
        rows.add("non_spot_fraction", row, p.need_non_spot_rps, math.inf)
    zones = sorted({pool for _t, pool in p.pools})
    # With one zone there is nothing to spread spot over: the non-spot floor is the guard then.
    if cfg.survive_zone_loss > 0 and len(zones) >= 2:
        for zone in zones:
            row = np.zeros(width)
            row[s] = [
                0.0 if pool == zone else c
                for (_t, pool), c in zip(p.pools, p.cap_now * p.reliability, strict=True)
            ]
            row[d] = p.cap_now
            row[sh + 4] = 1.0
            rows.add(
                f"zone_loss:{zone}",
                row,
                _significant(cfg.survive_zone_loss * p.need_now_total - p.reserved_cap_now),
                math.inf,
            )
    if p.share_applies:
        for i, (tname, pool) in enumerate(p.pools):
            row = np.zeros(width)
            row[i] = 1.0
            row[v.spot_total] = -cfg.max_pool_share
            rows.add(f"pool_share:{tname}/{pool}", row, -math.inf, 1.0)
    for tname, quota in p.quotas.items():
        row = np.zeros(width)
        for i, key in enumerate(p.pools):
            if key[0] == tname:
                row[i] = 1.0
                row[v.n + i] = 1.0
        rows.add(f"quota:{tname}", row, -math.inf, max(quota, 0.0))
    # Change limits per tier. Spot nodes beyond what the market now allows are gone already, so their
    # loss is not a voluntary release.
    held_spot = float(np.sum(np.minimum(p.cur_spot, p.spot_cap)))
    floors = {"spot": 0.0, "ondemand": 0.0}
    spot_row = np.zeros(width)
    spot_row[v.spot_total] = 1.0
    od_row = np.zeros(width)
    od_row[d] = 1.0
    for tier, tier_row, current, held in (
        ("spot", spot_row, float(p.cur_spot.sum()), held_spot),
        ("ondemand", od_row, float(p.cur_od.sum()), float(p.cur_od.sum())),
    ):
        if step_up and cfg.max_step_up is not None:
            rows.add(f"step_up:{tier}", tier_row, -math.inf, current + cfg.max_step_up)
        if step_down and cfg.max_step_down is not None and held - cfg.max_step_down > 0:
            floors[tier] = held - cfg.max_step_down
            rows.add(f"step_down:{tier}", tier_row, floors[tier], math.inf)
    for i in range(v.n):
        row = np.zeros(width)
        row[v.spot_launch.start + i] = 1.0
        row[i] = -1.0
        rows.add("launch", row, -p.cur_spot[i], math.inf)
        row = np.zeros(width)
        row[v.od_launch.start + i] = 1.0
        row[v.n + i] = -1.0
        rows.add("launch", row, -p.cur_od[i], math.inf)

    lower = np.zeros(width)
    upper = np.full(width, math.inf)
    if tight:
        upper[s], upper[d] = _count_bounds(p, cfg, floors["spot"], floors["ondemand"])
    else:
        upper[s] = p.spot_cap
    if not cfg.allow_ondemand:
        upper[d] = 0.0
    if not elastic:
        upper[v.short] = 0.0
    integrality = np.zeros(width)
    if integral:
        integrality[s] = 1
        integrality[d] = 1
    return c, rows, Bounds(lower, upper), integrality


def _binding(p: _Problem, rows: _Rows, x: np.ndarray) -> tuple[str, ...]:
    """Constraints tight to within one node: no node could be given up without breaking them."""
    n = len(p.pools)
    a = np.vstack(rows.rows)
    values = a @ x
    unit = (
        float(np.min(np.concatenate([p.cap_now * p.reliability, p.cap_next * p.reliability]))) if n else 1.0
    )
    names: list[str] = []
    for name, value, lo, hi in zip(rows.names, values, rows.lo, rows.hi, strict=True):
        if name in _BOOKKEEPING:
            continue
        slack_unit = unit if name in _CAPACITY_ROWS or name.startswith("zone_loss") else 1.0
        slack = min(value - lo, hi - value)
        if slack < slack_unit - _TOLERANCE and name not in names:
            names.append(name)
    for i, (tname, pool) in enumerate(p.pools):
        if math.isfinite(p.spot_cap[i]) and x[i] >= p.spot_cap[i] - _TOLERANCE:
            names.append(f"spot_available:{tname}/{pool}")
    return tuple(names)


def _allocation(
    catalog: Catalog,
    inp: TickInput,
    p: _Problem,
    spot: np.ndarray,
    od: np.ndarray,
    *,
    status: AllocationStatus,
    binding: tuple[str, ...],
    reason: str,
    started: float,
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
    )


def _hold_current(catalog: Catalog, inp: TickInput, p: _Problem, reason: str, started: float) -> Allocation:
    """The fallback when no program can be solved: keep every node the market still allows."""
    held = np.minimum(p.cur_spot, p.spot_cap)
    return _allocation(
        catalog, inp, p, held, p.cur_od.copy(), status="fallback", binding=(), reason=reason, started=started
    )


def optimize_tick(
    catalog: Catalog, inp: TickInput, slo: SloConfig | None = None, cfg: OptimizerConfig | None = None
) -> Allocation:
    """The least-cost integral spot/on-demand allocation for this tick (reserved unchanged)."""
    started = time.perf_counter()
    slo = slo or SloConfig()
    cfg = cfg or OptimizerConfig()
    p = _problem(catalog, inp, slo, cfg)
    v = _Vars(len(p.pools))
    s, d = v.spot, v.od

    # First within the step limits; if no allocation within them covers demand (or they conflict with
    # quotas, availability or pool shares), without them: damping must never cost coverage. Only if
    # demand cannot be covered at all, the elastic program finds the allocation that covers the most.
    relaxable = cfg.relax_step_limits and (cfg.max_step_up is not None or cfg.max_step_down is not None)
    # (step-up limit, step-down limit, elastic coverage): lift the step-up limit first, since scaling up
    # is what coverage needs; the step-down limit only if it conflicts with quotas or the market.
    attempts: list[tuple[bool, bool, bool]] = [(True, True, False)]
    if relaxable:
        attempts += [(False, True, False), (False, False, False)]
    attempts.append((not relaxable, not relaxable, True))
    result_x: np.ndarray | None = None
    rows: _Rows | None = None
    status: AllocationStatus = "optimal"
    for number, (up, down, elastic) in enumerate(attempts):
        c, rows, bounds, integrality = _build(
            p, cfg, step_up=up, step_down=down, integral=True, elastic=elastic
        )
        res = solve_milp(c, rows.constraint(), integrality, bounds, gap=1e-7, time_limit_s=cfg.time_limit_s)
        if res.x is not None:
            result_x = np.asarray(res.x, dtype=float)
            status = "optimal" if number == 0 else "fallback" if elastic else "relaxed"
            break
    if result_x is None or rows is None:
        reason = "solver found no allocation within quotas and step limits; holding the current fleet"
        return _hold_current(catalog, inp, p, reason, started)
    x = np.round(result_x)
    x[v.short] = result_x[v.short]
    shortfall = result_x[v.short]
    binding = _binding(p, rows, x)
    if status == "fallback":
        parts = []
        if shortfall[0] > _TOLERANCE:
            parts.append(f"current P75 demand short by {shortfall[0]:.3g} rps")
        if shortfall[1] > _TOLERANCE:
            parts.append(f"next-hour P95 demand short by {shortfall[1]:.3g} rps")
        if shortfall[2] > _TOLERANCE:
            parts.append(f"{shortfall[2]:.0f} non-spot node(s) short of the minimum")
        if shortfall[3] > _TOLERANCE:
            parts.append(f"non-spot capacity short by {shortfall[3]:.3g} rps")
        if shortfall[4] > _TOLERANCE:
            parts.append(f"losing one zone's spot would leave demand short by {shortfall[4]:.3g} rps")
        limits = [b for b in binding if b.startswith(("quota", "spot_available", "pool_share"))]
        reason = "infeasible: " + "; ".join(parts) + (f" (limited by {', '.join(limits)})" if limits else "")
        return _allocation(
            catalog, inp, p, x[s], x[d], status="fallback", binding=binding, reason=reason, started=started
        )
    reason = "least-cost allocation covering current P75 and next-hour P95 demand"
    if status == "relaxed":
        limit = cfg.max_step_up
        stepped = limit is not None and (
            float(np.sum(x[s])) > p.cur_spot.sum() + limit or float(np.sum(x[d])) > p.cur_od.sum() + limit
        )
        reason = (
            f"step-up limit +{limit} lifted: demand needs a larger step"
            if stepped
            else "step limits lifted: they conflict with quotas, spot availability or pool shares"
        )
    return _allocation(
        catalog, inp, p, x[s], x[d], status=status, binding=binding, reason=reason, started=started
    )


def seed_lp_ceil(
    catalog: Catalog, inp: TickInput, slo: SloConfig | None = None, cfg: OptimizerConfig | None = None
) -> Allocation:
    """The seed's method, for comparison only: solve the LP relaxation and round every count up.

    Same constraints as :func:`optimize_tick` (step limits included, nothing relaxed). The rounded answer
    may cost more than the integer optimum, and may break a ``≤`` constraint (pool share, availability,
    quota, step limits): :func:`violations` tells.
    """
    started = time.perf_counter()
    slo = slo or SloConfig()
    cfg = cfg or OptimizerConfig()
    p = _problem(catalog, inp, slo, cfg)
    v = _Vars(len(p.pools))
    s, d = v.spot, v.od
    # The seed's LP knows nothing of our count bounds: solve it as it would be posed.
    c, rows, bounds, _ = _build(
        p, cfg, step_up=True, step_down=True, integral=False, elastic=True, tight=False
    )
    a_ub, b_ub = _as_upper_bounds(rows)
    res = linprog(
        c, A_ub=a_ub, b_ub=b_ub, bounds=list(zip(bounds.lb, bounds.ub, strict=True)), method="highs"
    )
    if res.x is None:
        return _hold_current(catalog, inp, p, f"LP relaxation infeasible: {res.message}", started)
    x = np.ceil(np.asarray(res.x) - 1e-9)
    return _allocation(
        catalog,
        inp,
        p,
        x[s],
        x[d],
        status="optimal",
        binding=(),
        reason="LP relaxation, ceil",
        started=started,
    )


def _as_upper_bounds(rows: _Rows) -> tuple[np.ndarray, np.ndarray]:
    """``lo ≤ A x ≤ hi`` rows as linprog's ``A_ub x ≤ b_ub``."""
    a_parts: list[np.ndarray] = []
    b_parts: list[float] = []
    for coeffs, lo, hi in zip(rows.rows, rows.lo, rows.hi, strict=True):
        if math.isfinite(hi):
            a_parts.append(coeffs)
            b_parts.append(hi)
        if math.isfinite(lo):
            a_parts.append(-coeffs)
            b_parts.append(-lo)
    return np.vstack(a_parts), np.array(b_parts)


def violations(
    catalog: Catalog,
    inp: TickInput,
    alloc: Allocation,
    slo: SloConfig | None = None,
    cfg: OptimizerConfig | None = None,
    *,
    step_limits: bool = True,
) -> list[str]:
    """Names of the tick's constraints that ``alloc`` breaks (empty when it satisfies all of them)."""
    slo = slo or SloConfig()
    cfg = cfg or OptimizerConfig()
    p = _problem(catalog, inp, slo, cfg)
    n = len(p.pools)
    broken: list[str] = []
    if alloc.reserved != {t: r for t, r in inp.fleet.reserved.items()}:
        broken.append("reserved_changed")
    for key, count in list(alloc.spot.items()) + list(alloc.ondemand.items()):
        if key not in p.pools:
            broken.append(f"unknown_pool:{key[0]}/{key[1]}")
        if count < 0 or count != int(count):
            broken.append(f"not_integral:{key[0]}/{key[1]}")
    _c, rows, bounds, _ = _build(
        p, cfg, step_up=step_limits, step_down=step_limits, integral=True, elastic=False, tight=False
    )
    v = _Vars(n)
    x = np.zeros(v.width)
    for i, key in enumerate(p.pools):
        x[i] = alloc.spot.get(key, 0)
        x[n + i] = alloc.ondemand.get(key, 0)
        x[v.spot_launch.start + i] = max(0.0, x[i] - p.cur_spot[i])
        x[v.od_launch.start + i] = max(0.0, x[n + i] - p.cur_od[i])
    x[v.spot_total] = float(np.sum(x[v.spot]))
    values = np.vstack(rows.rows) @ x
    for name, value, lo, hi in zip(rows.names, values, rows.lo, rows.hi, strict=True):
        if name in _BOOKKEEPING:
            continue
        scale = max(1.0, abs(lo) if math.isfinite(lo) else 0.0, abs(hi) if math.isfinite(hi) else 0.0)
        if value < lo - 1e-9 * scale or value > hi + 1e-9 * scale:
            broken.append(name)
    for i, (tname, pool) in enumerate(p.pools):
        if x[i] > bounds.ub[i] + _TOLERANCE:
            broken.append(f"spot_available:{tname}/{pool}")
    return broken


def hourly_cost(catalog: Catalog, alloc: Allocation, market: SpotMarket | None = None) -> float:
    """Cost per hour of an allocation at catalog prices (spot at the market's price where given)."""
    market = market or SpotMarket()
    total = sum(catalog.type(t).reserved_hourly * r for t, r in alloc.reserved.items())
    total += sum(market.price.get(k, catalog.type(k[0]).spot_hourly) * v for k, v in alloc.spot.items())
    total += sum(catalog.type(k[0]).ondemand_hourly * v for k, v in alloc.ondemand.items())
    return total
