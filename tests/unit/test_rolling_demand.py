"""The rolling policy's demand rule (agent.core.rolling_demand): base, outage hold, headroom, surge."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.demand import Demand
from agent.core.profiler import DemandProfiler
from agent.core.rolling_demand import Cover, RollingDemand, expected_over

HOUR = 3600.0
MONDAY = 1704067200.0  # 2024-01-01T00:00Z, a Monday
NOW = Demand(1.0, 100.0, 100.0)
"""The fallback when nothing was observed: never what these tests expect a base to be."""


def rate(rps: float) -> Demand:
    return Demand(rps, 100.0, 100.0)


def fed(steps: list[float], **kwargs: Any) -> RollingDemand:
    rolling = RollingDemand(**kwargs)
    for rps in steps:
        rolling.observe(rate(rps))
    return rolling


def ramps(days: float = 1.0) -> list[float]:
    """A rate climbing steadily for two hours, then falling back: within every lead time it passes the
    last hour's peak, which a headroom of 1 would leave unserved."""
    return [10.0 + (i % 120) for i in range(int(days * 1440))]


def tokens_per_s(d: Demand) -> float:
    return d.tokens_per_s


# -- the base ------------------------------------------------------------------------------------------


def test_base_is_the_busiest_step_of_the_window() -> None:
    cover = fed([5.0, 40.0, 12.0, 7.0]).cover(0.0, NOW)
    assert cover.base == rate(40.0)


def test_base_is_the_fallback_before_anything_is_observed() -> None:
    assert RollingDemand().cover(0.0, NOW).base == NOW


def test_busiest_step_is_the_one_needing_most_nodes_not_the_highest_rate() -> None:
    rolling = RollingDemand(nodes=tokens_per_s)
    long_requests = Demand(5.0, 2000.0, 1000.0)  # 15 000 tokens/s
    short_requests = Demand(50.0, 100.0, 100.0)  # 10 000 tokens/s at ten times the rate
    rolling.observe(long_requests)
    rolling.observe(short_requests)
    assert rolling.cover(0.0, NOW).base == long_requests


def test_window_forgets_steps_older_than_base_window_steps() -> None:
    rolling = fed([90.0, 20.0, 30.0, 25.0], base_window_steps=3)
    assert rolling.cover(0.0, NOW).base == rate(30.0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 1e4), min_size=1, max_size=40), st.integers(1, 10))
def test_base_is_the_peak_of_the_last_window_steps(steps: list[float], window: int) -> None:
    rolling = fed(steps, base_window_steps=window)
    assert rolling.cover(0.0, NOW).base.rps == max(steps[-window:])


# -- headroom --------------------------------------------------------------------------------------------


def test_headroom_is_one_on_flat_history() -> None:
    cover = fed([100.0] * 600).cover(0.0, NOW)
    assert cover.headroom == 1.0
    assert cover.demand == cover.base


def test_headroom_exceeds_one_when_history_ramps_within_the_lead_time() -> None:
    assert fed(ramps()).cover(0.0, NOW).headroom > 1.0


def test_cover_is_base_times_headroom() -> None:
    cover = fed(ramps()).cover(0.0, NOW)
    assert cover.demand.rps == pytest.approx(cover.base.rps * cover.headroom)
    assert (cover.demand.prompt_tokens, cover.demand.output_tokens) == (
        cover.base.prompt_tokens,
        cover.base.output_tokens,
    )


def test_headroom_is_refitted_only_once_refit_s_has_passed() -> None:
    rolling = fed([100.0] * 600, refit_s=HOUR)
    assert rolling.cover(0.0, NOW).headroom == 1.0
    for rps in ramps():
        rolling.observe(rate(rps))
    assert rolling.cover(HOUR - 1.0, NOW).headroom == 1.0
    assert rolling.cover(HOUR, NOW).headroom > 1.0


# -- surge -----------------------------------------------------------------------------------------------


def test_nothing_has_surged_before_any_cover() -> None:
    assert not RollingDemand().surged(rate(1e9))


def test_a_step_above_the_covered_base_has_surged() -> None:
    rolling = fed([40.0])
    rolling.cover(0.0, NOW)
    assert rolling.surged(rate(40.1))
    assert not rolling.surged(rate(40.0))
    assert not rolling.surged(rate(10.0))


def test_surge_compares_with_the_base_held_through_an_outage() -> None:
    rolling = fed([1.0])
    rolling.cover(0.0, NOW, expected=rate(100.0))
    assert not rolling.surged(rate(50.0))
    assert rolling.surged(rate(101.0))


# -- outage ----------------------------------------------------------------------------------------------


def test_base_far_below_the_expectation_is_an_outage_held_at_the_expectation() -> None:
    expected = rate(100.0)
    cover = fed([5.0]).cover(0.0, NOW, expected=expected)
    assert cover == Cover(demand=expected, base=expected, headroom=1.0, outage=True)


def test_base_at_the_outage_share_of_the_expectation_is_no_outage() -> None:
    cover = fed([10.0]).cover(0.0, NOW, expected=rate(100.0))
    assert not cover.outage
    assert cover.base == rate(10.0)


def test_outage_share_zero_turns_the_outage_rule_off() -> None:
    cover = fed([1.0], outage_share=0.0).cover(0.0, NOW, expected=rate(100.0))
    assert not cover.outage
    assert cover.base == rate(1.0)


def test_without_an_expectation_the_observation_stands() -> None:
    cover = fed([1.0]).cover(0.0, NOW, expected=None)
    assert not cover.outage
    assert cover.base == rate(1.0)


def test_an_outage_covers_the_expectation_times_the_headroom() -> None:
    rolling = fed(ramps() + [0.0] * 60)
    cover = rolling.cover(0.0, NOW, expected=rate(100.0))
    assert cover.outage
    assert cover.headroom > 1.0
    assert cover.demand.rps == pytest.approx(100.0 * cover.headroom)


# -- history and restore ---------------------------------------------------------------------------------


def test_history_restored_into_a_new_instance_gives_the_same_cover() -> None:
    before = fed([*ramps(), 55.0, 80.0, 3.0])
    observed, recent = before.history()
    after = RollingDemand()
    after.restore(observed, recent)
    assert after.cover(7.0, NOW, expected=rate(60.0)) == before.cover(7.0, NOW, expected=rate(60.0))


def test_restore_refits_the_headroom_at_the_next_cover() -> None:
    rolling = fed([100.0] * 600)
    assert rolling.cover(0.0, NOW).headroom == 1.0
    rolling.restore(ramps(), [rate(50.0)])
    assert rolling.cover(1.0, NOW).headroom > 1.0


def test_history_is_bounded_by_history_steps_and_the_base_window() -> None:
    rolling = fed([float(i) for i in range(50)], history_steps=20, base_window_steps=5)
    observed, recent = rolling.history()
    assert observed == [float(i) for i in range(30, 50)]
    assert recent == [rate(float(i)) for i in range(45, 50)]


def test_restore_keeps_only_the_newest_steps_within_the_bounds() -> None:
    rolling = RollingDemand(history_steps=20, base_window_steps=5)
    rolling.restore([float(i) for i in range(50)], [rate(float(i)) for i in range(50)])
    observed, recent = rolling.history()
    assert observed == [float(i) for i in range(30, 50)]
    assert recent == [rate(float(i)) for i in range(45, 50)]


# -- configuration -----------------------------------------------------------------------------------


def test_lead_s_is_lead_steps_of_step_s() -> None:
    assert RollingDemand(step_s=30.0, lead_steps=8).lead_s == 240.0


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"step_s": 0.0}, "step_s"),
        ({"step_s": math.nan}, "step_s"),
        ({"lead_steps": 0, "boot_steps": 1}, "lead_steps"),
        ({"base_window_steps": 0}, "base_window_steps"),
        ({"history_steps": 0}, "history_steps"),
        ({"boot_steps": 0}, "boot_steps"),
        ({"boot_steps": 12, "lead_steps": 11}, "boot_steps"),
        ({"headroom_budget": 0.0}, "headroom_budget"),
        ({"headroom_budget": 1.0}, "headroom_budget"),
        ({"outage_share": -0.1}, "outage_share"),
        ({"outage_share": 1.0}, "outage_share"),
    ],
)
def test_constructor_refuses_bad_values_naming_them(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        RollingDemand(**kwargs)


# -- the profile's expectation ------------------------------------------------------------------------


def hourly_profile(rates: dict[int, float]) -> DemandProfiler:
    """One Monday: each hour's rate as given, others at 1 rps; hour cells, no neighbours or spread."""
    profiler = DemandProfiler(bin_minutes=60, neighbour_bins=0, residual_spread=False)
    for hour in range(24):
        profiler.record(MONDAY + hour * HOUR, rates.get(hour, 1.0), 100.0, 100.0)
    return profiler


def test_expected_over_is_none_for_an_empty_profile() -> None:
    assert expected_over(DemandProfiler(), MONDAY, HOUR) is None


def test_expected_over_is_the_busiest_p50_over_the_span() -> None:
    profiler = hourly_profile({10: 30.0, 11: 80.0, 12: 50.0})
    week = 7 * 86400.0
    assert expected_over(profiler, MONDAY + week + 10 * HOUR, 2 * HOUR) == rate(80.0)
    assert expected_over(profiler, MONDAY + week + 12 * HOUR, HOUR / 2) == rate(50.0)


def test_expected_over_includes_the_end_of_the_span() -> None:
    profiler = hourly_profile({11: 80.0})
    week = 7 * 86400.0
    # 10:50 plus 11 minutes ends at 11:01: one bin step from the start would not reach it.
    start = MONDAY + week + 10 * HOUR + 50 * 60.0
    assert expected_over(profiler, start, 11 * 60.0) == rate(80.0)
    assert expected_over(profiler, start, 9 * 60.0) == rate(1.0)


def test_a_zones_loss_need_leave_only_the_measured_base_served_not_the_headroom_on_top() -> None:
    cover = Cover(Demand(13.0, 100.0, 10.0), Demand(10.0, 100.0, 10.0), 1.3, outage=False)
    assert cover.zone_loss_share(1.0) == pytest.approx(1.0 / 1.3)
    assert cover.zone_loss_share(0.0) == 0.0  # the rule stays off
    assert Cover(Demand(8.0, 100.0, 10.0), Demand(10.0, 100.0, 10.0), 0.8, outage=False).zone_loss_share(
        1.0
    ) == pytest.approx(1.0)  # never above the whole demand
