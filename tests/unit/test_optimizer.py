"""The tick optimizer: an integer program over spot and on-demand nodes per type × pool.

Reserved nodes are an input it never changes; every answer is integral and satisfies every constraint
(or says plainly, with status ``fallback``, which requirement it could not meet and why).
"""

from __future__ import annotations

import dataclasses

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import resolve_catalog
from agent.core.capacity import SloConfig, rps_per_instance
from agent.core.catalog import Catalog, InstanceType
from agent.core.demand import Demand
from agent.core.optimizer import (
    Allocation,
    Fleet,
    OptimizerConfig,
    SpotMarket,
    TickInput,
    hourly_cost,
    optimize_tick,
    seed_lp_ceil,
    violations,
)

SEED = resolve_catalog("seed")
GCP = resolve_catalog("gcp-2026-07")
H100 = SEED.type("h100_8x")
H100_RPS = rps_per_instance(H100, 1500, 500, SloConfig())  # ≈ 7.57 rps per node
# Each rule on its own: no step limits, and none of the agent's default 50% non-spot floor.
NO_LIMITS = OptimizerConfig(max_step_up=None, max_step_down=None, min_non_spot_fraction=0.0)


def demand(nodes: float) -> Demand:
    """Demand that needs ``nodes`` h100_8x nodes' worth of capacity."""
    return Demand(nodes * H100_RPS, 1500, 500)


def only_h100(pools: tuple[str, ...] = ("default",)) -> Catalog:
    return Catalog(name="h100-only", types={"h100_8x": dataclasses.replace(H100, pools=pools)})


def test_reserved_nodes_are_never_changed_by_the_tick() -> None:
    for reserved in (0, 1, 3, 9):
        inp = TickInput(demand(2), demand(3), Fleet(reserved={"h100_8x": reserved}))
        alloc = optimize_tick(SEED, inp, cfg=NO_LIMITS)
        assert alloc.reserved == {"h100_8x": reserved}


def test_spot_capacity_is_discounted_by_its_reliability() -> None:
    # Exactly 4 nodes' worth of demand: 4 spot nodes at 95% reliability are not enough.
    inp = TickInput(demand(4), demand(4), Fleet(reserved={"h100_8x": 0}))
    alloc = optimize_tick(only_h100(), inp, cfg=msgspec.structs.replace(NO_LIMITS, min_non_spot_instances=0))
    assert alloc.total("spot") + alloc.total("ondemand") >= 5 or alloc.total("ondemand") == 4
    assert alloc.capacity_now_rps >= inp.demand_now.rps - 1e-9


def test_covers_current_p75_and_next_hour_p95() -> None:
    inp = TickInput(demand(2.5), demand(6.2), Fleet(reserved={"h100_8x": 1}))
    alloc = optimize_tick(SEED, inp, cfg=NO_LIMITS)
    assert alloc.capacity_now_rps >= inp.demand_now.rps
    assert alloc.capacity_next_rps >= inp.demand_next.rps
    assert "cover_next_hour" in alloc.binding
    assert violations(SEED, inp, alloc, cfg=NO_LIMITS) == []


def test_keeps_at_least_one_non_spot_node_even_when_spot_is_far_cheaper() -> None:
    inp = TickInput(demand(3), demand(3))
    alloc = optimize_tick(only_h100(), inp, cfg=NO_LIMITS)
    assert alloc.total("ondemand") >= 1
    assert "non_spot_min" in alloc.binding


def test_non_spot_fraction_keeps_that_share_of_demand_on_reliable_nodes() -> None:
    cfg = msgspec.structs.replace(NO_LIMITS, min_non_spot_fraction=0.5)
    inp = TickInput(demand(8), demand(8))
    alloc = optimize_tick(only_h100(), inp, cfg=cfg)
    assert alloc.total("ondemand") * H100_RPS >= 0.5 * inp.demand_next.rps
    assert alloc.total("spot") > 0  # the rest still goes to the cheaper tier


def test_spot_is_never_planned_beyond_what_a_pool_offers() -> None:
    catalog = only_h100(("a", "b", "c"))
    market = SpotMarket(available={("h100_8x", "a"): 0, ("h100_8x", "b"): 2})
    alloc = optimize_tick(catalog, TickInput(demand(10), demand(10), market=market), cfg=NO_LIMITS)
    assert alloc.spot.get(("h100_8x", "a"), 0) == 0
    assert alloc.spot.get(("h100_8x", "b"), 0) <= 2
    assert "spot_available:h100_8x/a" in alloc.binding


def test_spot_is_spread_over_pools_because_reclaims_are_correlated_within_one() -> None:
    catalog = only_h100(("a", "b", "c"))
    cfg = msgspec.structs.replace(NO_LIMITS, max_pool_share=0.5)
    alloc = optimize_tick(catalog, TickInput(demand(10), demand(10)), cfg=cfg)
    total = alloc.total("spot")
    assert total >= 8
    assert all(n <= 0.5 * total + 1 for n in alloc.spot.values())
    assert len(alloc.spot) >= 2


def test_a_live_spot_price_overrides_the_catalog() -> None:
    catalog = only_h100(("a", "b"))
    market = SpotMarket(price={("h100_8x", "a"): 30.0})  # pool a's spot now costs nearly on-demand
    cfg = msgspec.structs.replace(NO_LIMITS, max_pool_share=1.0)
    alloc = optimize_tick(catalog, TickInput(demand(4), demand(4), market=market), cfg=cfg)
    assert ("h100_8x", "a") not in alloc.spot
    assert alloc.hourly_cost == pytest.approx(hourly_cost(catalog, alloc, market))


def test_changes_are_limited_to_plus_two_and_minus_one_per_tier_per_tick() -> None:
    catalog = only_h100(("a", "b"))
    fleet = Fleet(reserved={"h100_8x": 2}, spot={("h100_8x", "a"): 3}, ondemand={("h100_8x", "b"): 3})
    # Demand dropped to almost nothing: release at most one node per tier.
    alloc = optimize_tick(catalog, TickInput(demand(0.5), demand(0.5), fleet))
    assert alloc.total("spot") == 2
    assert alloc.total("ondemand") == 2
    assert {"step_down:spot", "step_down:ondemand"} <= set(alloc.binding)
    assert alloc.status == "optimal"


def test_the_step_up_limit_is_lifted_rather_than_leave_demand_uncovered() -> None:
    inp = TickInput(demand(12), demand(12), Fleet(reserved={"h100_8x": 2}))
    alloc = optimize_tick(only_h100(), inp)
    assert alloc.status == "relaxed"
    assert "step-up" in alloc.reason
    assert alloc.capacity_now_rps >= inp.demand_now.rps
    assert violations(only_h100(), inp, alloc, step_limits=False) == []


def test_reclaimed_spot_nodes_do_not_count_as_a_voluntary_release() -> None:
    catalog = only_h100(("a", "b"))
    fleet = Fleet(reserved={"h100_8x": 2}, spot={("h100_8x", "a"): 3, ("h100_8x", "b"): 3})
    # Pool a was reclaimed entirely: the fleet keeps what b holds; it need not keep 5 nodes.
    market = SpotMarket(available={("h100_8x", "a"): 0})
    alloc = optimize_tick(catalog, TickInput(demand(1), demand(1), fleet, market))
    assert alloc.spot == {("h100_8x", "b"): 2}


def test_a_repeated_tick_keeps_the_fleet_it_planned() -> None:
    inp = TickInput(demand(6), demand(7))
    first = optimize_tick(GCP, TickInput(inp.demand_now, inp.demand_next, Fleet()), cfg=NO_LIMITS)
    again = optimize_tick(
        GCP, TickInput(inp.demand_now, inp.demand_next, Fleet({}, first.spot, first.ondemand)), cfg=NO_LIMITS
    )
    assert (again.spot, again.ondemand) == (first.spot, first.ondemand)


def test_a_switching_cost_keeps_running_nodes_instead_of_chasing_a_small_saving() -> None:
    catalog = only_h100(("a", "b"))
    fleet = Fleet(spot={("h100_8x", "a"): 2}, ondemand={("h100_8x", "b"): 2})
    market = SpotMarket(price={("h100_8x", "a"): 9.0})  # pool a got a little cheaper than b's 9.83
    base = msgspec.structs.replace(NO_LIMITS, max_pool_share=1.0)
    inp = TickInput(demand(3), demand(3), fleet, market)
    moved = optimize_tick(catalog, inp, cfg=base)
    kept = optimize_tick(catalog, inp, cfg=msgspec.structs.replace(base, switching_cost_hours=500.0))
    assert moved.total("ondemand") < 2  # without a switching cost it trades on-demand for spot
    assert kept.ondemand == {("h100_8x", "b"): 2}


def test_a_quota_that_cannot_cover_demand_gives_an_explicit_fallback() -> None:
    catalog = Catalog(name="tight", types={"h100_8x": dataclasses.replace(H100, max_instances=3)})
    alloc = optimize_tick(catalog, TickInput(demand(5), demand(5)), cfg=NO_LIMITS)
    assert alloc.status == "fallback"
    assert "short by" in alloc.reason
    assert "quota:h100_8x" in alloc.reason
    assert alloc.total("spot") + alloc.total("ondemand") == 3  # the most the quota allows


def test_lp_then_ceil_can_cost_more_than_the_integer_optimum() -> None:
    # Mixed types with fractional capacities: rounding every variable up overshoots.
    worse = 0
    for nodes in (1.3, 2.6, 3.9, 5.2, 7.7, 9.1, 13.4):
        inp = TickInput(demand(nodes), demand(nodes * 1.1), Fleet(reserved={"a3-highgpu-8g": 1}))
        ours = optimize_tick(GCP, inp, cfg=NO_LIMITS)
        seed = seed_lp_ceil(GCP, inp, cfg=NO_LIMITS)
        assert ours.hourly_cost <= seed.hourly_cost + 1e-6
        worse += seed.hourly_cost > ours.hourly_cost + 1e-6
    assert worse > 0


# --- properties over random catalogs, fleets, markets and demands -------------------------------------


@st.composite
def catalogs(draw: st.DrawFn) -> Catalog:
    types = {}
    for i in range(draw(st.integers(1, 3))):
        od = draw(st.floats(10, 100))
        types[f"t{i}"] = InstanceType(
            name=f"t{i}",
            gpus=8,
            gpu_type="GPU",
            ondemand_hourly=od,
            reserved_hourly=od * draw(st.floats(0.3, 1.0)),
            spot_hourly=od * draw(st.floats(0.2, 1.0)),
            spot_reclaim_per_hour=draw(st.floats(0, 0.3)),
            max_batch=draw(st.integers(16, 512)),
            prefill_tokens_per_s=draw(st.floats(5_000, 100_000)),
            decode_tokens_per_s=draw(st.floats(1_000, 20_000)),
            pools=tuple(f"z{j}" for j in range(draw(st.integers(1, 3)))),
            max_instances=draw(st.none() | st.integers(0, 40)),
        )
    return Catalog(name="random", types=types)


@st.composite
def ticks(draw: st.DrawFn) -> tuple[Catalog, TickInput, OptimizerConfig]:
    catalog = draw(catalogs())
    pools = catalog.pools()
    counts = st.integers(0, 6)
    fleet = Fleet(
        reserved={t: draw(counts) for t in catalog.types if draw(st.booleans())},
        spot={k: draw(counts) for k in pools if draw(st.booleans())},
        ondemand={k: draw(counts) for k in pools if draw(st.booleans())},
    )
    market = SpotMarket(
        price={k: draw(st.floats(1, 120)) for k in pools if draw(st.booleans())},
        available={k: draw(st.integers(0, 10)) for k in pools if draw(st.booleans())},
    )
    now = Demand(draw(st.floats(0, 300)), draw(st.floats(50, 4000)), draw(st.floats(50, 1500)))
    nxt = Demand(now.rps * draw(st.floats(0.5, 2.0)), now.prompt_tokens, now.output_tokens)
    cfg = OptimizerConfig(
        min_non_spot_instances=draw(st.integers(0, 2)),
        min_non_spot_fraction=draw(st.sampled_from([0.0, 0.3, 0.5])),
        max_pool_share=draw(st.sampled_from([0.5, 0.7, 1.0])),
        max_step_up=draw(st.sampled_from([None, 1, 2, 4])),
        max_step_down=draw(st.sampled_from([None, 1, 2])),
    )
    return catalog, TickInput(now, nxt, fleet, market), cfg


def _assert_sound(catalog: Catalog, inp: TickInput, cfg: OptimizerConfig, alloc: Allocation) -> None:
    assert alloc.reserved == dict(inp.fleet.reserved)
    assert all(isinstance(n, int) and n > 0 for n in [*alloc.spot.values(), *alloc.ondemand.values()])
    assert alloc.hourly_cost == pytest.approx(hourly_cost(catalog, alloc, inp.market))
    if alloc.status == "optimal":
        assert violations(catalog, inp, alloc, cfg=cfg) == []
    elif alloc.status == "relaxed":
        assert violations(catalog, inp, alloc, cfg=cfg, step_limits=False) == []
    else:
        assert alloc.reason.startswith("infeasible")


@given(ticks())
def test_every_answer_is_integral_keeps_reserved_and_satisfies_every_constraint(
    case: tuple[Catalog, TickInput, OptimizerConfig],
) -> None:
    catalog, inp, cfg = case
    _assert_sound(catalog, inp, cfg, optimize_tick(catalog, inp, cfg=cfg))


@given(ticks())
def test_never_costs_more_than_the_seed_lp_then_ceil_answer_when_that_answer_is_feasible(
    case: tuple[Catalog, TickInput, OptimizerConfig],
) -> None:
    catalog, inp, cfg = case
    seed = seed_lp_ceil(catalog, inp, cfg=cfg)
    if violations(catalog, inp, seed, cfg=cfg):
        return
    ours = optimize_tick(catalog, inp, cfg=cfg)
    assert ours.status == "optimal"
    # The optimizer's objective also carries a tie-break of 1e-4 h per launch: allow for it.
    assert ours.hourly_cost <= seed.hourly_cost * (1 + 1e-3) + 1e-6


@given(ticks(), st.floats(1.0, 3.0))
def test_cost_never_falls_when_demand_rises(
    case: tuple[Catalog, TickInput, OptimizerConfig], k: float
) -> None:
    catalog, inp, cfg = case
    # From an empty fleet without step limits, so that the answer depends on demand alone.
    cfg = msgspec.structs.replace(cfg, max_step_up=None, max_step_down=None)
    base = TickInput(inp.demand_now, inp.demand_next, Fleet(reserved=inp.fleet.reserved), inp.market)
    more = dataclasses.replace(
        base, demand_now=inp.demand_now.scaled(k), demand_next=inp.demand_next.scaled(k)
    )
    low = optimize_tick(catalog, base, cfg=cfg)
    high = optimize_tick(catalog, more, cfg=cfg)
    if low.status == "fallback" or high.status == "fallback":
        return  # past the quota both are best effort; nothing to compare
    assert high.hourly_cost >= low.hourly_cost * (1 - 1e-6) - 1e-6


def test_losing_every_spot_node_of_any_one_zone_still_leaves_demand_covered() -> None:
    catalog = only_h100(("a", "b", "c"))
    cfg = msgspec.structs.replace(NO_LIMITS, survive_zone_loss=1.0, max_pool_share=1.0)
    inp = TickInput(demand(6), demand(6))
    alloc = optimize_tick(catalog, inp, cfg=cfg)
    assert alloc.status == "optimal"
    for zone in ("a", "b", "c"):
        lost = alloc.spot.get(("h100_8x", zone), 0) * H100_RPS * H100.spot_reliability
        assert alloc.capacity_now_rps - lost >= inp.demand_now.rps - 1e-9
    assert len(alloc.spot) >= 2  # spread: spare spot elsewhere is cheaper than on-demand


def test_a_reserved_and_spot_only_fleet_never_plans_on_demand() -> None:
    cfg = msgspec.structs.replace(NO_LIMITS, allow_ondemand=False)
    alloc = optimize_tick(
        only_h100(), TickInput(demand(5), demand(5), Fleet(reserved={"h100_8x": 1})), cfg=cfg
    )
    assert alloc.ondemand == {}
    assert alloc.capacity_next_rps >= demand(5).rps


def test_with_a_single_zone_the_zone_loss_rule_leaves_the_guard_to_the_non_spot_floor() -> None:
    # Nothing to spread over: the rule would forbid spot outright. The non-spot floor says how much of
    # demand must survive a wave there.
    zone_only = msgspec.structs.replace(NO_LIMITS, survive_zone_loss=0.8, min_non_spot_instances=0)
    alloc = optimize_tick(only_h100(), TickInput(demand(5), demand(5)), cfg=zone_only)
    assert alloc.total("ondemand") == 0
    assert alloc.total("spot") > 0
    with_floor = msgspec.structs.replace(zone_only, min_non_spot_fraction=0.4)
    alloc = optimize_tick(only_h100(), TickInput(demand(5), demand(5)), cfg=with_floor)
    assert alloc.total("ondemand") * H100_RPS >= 0.4 * demand(5).rps - 1e-9


@pytest.mark.parametrize("rps", [0.0, 3.0])
def test_demand_without_tokens_keeps_the_minimum_fleet_rather_than_failing(rps: float) -> None:
    # Before any worker reports a token mix, the agent still plans: requests that cost no node time fit
    # on the one non-spot node the floor keeps.
    alloc = optimize_tick(SEED, TickInput(Demand(rps, 0, 0), Demand(rps, 0, 0)))
    assert alloc.status == "optimal"
    assert alloc.total("spot") + alloc.total("ondemand") == 1
    assert alloc.total("ondemand") == 1


def test_new_on_demand_nodes_of_a_type_go_to_its_first_pool_and_the_others_keep_what_they_hold() -> None:
    # On-demand nodes of a type are alike in every pool: the answer is one of the equal-cost ones, chosen
    # so that the solver need not prove the rearrangements no better (seconds at 16 pools otherwise).
    catalog = only_h100(("a", "b", "c"))
    cfg = msgspec.structs.replace(NO_LIMITS, min_non_spot_fraction=1.0)
    fleet = Fleet(ondemand={("h100_8x", "b"): 2, ("h100_8x", "c"): 1})
    grown = optimize_tick(catalog, TickInput(demand(6), demand(6), fleet), cfg=cfg)
    assert grown.ondemand == {("h100_8x", "a"): 3, ("h100_8x", "b"): 2, ("h100_8x", "c"): 1}
    shrunk = optimize_tick(catalog, TickInput(demand(1.5), demand(1.5), fleet), cfg=cfg)
    assert shrunk.total("ondemand") == 2
    assert shrunk.ondemand.get(("h100_8x", "a"), 0) == 0  # releases, and launches nothing
