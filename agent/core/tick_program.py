"""The tick optimizer's integer program: named column blocks and one function per constraint family.

Columns (:class:`Columns`): for every (type, pool), the spot and the on-demand node counts and their
launches; the spot total; one shortfall column per coverage family, zero except in the elastic program
that finds the allocation covering the most when demand cannot be covered.

Each constraint family below is one function named as its rows are reported in ``Allocation.binding``
(``quota:<type>``, ``zone_loss:<zone>``, ``limit:<name>``: the key after the colon), and its docstring
says what it guarantees. Reserved nodes are an input: their capacity is taken off what the families must
cover.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint

from agent.core.catalog import Tier
from agent.core.optimizer_config import FleetLimits, OptimizerConfig

PoolKey = tuple[str, str]
"""(instance type name, pool name)."""

TOLERANCE = 1e-6
# Tie-break: a launch costs this many hours of the node's price, so that among equally cheap answers the
# optimizer keeps the nodes it has instead of shuffling them between pools.
_TIE_BREAK_HOURS = 1e-4
# Rows that define auxiliary columns rather than constrain the fleet: never reported as binding or broken.
BOOKKEEPING = frozenset({"launch", "spot_total"})
# Nodes of one (type, pool, tier) a plan may hold: schemas.envelope.MAX_NODES, the range of a plan's count.
MAX_POOL_NODES = 100_000
# Families measured in requests/s rather than nodes: binding means within one node's capacity.
CAPACITY_FAMILIES = frozenset({"cover_now", "cover_next_hour", "non_spot_fraction", "zone_loss"})
# The one row measured in dollars per hour: binding means no node, not even the cheapest, fits under it.
COST_LIMIT = "limit:hourly_cost"
# The families the elastic program may leave short, each with how its shortfall reads in a fallback.
SHORTFALLS: Mapping[str, str] = {
    "cover_now": "current P75 demand short by {:.3g} rps",
    "cover_next_hour": "next-hour P95 demand short by {:.3g} rps",
    "non_spot_min": "{:.0f} non-spot node(s) short of the minimum",
    "non_spot_fraction": "non-spot capacity short by {:.3g} rps",
    "zone_loss": "losing one zone's spot would leave demand short by {:.3g} rps",
}
_SHORTFALL_INDEX = {family: i for i, family in enumerate(SHORTFALLS)}
TIERS: tuple[Tier, Tier] = ("spot", "ondemand")


@dataclass(frozen=True, slots=True)
class Problem:
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
    reserved_n: float = 0.0
    limits: FleetLimits = field(default_factory=FleetLimits)

    def current(self, tier: Tier) -> np.ndarray:
        return self.cur_spot if tier == "spot" else self.cur_od


def significant(rps: float) -> float:
    """Demand left to cover, with amounts below the solver's tolerance (one request a week) taken as 0."""
    return rps if rps > TOLERANCE else 0.0


@dataclass(frozen=True, slots=True)
class Columns:
    """Where each variable sits: blocks of one column per pool, the spot total, named shortfalls."""

    pools: int
    spot: slice
    ondemand: slice
    spot_launch: slice
    ondemand_launch: slice
    spot_total: int
    """One column for Σ spot keeps each pool-share row to two entries instead of one per pool."""
    shortfalls: slice
    width: int

    @classmethod
    def of(cls, pools: int) -> Columns:
        def block(k: int) -> slice:
            return slice(k * pools, (k + 1) * pools)

        first_short = 4 * pools + 1
        width = first_short + len(SHORTFALLS)
        return cls(pools, block(0), block(1), block(2), block(3), 4 * pools, slice(first_short, width), width)

    def nodes(self, tier: Tier) -> slice:
        return self.spot if tier == "spot" else self.ondemand

    def launches(self, tier: Tier) -> slice:
        """Nodes of the tier launched this tick, per pool (what the switching cost is charged on)."""
        return self.spot_launch if tier == "spot" else self.ondemand_launch

    def shortfall(self, family: str) -> int:
        return int(self.shortfalls.start) + _SHORTFALL_INDEX[family]

    def vector(self, p: Problem, spot: np.ndarray, ondemand: np.ndarray) -> np.ndarray:
        """An allocation as a point of the program (launches and the spot total filled in)."""
        x = np.zeros(self.width)
        x[self.spot], x[self.ondemand] = spot, ondemand
        x[self.launches("spot")] = np.maximum(0.0, spot - p.cur_spot)
        x[self.launches("ondemand")] = np.maximum(0.0, ondemand - p.cur_od)
        x[self.spot_total] = float(np.sum(spot))
        return x


Term = tuple[slice | int, float | np.ndarray]
"""Coefficients on a block of columns (or on one column)."""


@dataclass(slots=True)
class Rows:
    """Constraint rows ``lo ≤ A x ≤ hi``, each with the name reported when it binds."""

    width: int
    rows: list[np.ndarray] = field(default_factory=list)
    lo: list[float] = field(default_factory=list)
    hi: list[float] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def add(self, name: str, terms: Sequence[Term], lo: float = -math.inf, hi: float = math.inf) -> None:
        row = np.zeros(self.width)
        for columns, coeffs in terms:
            row[columns] = coeffs
        self.rows.append(row)
        self.lo.append(lo)
        self.hi.append(hi)
        self.names.append(name)

    def constraint(self) -> LinearConstraint:
        return LinearConstraint(np.vstack(self.rows), np.array(self.lo), np.array(self.hi))

    def as_upper_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows as linprog's ``A_ub x ≤ b_ub``."""
        a_parts: list[np.ndarray] = []
        b_parts: list[float] = []
        for coeffs, lo, hi in zip(self.rows, self.lo, self.hi, strict=True):
            if math.isfinite(hi):
                a_parts.append(coeffs)
                b_parts.append(hi)
            if math.isfinite(lo):
                a_parts.append(-coeffs)
                b_parts.append(-lo)
        return np.vstack(a_parts), np.array(b_parts)


# --- the constraint families ---------------------------------------------------------------------------


def spot_total(rows: Rows, cols: Columns) -> None:
    """Bookkeeping: the spot-total column is the sum of the spot counts."""
    rows.add("spot_total", [(cols.spot, -1.0), (cols.spot_total, 1.0)], lo=0.0, hi=0.0)


def cover_now(rows: Rows, p: Problem, cols: Columns) -> None:
    """Capacity covers the current P75 demand, each spot node counted at its reliability (1 − reclaim
    probability per hour), so that expected reclaims do not leave us short."""
    terms: list[Term] = [(cols.spot, p.cap_now * p.reliability), (cols.ondemand, p.cap_now)]
    rows.add("cover_now", [*terms, (cols.shortfall("cover_now"), 1.0)], lo=p.need_now)


def cover_next_hour(rows: Rows, p: Problem, cols: Columns) -> None:
    """The same for the P95 demand forecast for the next hour (nodes take minutes to boot)."""
    terms: list[Term] = [(cols.spot, p.cap_next * p.reliability), (cols.ondemand, p.cap_next)]
    rows.add("cover_next_hour", [*terms, (cols.shortfall("cover_next_hour"), 1.0)], lo=p.need_next)


def non_spot_min(rows: Rows, p: Problem, cols: Columns) -> None:
    """At least ``min_non_spot_instances`` reserved + on-demand nodes (a spot-only fleet can vanish at
    once)."""
    if p.need_non_spot > 0:
        terms: list[Term] = [(cols.ondemand, 1.0), (cols.shortfall("non_spot_min"), 1.0)]
        rows.add("non_spot_min", terms, lo=p.need_non_spot)


def non_spot_fraction(rows: Rows, p: Problem, cfg: OptimizerConfig, cols: Columns) -> None:
    """Reserved + on-demand capacity covers ``min_non_spot_fraction`` of the next-hour demand (how much
    survives if every spot node goes)."""
    if cfg.min_non_spot_fraction > 0:
        terms: list[Term] = [(cols.ondemand, p.cap_next), (cols.shortfall("non_spot_fraction"), 1.0)]
        rows.add("non_spot_fraction", terms, lo=p.need_non_spot_rps)


def zone_loss(rows: Rows, p: Problem, cfg: OptimizerConfig, cols: Columns) -> None:
    """With ``survive_zone_loss`` and two zones or more, that share of current demand is still covered if
    every spot node in the zone were reclaimed at once (reclaims come in waves)."""
    zones = sorted({pool for _type, pool in p.pools})
    # With one zone there is nothing to spread spot over: the non-spot floor is the guard then.
    if cfg.survive_zone_loss <= 0 or len(zones) < 2:
        return
    need = significant(cfg.survive_zone_loss * p.need_now_total - p.reserved_cap_now)
    spot_now = p.cap_now * p.reliability
    for zone in zones:
        survivors = np.array([0.0 if pool == zone else 1.0 for _type, pool in p.pools]) * spot_now
        terms: list[Term] = [
            (cols.spot, survivors),
            (cols.ondemand, p.cap_now),
            (cols.shortfall("zone_loss"), 1.0),
        ]
        rows.add(f"zone_loss:{zone}", terms, lo=need)


def pool_share(rows: Rows, p: Problem, cfg: OptimizerConfig, cols: Columns) -> None:
    """Spot risk is correlated within a pool, so no pool holds more than ``max_pool_share`` of the spot
    fleet (plus one node, so that a small fleet is not forced off spot)."""
    if not p.share_applies:
        return
    for i, (type_name, pool) in enumerate(p.pools):
        terms = [(cols.spot.start + i, 1.0), (cols.spot_total, -cfg.max_pool_share)]
        rows.add(f"pool_share:{type_name}/{pool}", terms, hi=1.0)


def quota(rows: Rows, p: Problem, cols: Columns) -> None:
    """The account's node limit for a type (its reserved nodes included)."""
    for type_name, left in p.quotas.items():
        of_type = np.array([1.0 if name == type_name else 0.0 for name, _pool in p.pools])
        rows.add(f"quota:{type_name}", [(cols.spot, of_type), (cols.ondemand, of_type)], hi=max(left, 0.0))


def limit(rows: Rows, p: Problem, cols: Columns) -> None:
    """``limit:<spot|ondemand|total|hourly_cost>``: the team's guardrails (``[limits]``), never lifted:
    whatever demand the reports claim, the plan stays within them, and if it cannot cover demand there,
    the elastic program gives the fleet within them that covers the most. Reserved nodes count towards
    the total and the cost; if they alone exceed a limit, the plan holds no spot or on-demand node."""
    lim = p.limits
    spot = lim.nodes("spot")
    if spot is not None:
        rows.add("limit:spot", [(cols.spot_total, 1.0)], hi=float(spot))
    ondemand = lim.nodes("ondemand")
    if ondemand is not None:
        rows.add("limit:ondemand", [(cols.ondemand, 1.0)], hi=float(ondemand))
    total = lim.nodes("total")
    if total is not None:
        terms: list[Term] = [(cols.spot_total, 1.0), (cols.ondemand, 1.0)]
        rows.add("limit:total", terms, hi=max(total - p.reserved_n, 0.0))
    cost = lim.hourly_cost()
    if cost is not None:
        terms = [(cols.spot, p.spot_price), (cols.ondemand, p.od_price)]
        rows.add("limit:hourly_cost", terms, hi=max(cost - p.reserved_cost, 0.0))


def reserved_over_limit(p: Problem) -> float:
    """Reserved nodes above ``max_reserved_instances``: the tick cannot release a commitment, so the
    excess is reported (``limit:reserved``), not clamped."""
    most = p.limits.nodes("reserved")
    return max(p.reserved_n - most, 0.0) if most is not None else 0.0


def step_floor(p: Problem, cfg: OptimizerConfig, tier: Tier) -> float:
    """The fewest nodes of the tier the step-down limit lets the tick keep (0: no floor). Spot nodes
    beyond what the market now allows are gone already, so their loss is not a voluntary release."""
    held = np.minimum(p.cur_spot, p.spot_cap) if tier == "spot" else p.cur_od
    limit = cfg.step_down_limit
    floor = float(np.sum(held)) - limit if limit is not None else 0.0
    return max(floor, 0.0)


def step_limits(
    rows: Rows, p: Problem, cfg: OptimizerConfig, cols: Columns, floors: Mapping[Tier, float], *, up: bool
) -> None:
    """``step_up:<tier>`` / ``step_down:<tier>``: change limits per tick (the seed's +2/−1), against
    thrashing. Nodes the market has reclaimed do not count as voluntary releases (:func:`step_floor`).
    If coverage cannot be met within the limits, or they conflict with quotas, availability or pool
    shares, the optimizer lifts them for the tick: being short of capacity is worse than a jump."""
    for tier in TIERS:
        # The spot total is one column; the on-demand total is the sum of the block.
        total: list[Term] = [(cols.spot_total, 1.0)] if tier == "spot" else [(cols.ondemand, 1.0)]
        limit = cfg.step_up_limit
        if up and limit is not None:
            rows.add(f"step_up:{tier}", total, hi=float(p.current(tier).sum()) + limit)
        if floors[tier] > 0:
            rows.add(f"step_down:{tier}", total, lo=floors[tier])


def launch(rows: Rows, p: Problem, cols: Columns) -> None:
    """Bookkeeping: launches of a pool are at least the nodes it holds beyond what it held."""
    for i in range(cols.pools):
        for tier in TIERS:
            terms = [(cols.launches(tier).start + i, 1.0), (cols.nodes(tier).start + i, -1.0)]
            rows.add("launch", terms, lo=-p.current(tier)[i])


def spot_available(p: Problem) -> np.ndarray:
    """``spot_available:<type>/<pool>``: no more spot nodes than the market offers in that pool (a column
    bound, not a row)."""
    return p.spot_cap


# --- the program ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Program:
    cost: np.ndarray
    rows: Rows
    bounds: Bounds
    integrality: np.ndarray
    cols: Columns


def build(
    p: Problem,
    cfg: OptimizerConfig,
    *,
    step_up: bool,
    step_down: bool,
    integral: bool,
    elastic: bool,
    tight: bool = True,
) -> Program:
    """The tick's program; ``elastic`` lets coverage fall short at a penalty, ``tight`` adds count
    bounds that never cut off an optimum (:func:`count_bounds`)."""
    cols = Columns.of(len(p.pools))
    rows = Rows(cols.width)
    spot_total(rows, cols)
    cover_now(rows, p, cols)
    cover_next_hour(rows, p, cols)
    non_spot_min(rows, p, cols)
    non_spot_fraction(rows, p, cfg, cols)
    zone_loss(rows, p, cfg, cols)
    pool_share(rows, p, cfg, cols)
    quota(rows, p, cols)
    limit(rows, p, cols)
    floors = {tier: step_floor(p, cfg, tier) if step_down else 0.0 for tier in TIERS}
    step_limits(rows, p, cfg, cols, floors, up=step_up)
    launch(rows, p, cols)

    upper = np.full(cols.width, math.inf)
    if tight:
        upper[cols.spot], upper[cols.ondemand] = count_bounds(p, cfg, floors["spot"], floors["ondemand"])
    else:
        upper[cols.spot] = spot_available(p)
    if not cfg.allow_ondemand:
        upper[cols.ondemand] = 0.0
    # However large the demand reported, a plan's count must be one its readers accept (the wire's range).
    upper[cols.spot] = np.minimum(upper[cols.spot], MAX_POOL_NODES)
    upper[cols.ondemand] = np.minimum(upper[cols.ondemand], MAX_POOL_NODES)
    if not elastic:
        upper[cols.shortfalls] = 0.0
    integrality = np.zeros(cols.width)
    if integral:
        integrality[cols.spot] = 1
        integrality[cols.ondemand] = 1
    bounds = Bounds(np.zeros(cols.width), upper)
    return Program(objective(p, cfg, cols), rows, bounds, integrality, cols)


def objective(p: Problem, cfg: OptimizerConfig, cols: Columns) -> np.ndarray:
    """Hourly cost of the nodes, a share of it per launch, and (elastic only) a penalty per shortfall."""
    launch_hours = cfg.switching_cost_hours + _TIE_BREAK_HOURS
    c = np.zeros(cols.width)
    c[cols.spot] = p.spot_price
    c[cols.ondemand] = p.od_price
    c[cols.launches("spot")] = p.spot_price * launch_hours
    c[cols.launches("ondemand")] = p.od_price * launch_hours
    # Only used when demand cannot be covered at all: a shortfall of a thousandth of the smallest node's
    # capacity must cost more than the dearest node, so the answer covers all it can.
    dearest = float(np.max(np.concatenate([p.od_price, p.spot_price]), initial=1.0))
    smallest = float(np.min(np.concatenate([p.cap_now, p.cap_next]), initial=1.0))
    per_rps = 1e3 * dearest / max(smallest, TOLERANCE)
    c[cols.shortfalls] = [1e3 * dearest if family == "non_spot_min" else per_rps for family in SHORTFALLS]
    return c


def count_bounds(
    p: Problem, cfg: OptimizerConfig, spot_floor: float, od_floor: float
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
    spot_upper = spot_available(p).copy()
    if cfg.max_pool_share >= 0.5:
        spot_nodes = np.where(np.isfinite(spot_nodes), spot_nodes, 0.0)
        needed = np.maximum(np.maximum(np.ceil(spot_nodes) + 1, p.cur_spot), spot_floor)
        spot_upper = np.minimum(spot_upper, needed)
    return spot_upper, _ondemand_launches_in_first_pool(p, od_upper)


def _ondemand_launches_in_first_pool(p: Problem, od_upper: np.ndarray) -> np.ndarray:
    """On-demand bounds without the answers that only move on-demand launches between pools of a type.

    An on-demand node of a type is the same in every pool (price, capacity, no reclaims; every family
    counts it alike), so any answer can be rearranged at the same cost into one where only the type's
    first pool launches and every other pool keeps at most what it holds. Without this, HiGHS spent
    seconds proving that equal-cost rearrangements were no better: with a 50% non-spot floor, ticks
    at 16 and 64 pools hit the 5 s time limit (bench/optimizer.py).
    """
    upper = od_upper.copy()
    first: set[str] = set()
    for i, (type_name, _pool) in enumerate(p.pools):
        if type_name in first:
            upper[i] = min(upper[i], p.cur_od[i])
        first.add(type_name)
    return upper


# --- reading an answer ---------------------------------------------------------------------------------


def binding(p: Problem, rows: Rows, x: np.ndarray) -> tuple[str, ...]:
    """Constraints tight to within one node: no node could be given up without breaking them."""
    values = np.vstack(rows.rows) @ x
    unit = (
        float(np.min(np.concatenate([p.cap_now * p.reliability, p.cap_next * p.reliability])))
        if p.pools
        else 1.0
    )
    # The cost limit binds when not even the cheapest node would fit under it.
    cheapest = float(np.min(np.concatenate([p.spot_price, p.od_price]), initial=1.0))
    names: list[str] = []
    for name, value, lo, hi in zip(rows.names, values, rows.lo, rows.hi, strict=True):
        family = name.split(":")[0]
        if family in BOOKKEEPING:
            continue
        slack_unit = unit if family in CAPACITY_FAMILIES else cheapest if name == COST_LIMIT else 1.0
        slack = min(value - lo, hi - value)
        if slack < slack_unit - TOLERANCE and name not in names:
            names.append(name)
    cols = Columns.of(len(p.pools))
    for i, (type_name, pool) in enumerate(p.pools):
        cap = spot_available(p)[i]
        if math.isfinite(cap) and x[cols.spot.start + i] >= cap - TOLERANCE:
            names.append(f"spot_available:{type_name}/{pool}")
    if reserved_over_limit(p) > 0:
        names.append("limit:reserved")
    return tuple(names)


def broken(rows: Rows, x: np.ndarray) -> list[str]:
    """Names of the rows ``x`` breaks (bookkeeping rows aside), to a relative tolerance."""
    values = np.vstack(rows.rows) @ x
    out: list[str] = []
    for name, value, lo, hi in zip(rows.names, values, rows.lo, rows.hi, strict=True):
        if name in BOOKKEEPING:
            continue
        scale = max(1.0, abs(lo) if math.isfinite(lo) else 0.0, abs(hi) if math.isfinite(hi) else 0.0)
        if value < lo - 1e-9 * scale or value > hi + 1e-9 * scale:
            out.append(name)
    return out


def shortfall_reason(shortfall: Mapping[str, float]) -> list[str]:
    """The fallback's account of what it could not cover, family by family."""
    return [
        text.format(shortfall[family]) for family, text in SHORTFALLS.items() if shortfall[family] > TOLERANCE
    ]
