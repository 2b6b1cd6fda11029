"""The commitment planner: reserved nodes per type from a forecast horizon, by expected total cost."""

from __future__ import annotations

import dataclasses

import pytest

from agent.config import resolve_catalog
from agent.core.capacity import SloConfig, rps_per_instance
from agent.core.catalog import Catalog
from agent.core.commitment import PlanningStep, group_levels, nodes_needed, plan_commitment, seed_rule
from agent.core.comparison import monthly_comparison, planning_steps, scale_to_peak
from agent.core.demand import Demand, DemandForecast
from agent.core.optimizer import OptimizerConfig

SEED = resolve_catalog("seed")
H100 = SEED.type("h100_8x")
H100_ONLY = Catalog(name="h100", types={"h100_8x": H100})
RPS = rps_per_instance(H100, 1500, 500, SloConfig())
RELIABLE = OptimizerConfig(min_non_spot_fraction=1.0)  # no spot: the classic reserved vs on-demand choice


def hours(pattern: list[float], repeat: int = 30) -> list[PlanningStep]:
    """Hourly steps whose demand needs ``pattern[h]`` h100 nodes, repeated ``repeat`` times."""
    out = []
    for _ in range(repeat):
        for nodes in pattern:
            d = Demand(nodes * RPS, 1500, 500)
            out.append(PlanningStep(now=d, next_hour=d, hours=1.0))
    return out


def test_flat_demand_on_reliable_capacity_is_all_reserved() -> None:
    plan = plan_commitment(H100_ONLY, hours([3.0] * 24), cfg=RELIABLE, allow_spot=False)
    assert plan.reserved == {"h100_8x": 3}
    assert plan.avg_instances["ondemand"] == 0
    assert plan.expected_cost == pytest.approx(3 * H100.reserved_hourly * 720)


def test_a_node_is_reserved_only_if_it_runs_more_hours_than_the_price_ratio() -> None:
    # Reserved costs 19.06/32.77 = 58% of on-demand: a second node busy 80% of hours is worth
    # committing to; one busy 30% of hours is not.
    busy = plan_commitment(H100_ONLY, hours([2.0] * 19 + [1.0] * 5), cfg=RELIABLE, allow_spot=False)
    idle = plan_commitment(H100_ONLY, hours([2.0] * 7 + [1.0] * 17), cfg=RELIABLE, allow_spot=False)
    assert busy.reserved == {"h100_8x": 2}
    assert idle.reserved == {"h100_8x": 1}
    assert idle.avg_instances["ondemand"] == pytest.approx(7 / 24)


def test_spot_and_on_demand_are_paid_for_the_forecast_hours_they_run() -> None:
    plan = plan_commitment(H100_ONLY, hours([1.0] * 12 + [3.0] * 12), cfg=RELIABLE, allow_spot=False)
    assert plan.reserved == {"h100_8x": 1} or plan.reserved == {"h100_8x": 3}
    expected = 720 * plan.reserved["h100_8x"] * H100.reserved_hourly + plan.cost_by_tier["ondemand"]
    assert plan.expected_cost == pytest.approx(expected)
    if plan.reserved["h100_8x"] == 1:
        assert plan.cost_by_tier["ondemand"] == pytest.approx(360 * 2 * H100.ondemand_hourly)


def test_cheap_spot_takes_the_peaks_and_reserved_keeps_the_non_spot_share() -> None:
    cfg = OptimizerConfig(min_non_spot_fraction=0.5)
    plan = plan_commitment(H100_ONLY, hours([2.0] * 12 + [4.0] * 12), cfg=cfg)
    assert plan.avg_instances["spot"] > 0
    assert plan.reserved["h100_8x"] >= 1


def test_no_tier_at_all_is_reported_infeasible_rather_than_guessed() -> None:
    plan = plan_commitment(
        H100_ONLY, hours([1.0]), allow_spot=False, allow_ondemand=False, allow_reserved=False
    )
    assert not plan.feasible


def test_levels_group_steps_without_ever_lowering_a_step_s_demand() -> None:
    steps = hours([1.0, 1.05, 2.0, 2.02, 3.0], repeat=1)
    levels = group_levels(steps, levels=10)
    assert len(levels) < len(steps)
    assert sum(level.hours for level in levels) == pytest.approx(5.0)
    for s in steps:
        assert any(level.now.rps >= s.now.rps and level.next_hour.rps >= s.next_hour.rps for level in levels)


def test_the_seed_rule_takes_p25_p75_p99_of_nodes_needed_and_prices_hours_honestly() -> None:
    # 25% of hours need 1 node, 50% need 3, 25% need 4 (whole nodes).
    steps = hours([1.0] * 6 + [3.0] * 12 + [4.0] * 6)
    rule = seed_rule(H100_ONLY, steps)
    assert (rule.reserved, rule.spot, rule.ondemand_max) == (2, 1, 1)
    # Its cost comes from the hours each tier actually runs, not the seed's 60%/10% utilizations.
    assert rule.expected_cost != pytest.approx(rule.seed_formula_monthly_cost)
    assert rule.avg_instances["reserved"] == 2


def test_the_optimized_plan_never_costs_more_than_the_seed_rule_when_that_rule_covers_demand() -> None:
    cfg = OptimizerConfig(min_non_spot_fraction=0.0, max_pool_share=1.0)
    steps = hours([1.0] * 6 + [2.2] * 6 + [3.1] * 6 + [3.8] * 5 + [4.9])
    rule = seed_rule(H100_ONLY, steps)
    plan = plan_commitment(H100_ONLY, steps, cfg=cfg, levels=1000)
    assert rule.shortfall_hours == 0
    assert plan.expected_cost <= rule.expected_cost + 1e-6


def constant(rps: float) -> DemandForecast:
    d = Demand(rps, 1500, 500)
    return DemandForecast(d, d.scaled(1.2), d.scaled(1.5), 0.0, 0.0, 0.0, 1, "cell")


def test_planning_steps_cover_p75_now_and_the_highest_p95_of_the_coming_hour() -> None:
    def forecast(t: float) -> DemandForecast:
        return constant(100.0 if t >= 3000 else 10.0)

    steps = planning_steps(forecast, start=0.0, horizon_hours=2, step_minutes=10)
    assert len(steps) == 12
    assert steps[0].now.rps == pytest.approx(12.0)  # P75 now
    assert steps[0].next_hour.rps == pytest.approx(150.0)  # the P95 of the spike 50 minutes ahead
    assert sum(s.hours for s in steps) == pytest.approx(2.0)


def test_scale_to_peak_makes_the_busiest_step_need_exactly_that_many_nodes() -> None:
    steps = scale_to_peak(SEED, hours([0.3, 0.9, 0.6], repeat=1), 4, SloConfig())
    assert max(nodes_needed(SEED, s, SloConfig()) for s in steps) == pytest.approx(4.0)


def test_the_monthly_table_has_the_seed_s_rows_with_savings_against_all_on_demand() -> None:
    steps = scale_to_peak(SEED, hours([0.4] * 8 + [0.7] * 8 + [1.0] * 8), 4, SloConfig())
    rows = {r.strategy: r for r in monthly_comparison(SEED, steps)}
    assert list(rows) == [
        "all on-demand",
        "all reserved (1yr)",
        "reserved + spot burst",
        "hybrid optimized",
        "seed rule (P25/P75/P99)",
    ]
    assert rows["all on-demand"].monthly_cost == pytest.approx(4 * 32.77 * 730)
    assert rows["all reserved (1yr)"].monthly_cost == pytest.approx(4 * 19.06 * 730)
    assert rows["hybrid optimized"].monthly_cost <= rows["reserved + spot burst"].monthly_cost + 1e-6
    assert rows["hybrid optimized"].savings > rows["all reserved (1yr)"].savings
    assert all(dataclasses.asdict(r) == r.to_dict() for r in rows.values())
