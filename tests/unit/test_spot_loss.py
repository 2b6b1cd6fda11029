"""Reclaim waves as the market showed them, and the non-spot floor they call for (agent.core.spot_loss)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.spot_loss import ReclaimWaves, Wave, non_spot_floor

MINUTE = 60.0
HOUR = 3600.0
FULL = {"a": 16, "b": 16, "c": 16, "d": 16}


def waves_seen(*observations: tuple[float, dict[str, int]], window_s: float = 5 * MINUTE) -> ReclaimWaves:
    waves = ReclaimWaves(window_s=window_s)
    for t, available in observations:
        waves.observe(t, available)
    return waves


# -- grouping drops into waves ---------------------------------------------------------------------------


def test_two_zones_dropping_two_minutes_apart_are_one_wave_losing_two_zones() -> None:
    waves = waves_seen(
        (0.0, FULL),
        (2 * MINUTE, {**FULL, "a": 0}),
        (4 * MINUTE, {**FULL, "a": 0, "b": 0}),
        (20 * MINUTE, {**FULL, "a": 0, "b": 0}),
    )
    assert list(waves.waves) == [Wave(t=2 * MINUTE, lost=2.0, up=4)]


def test_two_zones_dropping_ten_minutes_apart_are_two_waves() -> None:
    waves = waves_seen(
        (0.0, FULL),
        (2 * MINUTE, {**FULL, "a": 0}),
        (12 * MINUTE, {**FULL, "a": 0, "b": 0}),
        (30 * MINUTE, {**FULL, "a": 0, "b": 0}),
    )
    # The second wave began with zone a already empty: three zones were up.
    assert list(waves.waves) == [Wave(t=2 * MINUTE, lost=1.0, up=4), Wave(t=12 * MINUTE, lost=1.0, up=3)]


def test_a_wave_stays_open_until_its_window_has_passed() -> None:
    waves = waves_seen((0.0, FULL), (MINUTE, {**FULL, "a": 0}), (6 * MINUTE, {**FULL, "a": 0}))
    assert not waves.waves
    waves.observe(6 * MINUTE + 1.0, {**FULL, "a": 0})
    assert list(waves.waves) == [Wave(t=MINUTE, lost=1.0, up=4)]


def test_a_partial_drop_counts_by_the_share_of_the_zone_that_went() -> None:
    waves = waves_seen((0.0, FULL), (MINUTE, {**FULL, "a": 4}), (20 * MINUTE, {**FULL, "a": 4}))
    assert list(waves.waves) == [Wave(t=MINUTE, lost=0.75, up=4)]


def test_a_zone_falling_in_steps_within_a_wave_counts_the_share_it_lost_overall() -> None:
    waves = waves_seen(
        (0.0, FULL),
        (MINUTE, {**FULL, "a": 8}),
        (2 * MINUTE, {**FULL, "a": 4}),
        (20 * MINUTE, {**FULL, "a": 4}),
    )
    assert [w.lost for w in waves.waves] == [pytest.approx(0.75)]


def test_up_counts_only_the_zones_with_spot_before_the_wave() -> None:
    waves = waves_seen(
        (0.0, {"a": 16, "b": 0, "c": 3}),
        (MINUTE, {"a": 0, "b": 0, "c": 3}),
        (20 * MINUTE, {"a": 0, "b": 0, "c": 3}),
    )
    assert list(waves.waves) == [Wave(t=MINUTE, lost=1.0, up=2)]
    assert waves.shares() == [0.5]


def test_a_rise_is_no_wave() -> None:
    waves = waves_seen((0.0, {"a": 4}), (MINUTE, {"a": 16}), (20 * MINUTE, {"a": 16}))
    assert not waves.waves
    assert waves.shares() == []


def test_a_zone_left_out_of_an_observation_is_not_a_drop() -> None:
    waves = waves_seen((0.0, FULL), (MINUTE, {"a": 16}), (20 * MINUTE, {"b": 16}))
    assert not waves.waves


# -- shares ----------------------------------------------------------------------------------------------


def test_shares_spread_each_waves_loss_over_the_zones_up() -> None:
    waves = waves_seen(
        (0.0, FULL),
        (MINUTE, {**FULL, "a": 0, "b": 8}),
        (20 * MINUTE, {**FULL, "a": 0, "b": 8}),
    )
    assert waves.shares() == [pytest.approx(1.5 / 4)]


def test_shares_include_the_open_wave() -> None:
    waves = waves_seen((0.0, FULL), (MINUTE, {**FULL, "a": 0}))
    assert not waves.waves
    assert waves.shares() == [0.25]


def test_shares_beyond_one_zone_leave_what_the_zone_rule_survives() -> None:
    waves = waves_seen(
        (0.0, FULL),
        (MINUTE, {**FULL, "a": 0}),  # one zone: survived
        (20 * MINUTE, {**FULL, "a": 0}),
        (21 * MINUTE, {"a": 0, "b": 0, "c": 0, "d": 16}),  # two zones of three up
        (40 * MINUTE, {"a": 0, "b": 0, "c": 0, "d": 16}),
    )
    assert waves.shares() == [0.25, pytest.approx(2 / 3)]
    assert waves.shares(beyond_zones=1) == [0.0, pytest.approx(1 / 3)]


# -- notices ---------------------------------------------------------------------------------------------


def test_a_notice_is_a_wave_whatever_the_zone_still_advertises() -> None:
    waves = waves_seen((0.0, FULL))
    waves.reclaimed(MINUTE, "a", 0.25)
    assert waves.shares() == [0.25 / 4]
    waves.observe(20 * MINUTE, FULL)
    assert list(waves.waves) == [Wave(t=MINUTE, lost=0.25, up=4)]


def test_a_notice_and_a_drop_in_another_zone_within_the_window_are_one_wave() -> None:
    waves = waves_seen((0.0, FULL))
    waves.reclaimed(MINUTE, "a")
    waves.observe(3 * MINUTE, {**FULL, "b": 0})
    waves.observe(20 * MINUTE, {**FULL, "b": 0})
    assert list(waves.waves) == [Wave(t=MINUTE, lost=2.0, up=4)]


def test_a_notice_before_any_observation_counts_one_zone_up() -> None:
    waves = ReclaimWaves(window_s=5 * MINUTE)
    waves.reclaimed(0.0, "a", 2.0)  # a share above 1 is the whole zone
    assert waves.shares() == [1.0]


# -- history ---------------------------------------------------------------------------------------------


def test_waves_older_than_history_s_are_forgotten() -> None:
    waves = ReclaimWaves(window_s=5 * MINUTE, history_s=HOUR)
    waves.observe(0.0, FULL)
    waves.observe(MINUTE, {**FULL, "a": 0})
    waves.observe(HOUR, {**FULL, "a": 0})
    assert len(waves.waves) == 1
    waves.observe(HOUR + MINUTE + 1.0, {**FULL, "a": 0})
    assert not waves.waves
    assert waves.shares() == []


def test_span_is_how_long_the_market_was_watched_up_to_history_s() -> None:
    waves = ReclaimWaves(window_s=5 * MINUTE, history_s=HOUR)
    assert waves.span_s() == 0.0
    waves.observe(100.0, FULL)
    assert waves.span_s() == 0.0
    waves.observe(100.0 + 30 * MINUTE, FULL)
    assert waves.span_s() == 30 * MINUTE
    waves.reclaimed(100.0 + 2 * HOUR, "a")
    assert waves.span_s() == HOUR


# -- the non-spot floor ----------------------------------------------------------------------------------


def unserved(shares: list[float], span_s: float, gap_s: float, slack: float, f: float) -> float:
    """The docstring's formula: each wave leaves max(0, q·(1 − f)·(1 + slack) − slack) unserved for gap_s."""
    return gap_s / span_s * sum(max(0.0, min(1.0, q * (1 - f) * (1 + slack) - slack)) for q in shares)


BUDGET = 0.0005
WEEK = 7 * 86400.0


def floor(shares: list[float], *, gap_s: float = 240.0, slack: float = 0.1, span_s: float = WEEK) -> float:
    return non_spot_floor(shares, span_s, gap_s=gap_s, slack=slack, budget=BUDGET)


@pytest.mark.parametrize(
    ("shares", "span_s", "gap_s"),
    [([], WEEK, 240.0), ([0.5], WEEK, 0.0), ([0.5], WEEK, -60.0), ([0.5], 0.0, 240.0)],
    ids=["no waves", "no gap", "a notice longer than a boot", "no span"],
)
def test_floor_is_zero_without_waves_gap_or_span(shares: list[float], span_s: float, gap_s: float) -> None:
    assert non_spot_floor(shares, span_s, gap_s=gap_s, slack=0.0, budget=BUDGET) == 0.0


def test_floor_is_zero_when_the_slack_absorbs_every_wave() -> None:
    assert floor([0.2, 0.3], slack=0.5) == 0.0


def test_floor_grows_with_more_waves_a_longer_gap_and_a_wider_wave() -> None:
    base = floor([0.5] * 3)
    assert 0.0 < base < 1.0
    assert floor([0.5] * 6) > base
    assert floor([0.5] * 3, gap_s=480.0) > base
    assert floor([0.5, 0.5, 0.9]) > base


def test_floor_shrinks_with_more_slack() -> None:
    assert floor([0.5] * 3, slack=0.3) < floor([0.5] * 3, slack=0.1)


def test_floor_is_one_when_only_an_all_non_spot_fleet_meets_the_budget() -> None:
    assert floor([1.0] * 1000, gap_s=HOUR, slack=0.0) == 1.0


@pytest.mark.parametrize("budget", [0.0, 1.0, -0.1, math.nan])
def test_budget_outside_zero_to_one_is_refused(budget: float) -> None:
    with pytest.raises(ValueError, match="budget"):
        non_spot_floor([0.5], WEEK, gap_s=240.0, slack=0.0, budget=budget)
    with pytest.raises(ValueError, match="budget"):
        non_spot_floor([], WEEK, gap_s=240.0, slack=0.0, budget=budget)


wave_shares = st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30)
gaps = st.floats(1.0, 1800.0)
spans = st.floats(HOUR, 4 * WEEK)
slacks = st.floats(0.0, 2.0)
budgets = st.floats(1e-5, 0.2)


@settings(max_examples=200, deadline=None)
@given(wave_shares, spans, gaps, slacks, budgets)
def test_floor_is_the_smallest_step_that_meets_the_budget(
    shares: list[float], span_s: float, gap_s: float, slack: float, budget: float
) -> None:
    f = non_spot_floor(shares, span_s, gap_s=gap_s, slack=slack, budget=budget)
    assert 0.0 <= f <= 1.0
    assert unserved(shares, span_s, gap_s, slack, f) <= budget
    if f > 0:
        one_step_less = round(f - 0.01, 10)
        assert unserved(shares, span_s, gap_s, slack, one_step_less) > budget


@settings(max_examples=200, deadline=None)
@given(wave_shares, spans, gaps, slacks, slacks, budgets)
def test_floor_never_rises_with_more_slack(
    shares: list[float], span_s: float, gap_s: float, slack: float, more: float, budget: float
) -> None:
    def f(s: float) -> float:
        return non_spot_floor(shares, span_s, gap_s=gap_s, slack=s, budget=budget)

    assert f(slack + more) <= f(slack)


@settings(max_examples=200, deadline=None)
@given(wave_shares, st.floats(0.0, 1.0), spans, gaps, gaps, slacks, budgets)
def test_floor_never_falls_with_another_wave_a_longer_gap_or_a_wider_wave(
    shares: list[float], extra: float, span_s: float, gap_s: float, longer: float, slack: float, budget: float
) -> None:
    def f(qs: list[float], gap: float) -> float:
        return non_spot_floor(qs, span_s, gap_s=gap, slack=slack, budget=budget)

    now = f(shares, gap_s)
    assert f([*shares, extra], gap_s) >= now
    assert f(shares, gap_s + longer) >= now
    widest = max(range(len(shares)), key=shares.__getitem__)
    wider = [*shares[:widest], min(1.0, shares[widest] + extra), *shares[widest + 1 :]]
    assert f(wider, gap_s) >= now
