"""Foresight yardsticks for the backtest: policies that know the demand to come (and maybe every reclaim).

``hindsight`` ignores boots and ticks, so no policy in the engine can reach it. These two run in the same
engine, with the same boots and ticks, and size every decision to the TRUE peak demand of the steps it
stands for: from ``view.step`` to ``view.step + lead_steps`` (a boot plus a tick: until the next
decision's nodes serve).

- ``foresight`` also knows every reclaim: in each pool it keeps no more spot than the pool's lowest
  availability over that window, so it is never reclaimed, and launches only what the pool keeps a tick
  longer (through the next decision's window, which would otherwise cancel it while it boots).
- ``foresight-demand`` sees only the availability now and hedges against reclaims with a :class:`Hedge`:
  a share of the need on non-spot capacity, spot spread so that losing any one zone leaves the need
  covered, and a few reserved nodes. :func:`cheapest_hedge` picks the cheapest hedge that holds the SLO.

Capacity is counted in *main-type nodes*: a step's need is its requests/s over one main-type node's
requests/s for the step's token mix. A node of another type is worth the lowest ratio of its requests/s
to the main type's over the window, so the capacity chosen covers every step of it, whatever its mix.

Each decision is otherwise taken afresh, cheapest first, except that it keeps every node of a (type, pool,
tier) where a node still boots: the nodes the last decision launched serve before this one's can, and
the nodes they replace leave when they were due.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from agent.core.capacity import SloConfig, rps_per_instance
from agent.core.catalog import Catalog
from agent.core.demand import Demand
from agent.core.optimizer import PoolKey
from agent.sim.replay import BacktestResult, Market, Targets, View

_EPS = 1e-9


YardstickScores = Literal["minute", "both"]
"""Which scores the yardstick's hedge must hold: the per-minute SLO, or also the queue score."""


@dataclass(frozen=True, slots=True)
class Hedge:
    """How ``foresight-demand`` guards against reclaims it cannot see coming."""

    non_spot_floor: float = 0.0
    """Reserved plus on-demand capacity is at least this share of the window's peak need."""
    zone_rule: bool = False
    """Spread spot so that losing every spot node of any one zone (pool name, all types) still leaves the
    peak need covered; with fewer than two zones with room, the rest goes on-demand."""
    reserved: int = 0
    """Reserved nodes of the type with the cheapest reserved $ per capacity."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.non_spot_floor <= 1.0:
            raise ValueError(f"non_spot_floor must be in [0, 1], got {self.non_spot_floor!r}")
        if self.reserved < 0:
            raise ValueError(f"reserved must be ≥ 0, got {self.reserved!r}")

    def label(self) -> str:
        parts = [f"floor {self.non_spot_floor:g}"]
        if self.zone_rule:
            parts.append("zone rule")
        if self.reserved:
            parts.append(f"{self.reserved} reserved")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class HedgeFamily:
    """The hedges :func:`cheapest_hedge` tries: every combination of the three knobs."""

    floors: tuple[float, ...] = (0.0, 0.25, 0.5)
    zone_rule: tuple[bool, ...] = (False, True)
    reserved: tuple[int, ...] = (0, 2)

    def members(self) -> list[Hedge]:
        """Fewest reserved first, then no zone rule first, floors ascending."""
        return [
            Hedge(f, zone, reserved)
            for reserved in self.reserved
            for zone in self.zone_rule
            for f in sorted(self.floors)
        ]


def hedge_score(result: BacktestResult, scores: YardstickScores) -> float:
    """The score a hedge is judged on: per-minute SLO attainment, or the lower of it and the queue score."""
    if scores == "both":
        return min(result.slo_attainment, result.queue.served_within)
    return result.slo_attainment


def cheapest_hedge(
    family: HedgeFamily,
    replay: Callable[[Hedge], BacktestResult],
    target: float,
    scores: YardstickScores = "minute",
) -> tuple[Hedge, BacktestResult, int]:
    """The cheapest member whose score reaches ``target``, its result and the number of replays it took;
    when none does, the member with the highest score (the cheapest among ties). The score is the
    per-minute SLO attainment, or with ``scores = "both"`` the lower of it and the queue score (the share
    served within the queue delay): what the rolling policy itself must hold.

    Every member is replayed: a higher floor is not always dearer (with GCP prices and the zone rule, the
    50% floor cost $189 less than no floor: its on-demand nodes stand in for spot spread over the zones).
    """

    tried = [(hedge, replay(hedge)) for hedge in family.members()]
    if not tried:
        raise ValueError("the hedge family has no members")
    passing = [(hedge, result) for hedge, result in tried if hedge_score(result, scores) >= target]
    if passing:
        hedge, result = min(passing, key=lambda p: p[1].cost)
    else:
        hedge, result = min(tried, key=lambda p: (-hedge_score(p[1], scores), p[1].cost))
    return hedge, result, len(tried)


def lead_steps_for(boot_s: float, policy_interval_s: float, step_s: float) -> int:
    """Steps from a decision until the next decision's nodes serve: a boot plus a tick."""
    return max(1, round((boot_s + policy_interval_s) / step_s))


def reserved_for(catalog: Catalog, slo: SloConfig, demand: Sequence[Demand], count: int) -> dict[str, int]:
    """``count`` reserved nodes of the type with the cheapest reserved $ per capacity, capacity taken at
    the demand's request-weighted mean token mix."""
    if count <= 0:
        return {}
    weight = sum(d.rps for d in demand)
    if weight > 0:
        prompt = sum(d.rps * d.prompt_tokens for d in demand) / weight
        output = sum(d.rps * d.output_tokens for d in demand) / weight
    elif demand:
        prompt, output = demand[0].prompt_tokens, demand[0].output_tokens
    else:
        prompt = output = 0.0

    def dollars_per_rps(name: str) -> float:
        itype = catalog.types[name]
        rps = rps_per_instance(itype, prompt, output, slo)
        return itype.reserved_hourly / rps if rps > 0 else math.inf

    return {min(catalog.types, key=dollars_per_rps): count}


@dataclass(frozen=True, slots=True)
class _Option:
    """A way to add capacity: nodes of one type in one pool and tier."""

    key: PoolKey
    spot: bool
    unit: float
    """Capacity of one node, in main-type nodes."""
    price: float

    @property
    def per_unit(self) -> float:
        return self.price / self.unit if self.unit > 0 else math.inf


@dataclass(slots=True)
class _Fill:
    spot: dict[PoolKey, int]
    ondemand: dict[PoolKey, int]
    cost: float


def _fill(
    need: float,
    non_spot_cap: float,
    floor_cap: float,
    kept: _Fill,
    unit: dict[str, float],
    spot_options: Sequence[_Option],
    ondemand: _Option,
    room: dict[PoolKey, int],
    zone_rule: bool,
) -> _Fill:
    """Nodes that cover ``need`` (in main-type nodes) on top of ``non_spot_cap`` (reserved) and the nodes
    ``kept``: on-demand up to the non-spot ``floor_cap``, then spot (cheapest $ per capacity first, within
    ``room``; with the zone rule spread so that losing any one zone still leaves ``need`` covered), then
    on-demand. The result includes the nodes kept; its cost counts only the nodes added."""
    non_spot_cap += sum(unit[k[0]] * n for k, n in kept.ondemand.items())
    floor_nodes = _nodes_for(floor_cap - non_spot_cap, ondemand.unit)
    rest = need - non_spot_cap - floor_nodes * ondemand.unit
    free = {k: n - kept.spot.get(k, 0) for k, n in room.items()}
    # Spot dearer per capacity than on-demand is never worth holding.
    cheap = [o for o in spot_options if o.per_unit < ondemand.per_unit and free.get(o.key, 0) > 0]
    if not zone_rule:
        best = _spot_fill(rest, kept.spot, unit, cheap, free, cap=math.inf, ondemand=ondemand)
    else:
        # The largest spot capacity any one zone may hold: none more than now, or every multiple of the
        # cheapest node up to the rest (a zone holding more than the rest is never needed).
        best = _spot_fill(rest, kept.spot, unit, [], free, cap=0.0, ondemand=ondemand)
        if cheap and rest > _EPS:
            step = cheap[0].unit
            for k in range(1, int(rest / step + _EPS) + 2):
                candidate = _spot_fill(rest, kept.spot, unit, cheap, free, cap=k * step, ondemand=ondemand)
                if candidate.cost < best.cost - _EPS:
                    best = candidate
    ondemand_nodes = dict(kept.ondemand)
    for key, n in best.ondemand.items():
        ondemand_nodes[key] = ondemand_nodes.get(key, 0) + n
    if floor_nodes:
        ondemand_nodes[ondemand.key] = ondemand_nodes.get(ondemand.key, 0) + floor_nodes
    return _Fill(best.spot, ondemand_nodes, best.cost + floor_nodes * ondemand.price)


def _spot_fill(
    rest: float,
    kept: dict[PoolKey, int],
    unit: dict[str, float],
    options: Sequence[_Option],
    free: dict[PoolKey, int],
    *,
    cap: float,
    ondemand: _Option,
) -> _Fill:
    """Spot nodes on top of those ``kept``, cheapest first, adding none to a zone that would then hold more
    than ``cap``, until what survives the loss of the largest zone covers ``rest`` (with no cap: until
    the spot covers it); on-demand for the rest."""
    by_zone: dict[str, float] = {}
    spot = dict(kept)
    for key, n in kept.items():
        by_zone[key[1]] = by_zone.get(key[1], 0.0) + unit[key[0]] * n
    cost = 0.0
    total = sum(by_zone.values())

    def covered() -> float:
        return total if cap == math.inf else total - max(by_zone.values(), default=0.0)

    for option in options:
        zone = option.key[1]
        left = free.get(option.key, 0)
        while left > 0 and covered() < rest - _EPS:
            held = by_zone.get(zone, 0.0)
            if held + option.unit > cap + _EPS:
                break
            by_zone[zone] = held + option.unit
            total += option.unit
            spot[option.key] = spot.get(option.key, 0) + 1
            cost += option.price
            left -= 1
        if covered() >= rest - _EPS:
            break
    od = _nodes_for(rest - covered(), ondemand.unit)
    return _Fill(spot, {ondemand.key: od} if od else {}, cost + od * ondemand.price)


def _nodes_for(capacity: float, unit: float) -> int:
    if capacity <= _EPS:
        return 0
    return math.ceil(capacity / unit - _EPS)


@dataclass(slots=True)
class ForesightPolicy:
    """Sizes every decision to the true peak need of its window (see the module's docstring).

    ``market`` given: knows every reclaim (``foresight``); ``None``: sees only the availability now and
    hedges with ``hedge`` (``foresight-demand``). ``demand`` is the whole trace, warm-up included
    (``view.step`` indexes it).
    """

    catalog: Catalog
    slo: SloConfig
    demand: Sequence[Demand]
    lead_steps: int
    hedge: Hedge = field(default_factory=Hedge)
    reserved: dict[str, int] = field(default_factory=dict)
    market: Market | None = None
    name: str = ""
    tick_steps: int = 5
    """Steps between two decisions on the tick (``policy_interval_s / step_s``): how much longer than
    the window a spot node launched now must be safe from reclaim."""
    boot_steps: int | None = None
    """Steps a launch boots; ``None``: the lead less a tick."""
    _types: list[str] = field(init=False)
    _units: np.ndarray = field(init=False)
    """Per step, main-type nodes needed."""
    _ratio: np.ndarray = field(init=False)
    """Per step and type, one node's requests/s over one main-type node's."""
    _pool_index: dict[PoolKey, int] = field(init=False)
    _od_booting: dict[PoolKey, list[int]] = field(init=False, default_factory=dict)
    """Per pool, the step each on-demand node launched and still booting is up (the view does not say)."""

    def __post_init__(self) -> None:
        if self.lead_steps < 0:
            raise ValueError(f"lead_steps must be ≥ 0, got {self.lead_steps!r}")
        if not self.name:
            self.name = "foresight" if self.market is not None else "foresight-demand"
        self._types = list(self.catalog.types)
        caps = np.array(
            [
                [
                    rps_per_instance(self.catalog.types[t], d.prompt_tokens, d.output_tokens, self.slo)
                    for t in self._types
                ]
                for d in self.demand
            ],
            dtype=float,
        ).reshape(len(self.demand), len(self._types))
        rps = np.array([d.rps for d in self.demand], dtype=float)
        main = caps[:, 0] if len(self._types) else np.ones(len(self.demand))
        usable = np.isfinite(main) & (main > 0)
        safe_main = np.where(usable, main, 1.0)
        self._units = np.where(usable, rps / safe_main, 0.0)
        # A mix no type is limited on (no tokens) makes every type worth one main-type node.
        ratio = np.where(usable[:, None], caps / safe_main[:, None], 1.0)
        self._ratio = np.where(np.isfinite(ratio), ratio, 1.0)
        self._pool_index = self.market.index() if self.market is not None else {}

    def observe(self, t: float, demand: Demand) -> None:
        return None

    def commit(self, t: float, market: Market) -> dict[str, int]:
        return dict(self.reserved)

    def wants_plan(self, t: float, demand: Demand) -> bool:
        return False

    def plan(self, view: View) -> Targets:
        start = min(max(view.step, 0), len(self.demand) - 1)
        end = min(start + self.lead_steps, len(self.demand) - 1) + 1
        need = float(self._units[start:end].max())
        unit = dict(zip(self._types, (float(u) for u in self._ratio[start:end].min(axis=0)), strict=True))
        reserved_cap = sum(unit[t] * n for t, n in view.reserved.items() if t in unit)
        room = self._room(view, start, end)
        spot_options = sorted(
            (
                _Option(key, True, unit[key[0]], self.catalog.types[key[0]].spot_hourly)
                for key in room
                if key[0] in unit
            ),
            # Ties go to the pool already held from, then the market's order: no churn between equals.
            key=lambda o: (o.per_unit, -view.spot.get(o.key, 0)),
        )
        ondemand = min(
            (
                _Option(
                    (t, self.catalog.types[t].pools[0]), False, unit[t], self.catalog.types[t].ondemand_hourly
                )
                for t in self._types
            ),
            key=lambda o: o.per_unit,
        )
        chosen = _fill(
            need,
            reserved_cap,
            self.hedge.non_spot_floor * need,
            self._booting(view, room),
            unit,
            spot_options,
            ondemand,
            room,
            self.hedge.zone_rule,
        )
        self._record_launches(view, chosen.ondemand)
        keys = self.catalog.pools()
        return Targets(
            spot={k: chosen.spot.get(k, 0) for k in keys},
            ondemand={k: chosen.ondemand.get(k, 0) for k in keys},
        )

    def _booting(self, view: View, room: dict[PoolKey, int]) -> _Fill:
        """The nodes to keep because some of them still boot: every node of a (type, pool, tier) with a
        node booting (spot as far as its pool keeps them). The last decision's launches serve before this
        one's, and the nodes they replace leave when they were due: cancelling them would leave a gap until
        this decision's launches are up. A cut releases the newest (the booting) first, hence the whole slot.
        """
        spot = {k: min(n, room.get(k, 0)) for k, n in view.spot.items() if n > view.spot_ready.get(k, 0)}
        ondemand = {
            k: view.ondemand.get(k, 0)
            for k, ready in self._od_booting.items()
            if any(r > view.step for r in ready)
        }
        return _Fill(
            {k: n for k, n in spot.items() if n > 0}, {k: n for k, n in ondemand.items() if n > 0}, 0.0
        )

    def _record_launches(self, view: View, targets: dict[PoolKey, int]) -> None:
        boot = self.boot_steps if self.boot_steps is not None else self.lead_steps - self.tick_steps
        ready_at = view.step + (0 if view.reason == "start" else max(0, boot))
        for k in set(targets) | set(self._od_booting):
            booting = sorted(r for r in self._od_booting.get(k, []) if r > view.step)
            held = view.ondemand.get(k, 0)
            wanted = targets.get(k, 0)
            if wanted > held:
                booting.extend([ready_at] * (wanted - held))
            elif wanted < held:
                del booting[max(0, len(booting) - (held - wanted)) :]  # the newest go first
            self._od_booting[k] = [r for r in booting if r > view.step]

    def _room(self, view: View, start: int, end: int) -> dict[PoolKey, int]:
        """Spot room per pool: knowing reclaims, nothing held is reclaimed while this decision stands;
        otherwise the availability now.

        A node held may stay as long as its pool keeps it until the next decision's nodes serve (the
        window). A node launched now must also last through the next decision's window: that decision
        would otherwise cancel it while it still boots, and the nodes it replaces, released to make way
        for it, would already be leaving, a gap until that decision's own launches boot.
        """
        if self.market is None:
            return dict(view.available)
        available = self.market.available
        keep = available[start:end].min(axis=0)
        launch = available[start : min(end + self.tick_steps, len(available))].min(axis=0)
        return {
            key: max(min(view.spot.get(key, 0), int(keep[j])), int(launch[j]))
            for key, j in self._pool_index.items()
        }


def demand_policy(
    catalog: Catalog,
    slo: SloConfig,
    demand: Sequence[Demand],
    lead_steps: int,
    hedge: Hedge,
    *,
    scored_from: int = 0,
) -> ForesightPolicy:
    """``foresight-demand`` with ``hedge``, its reserved nodes of the type cheapest per capacity at the
    scored demand's mix (``demand[scored_from:]``)."""
    reserved = reserved_for(catalog, slo, demand[scored_from:], hedge.reserved)
    return ForesightPolicy(catalog, slo, demand, lead_steps, hedge, reserved, None, "foresight-demand")
