"""The foresight yardsticks (``agent.sim.foresight``): policies that know the demand to come.

One node type, ``gpu``, serving exactly 1 request/s of the standard token mix at the SLO (capacity in
requests/s is a count of nodes), in pools ``a``, ``b`` and ``c``. Steps are 1 minute, the policy ticks every
5 minutes, a node boots in 3 steps and a notice lasts 2: a decision stands for 3 + 5 = 8 steps ahead.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest

from agent.core.capacity import SloConfig
from agent.core.catalog import Catalog, InstanceType
from agent.core.demand import Demand
from agent.core.optimizer import PoolKey
from agent.sim.foresight import (
    ForesightPolicy,
    Hedge,
    HedgeFamily,
    cheapest_hedge,
    demand_policy,
    hedge_score,
    lead_steps_for,
    reserved_for,
)
from agent.sim.replay import BacktestResult, Market, SimConfig, Targets, View, run_backtest

STEP_S = 60.0
BOOT_STEPS = 3
TICK_STEPS = 5
LEAD = lead_steps_for(BOOT_STEPS * STEP_S, TICK_STEPS * STEP_S, STEP_S)
SLO = SloConfig()
CFG = SimConfig(
    step_s=STEP_S,
    policy_interval_s=TICK_STEPS * STEP_S,
    notice_s=2 * STEP_S,
    boot_s=BOOT_STEPS * STEP_S,
    warmup_days=0,
    slo=SLO,
)
GPU = InstanceType(
    name="gpu",
    gpus=8,
    gpu_type="H100",
    ondemand_hourly=12.0,
    reserved_hourly=3.0,
    spot_hourly=6.0,
    spot_reclaim_per_hour=0.05,
    max_batch=1,
    prefill_tokens_per_s=1000.0,
    decode_tokens_per_s=1000.0,
    pools=("a", "b", "c"),
)
CATALOG = Catalog(name="tiny", types={"gpu": GPU})
A: PoolKey = ("gpu", "a")
B: PoolKey = ("gpu", "b")
C: PoolKey = ("gpu", "c")


def demand(*levels: tuple[float, int]) -> list[Demand]:
    """``(rps, steps)`` runs of the standard mix, one after the other."""
    return [Demand(rps, 350.0, 350.0) for rps, steps in levels for _ in range(steps)]


def market(a: Sequence[int], b: Sequence[int], c: Sequence[int] | None = None) -> Market:
    c = [0] * len(a) if c is None else c
    return Market(pools=(A, B, C), available=np.array([a, b, c], dtype=np.int64).T)


def foresight(trace: list[Demand], m: Market | None, hedge: Hedge | None = None) -> ForesightPolicy:
    return ForesightPolicy(CATALOG, SLO, trace, LEAD, hedge or Hedge(), {}, m, tick_steps=TICK_STEPS)


def view(step: int, available: dict[PoolKey, int], reserved: dict[str, int] | None = None) -> View:
    return View(
        t=step * STEP_S,
        step=step,
        reason="start",
        demand_now=Demand(0.0, 350.0, 350.0),
        reserved=reserved or {},
        spot={},
        spot_ready={},
        ondemand={},
        available=available,
    )


def nodes(targets: Targets) -> tuple[int, int]:
    return sum(targets.spot.values()), sum(targets.ondemand.values())


@dataclass
class Reactive:
    """Sizes on-demand to the demand it last saw: what foresight is measured against."""

    name: str = "reactive"

    def observe(self, t: float, demand: Demand) -> None:
        return None

    def commit(self, t: float, market: Market) -> dict[str, int]:
        return {}

    def wants_plan(self, t: float, demand: Demand) -> bool:
        return False

    def plan(self, view: View) -> Targets:
        return Targets({}, {A: math.ceil(view.demand_now.rps)})


def test_the_lead_is_a_boot_plus_a_tick_in_steps() -> None:
    assert LEAD == 8
    assert lead_steps_for(360.0, 300.0, 60.0) == 11


def test_knowing_every_reclaim_it_is_never_reclaimed_and_serves_everything() -> None:
    # Pool a has room until step 30, pool b from step 15: the spot must move from a to b in time.
    trace = demand((4.0, 60))
    m = market([10] * 30 + [0] * 30, [0] * 15 + [10] * 45)
    result = run_backtest(CATALOG, trace, m, foresight(trace, m), CFG)
    assert result.preemptions == 0
    assert result.slo_attainment == 1.0
    assert result.shortfall_minutes == 0
    assert result.node_hours["spot"] > result.node_hours["ondemand"]


def test_knowing_only_the_demand_it_is_reclaimed_where_the_market_drops() -> None:
    trace = demand((4.0, 60))
    m = market([10] * 30 + [0] * 30, [0] * 15 + [10] * 45)
    policy = foresight(trace, None)
    result = run_backtest(CATALOG, trace, m, policy, CFG)
    assert policy.name == "foresight-demand"
    assert result.preemptions > 0


def test_foresight_sizes_to_a_ramp_before_it_arrives() -> None:
    trace = demand((2.0, 30), (6.0, 30))
    m = market([10] * 60, [10] * 60)
    ahead = run_backtest(CATALOG, trace, m, foresight(trace, m), CFG, keep_records=True)
    behind = run_backtest(CATALOG, trace, m, Reactive(), CFG)
    before_the_ramp = ahead.records[29]
    assert before_the_ramp.demand_rps == 2.0
    assert sum(before_the_ramp.capacity_rps.values()) >= 6.0
    assert ahead.shortfall_minutes == 0
    assert behind.shortfall_minutes > 0


def test_the_window_stops_at_the_end_of_the_trace() -> None:
    trace = demand((1.0, 10), (3.0, 2))
    targets = foresight(trace, None).plan(view(11, {A: 10}))
    assert nodes(targets) == (3, 0)


def test_spot_beyond_a_pools_lowest_availability_over_the_window_is_not_held() -> None:
    # Pool a falls to 1 node at step 6, within the window of a decision at step 0.
    trace = demand((3.0, 20))
    m = market([5] * 6 + [1] * 14, [0] * 20)
    targets = foresight(trace, m).plan(view(0, {A: 5, B: 0}))
    assert targets.spot[A] == 1
    assert targets.ondemand[A] == 2


@pytest.mark.parametrize("floor", [0.25, 0.5, 1.0])
def test_the_non_spot_floor_is_covered_by_on_demand(floor: float) -> None:
    trace = demand((3.0, 5), (7.0, 5), (2.0, 10))
    targets = foresight(trace, None, Hedge(non_spot_floor=floor)).plan(view(0, {A: 10, B: 10}))
    spot, ondemand = nodes(targets)
    assert ondemand >= floor * 7
    assert spot + ondemand == 7


def test_reserved_nodes_count_first_and_towards_the_floor() -> None:
    trace = demand((7.0, 20))
    targets = foresight(trace, None, Hedge(non_spot_floor=0.5)).plan(view(0, {A: 10}, reserved={"gpu": 3}))
    spot, ondemand = nodes(targets)
    assert 3 + ondemand >= 0.5 * 7
    assert (spot, ondemand) == (3, 1)


@pytest.mark.parametrize(
    "rooms",
    [
        {A: 10, B: 10},
        {A: 10, B: 10, C: 10},
        {A: 1, B: 10, C: 10},
        {A: 3, B: 2, C: 1},
    ],
)
def test_the_zone_rule_leaves_the_need_covered_without_any_one_zone(rooms: dict[PoolKey, int]) -> None:
    need = 6
    trace = demand((float(need), 20))
    targets = foresight(trace, None, Hedge(zone_rule=True)).plan(view(0, rooms))
    spot, ondemand = nodes(targets)
    total = spot + ondemand
    assert total >= need
    for zone in (A, B, C):
        assert targets.spot.get(zone, 0) <= total - need
        assert targets.spot.get(zone, 0) <= rooms.get(zone, 0)


def test_the_zone_rule_spreads_spot_when_that_is_cheaper_than_on_demand() -> None:
    # Three zones of 3 spot nodes survive any one's loss with 6: 9 × $6 < 6 × $12 on-demand.
    trace = demand((6.0, 20))
    targets = foresight(trace, None, Hedge(zone_rule=True)).plan(view(0, {A: 10, B: 10, C: 10}))
    assert targets.spot == {A: 3, B: 3, C: 3}
    assert sum(targets.ondemand.values()) == 0


def test_with_fewer_than_two_zones_with_room_the_zone_rule_puts_the_need_on_demand() -> None:
    trace = demand((5.0, 20))
    targets = foresight(trace, None, Hedge(zone_rule=True)).plan(view(0, {A: 10, B: 0}))
    assert nodes(targets) == (0, 5)


def test_without_the_zone_rule_spot_fills_the_cheapest_pool_first() -> None:
    trace = demand((5.0, 20))
    targets = foresight(trace, None).plan(view(0, {A: 10, B: 10}))
    assert targets.spot[A] == 5
    assert targets.spot[B] == 0


def test_commit_returns_the_reserved_nodes_it_was_given_and_observing_changes_nothing() -> None:
    trace = demand((1.0, 5))
    policy = ForesightPolicy(CATALOG, SLO, trace, LEAD, Hedge(), {"gpu": 2}, None)
    policy.observe(0.0, trace[0])
    assert policy.commit(0.0, market([0] * 5, [0] * 5)) == {"gpu": 2}
    assert policy.wants_plan(0.0, trace[0]) is False


def test_reserved_nodes_go_to_the_type_cheapest_per_capacity() -> None:
    fast = InstanceType(
        **{**{f: getattr(GPU, f) for f in GPU.__slots__}, "name": "fast", "prefill_tokens_per_s": 4000.0}
    )
    catalog = Catalog(name="two", types={"gpu": GPU, "fast": fast})
    assert reserved_for(catalog, SLO, demand((1.0, 3)), 2) == {"fast": 2}
    assert reserved_for(catalog, SLO, demand((1.0, 3)), 0) == {}


def test_a_demand_policy_for_a_hedge_reserves_its_nodes() -> None:
    policy = demand_policy(CATALOG, SLO, demand((1.0, 5)), LEAD, Hedge(reserved=2))
    assert policy.commit(0.0, market([0] * 5, [0] * 5)) == {"gpu": 2}
    assert policy.name == "foresight-demand"


def test_a_hedge_rejects_a_floor_outside_zero_to_one() -> None:
    with pytest.raises(ValueError, match="non_spot_floor"):
        Hedge(non_spot_floor=1.5)


def test_hedge_labels_name_their_knobs() -> None:
    assert Hedge().label() == "floor 0"
    assert Hedge(0.25, True, 2).label() == "floor 0.25, zone rule, 2 reserved"


def test_the_family_lists_each_group_with_floors_ascending() -> None:
    members = HedgeFamily().members()
    assert len(members) == 12
    assert len(set(members)) == 12
    assert members[:3] == [Hedge(0.0, False, 0), Hedge(0.25, False, 0), Hedge(0.5, False, 0)]


def result(cost: float, attainment: float, queued: float = 1.0) -> BacktestResult:
    """A real result with the given cost, attainment and queue score (the engine's other figures do not
    matter here)."""
    base = run_backtest(CATALOG, demand((1.0, 2)), market([0, 0], [0, 0]), Reactive(), CFG)
    queue = dataclasses.replace(base.queue, served_within=queued)
    return dataclasses.replace(base, cost=cost, demand_tokens=1.0, served_tokens=attainment, queue=queue)


@dataclass
class Replays:
    """A stand-in for the engine: each hedge's cost and attainment from a table; counts the calls."""

    table: dict[Hedge, tuple[float, float]]
    calls: list[Hedge]

    def __call__(self, hedge: Hedge) -> BacktestResult:
        self.calls.append(hedge)
        return result(*self.table[hedge])


def table(attainment: dict[tuple[bool, int], Sequence[float]]) -> dict[Hedge, tuple[float, float]]:
    """Cost grows with the floor, the zone rule and the reserved nodes; attainment per group and floor."""
    out = {}
    for (zone, reserved), by_floor in attainment.items():
        for floor, att in zip((0.0, 0.25, 0.5), by_floor, strict=True):
            out[Hedge(floor, zone, reserved)] = (100 + 100 * floor + 30 * zone + 20 * reserved, att)
    return out


def test_cheapest_hedge_picks_the_cheapest_member_that_reaches_the_target_trying_every_member() -> None:
    replays = Replays(
        table(
            {
                (False, 0): (0.99, 0.9995, 0.9999),  # passes at 0.25 (cost 125) and 0.5 (150)
                (True, 0): (0.9992, 0.9999, 1.0),  # passes at 0: cost 130
                (False, 2): (0.9991, 1.0, 1.0),  # passes at 0: cost 140
                (True, 2): (0.98, 0.985, 0.99),  # never passes
            }
        ),
        [],
    )
    hedge, best, runs = cheapest_hedge(HedgeFamily(), replays, 0.999)
    assert hedge == Hedge(0.25, False, 0)
    assert best.cost == 125
    assert runs == len(replays.calls) == 12
    assert set(replays.calls) == set(HedgeFamily().members())


def test_a_higher_floor_that_costs_less_is_found() -> None:
    # As with GCP prices and the zone rule: the 50% floor holds the target for less than no floor.
    costs = {0.0: 205.0, 0.25: 204.0, 0.5: 203.0}
    replays = Replays(
        {h: (costs[h.non_spot_floor] if h.zone_rule else 900.0, 0.9995) for h in HedgeFamily().members()}, []
    )
    hedge, best, _ = cheapest_hedge(HedgeFamily(reserved=(0,)), replays, 0.999)
    assert (hedge, best.cost) == (Hedge(0.5, True, 0), 203.0)


def test_when_no_hedge_reaches_the_target_the_highest_attainment_wins_the_cheapest_among_ties() -> None:
    replays = Replays(
        table(
            {
                (False, 0): (0.9, 0.95, 0.97),
                (True, 0): (0.96, 0.98, 0.98),  # 0.98 at floors 0.25 (cost 155) and 0.5 (cost 180)
                (False, 2): (0.9, 0.9, 0.9),
                (True, 2): (0.9, 0.95, 0.98),  # 0.98 at cost 220
            }
        ),
        [],
    )
    hedge, best, runs = cheapest_hedge(HedgeFamily(), replays, 0.999)
    assert hedge == Hedge(0.25, True, 0)
    assert best.slo_attainment == 0.98
    assert runs == 12


def test_judged_on_both_scores_a_hedge_must_also_hold_the_queue_score() -> None:
    # Every member holds the per-minute target; the queue score holds only with the 0.5 floor.
    calls: list[Hedge] = []

    def replay(hedge: Hedge) -> BacktestResult:
        calls.append(hedge)
        cost = 100 + 100 * hedge.non_spot_floor + 30 * hedge.zone_rule + 20 * hedge.reserved
        return result(cost, 0.9995, 0.9995 if hedge.non_spot_floor == 0.5 else 0.998)

    cheapest, best, _ = cheapest_hedge(HedgeFamily(), replay, 0.999)
    assert (cheapest, best.cost) == (Hedge(0.0, False, 0), 100)
    hedge, held, _ = cheapest_hedge(HedgeFamily(), replay, 0.999, "both")
    assert (hedge, held.cost) == (Hedge(0.5, False, 0), 150)
    assert hedge_score(held, "both") == 0.9995
    assert hedge_score(result(1, 0.9995, 0.998), "minute") == 0.9995
    assert hedge_score(result(1, 0.9995, 0.998), "both") == 0.998
