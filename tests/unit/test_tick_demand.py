"""The demand a live tick covers: the profile's P75 now and its P95 over the coming hour, raised by what is
observed right now, and what happens with no history (a cold start) or no observation."""

from __future__ import annotations

import pytest

from agent.core.demand import Demand
from agent.core.profiler import DemandProfiler
from agent.core.tick_demand import NO_DEMAND, TickDemand, tick_demand

MINUTE = 60.0
HOUR = 3600.0
WEEK = 7 * 24 * HOUR
MONDAY = 1704067200.0  # 2024-01-01T00:00Z, a Monday
WEEKS = 4
# Four Mondays at 1, 2, 3 and 4 times a bin's base rate: P75 is 3.25 times the base, P95 3.85 times.
P75, P95 = 3.25, 3.85
PROMPT, OUTPUT = 100.0, 10.0

# Quarter-hour bins of a Monday morning (minutes after midnight → base rate). 11:15 is the busiest, but
# it lies beyond the hour that follows 10:05.
MORNING = {10 * 60: 10.0, 10 * 60 + 15: 12.0, 10 * 60 + 30: 14.0, 10 * 60 + 45: 20.0, 11 * 60: 16.0}
MORNING[11 * 60 + 15] = 100.0
# An evening: busy now, quieter in every bin of the hour after.
EVENING = {20 * 60: 50.0, 20 * 60 + 15: 30.0, 20 * 60 + 30: 20.0, 20 * 60 + 45: 10.0, 21 * 60: 5.0}

NOW = MONDAY + WEEKS * WEEK + 10 * HOUR + 5 * MINUTE  # Monday 10:05, the week after the history


def profile(
    bins: dict[int, float], prompt_tokens: float = PROMPT, output_tokens: float = OUTPUT
) -> DemandProfiler:
    """Quarter-hour bins, each cell one bin of one weekday, plain percentiles of the weeks recorded."""
    profiler = DemandProfiler(bin_minutes=15, neighbour_bins=0, residual_spread=False)
    for week in range(WEEKS):
        for minute, base in bins.items():
            profiler.record(
                MONDAY + week * WEEK + minute * MINUTE, base * (week + 1), prompt_tokens, output_tokens
            )
    return profiler


def figures(demand: Demand) -> tuple[float, float, float]:
    return demand.rps, demand.prompt_tokens, demand.output_tokens


def approx_demand(rps: float, prompt_tokens: float = PROMPT, output_tokens: float = OUTPUT) -> object:
    return pytest.approx((rps, prompt_tokens, output_tokens))


def test_a_cold_start_with_nothing_observed_covers_no_demand() -> None:
    assert tick_demand(DemandProfiler(), NOW, None) == TickDemand(NO_DEMAND, NO_DEMAND, "none")
    assert Demand(0.0, 0.0, 0.0) == NO_DEMAND


def test_without_a_profile_the_observation_is_the_demand_now_and_for_the_next_hour() -> None:
    observed = Demand(5.0, 300.0, 30.0)

    assert tick_demand(DemandProfiler(), NOW, observed) == TickDemand(observed, observed, "observed")


def test_with_a_profile_only_now_is_its_p75_at_this_time() -> None:
    demand = tick_demand(profile(MORNING), NOW, None)

    assert demand.source == "profile"
    assert figures(demand.now) == approx_demand(10.0 * P75)


def test_the_next_hour_is_the_largest_p95_over_the_coming_hours_bins() -> None:
    demand = tick_demand(profile(MORNING), NOW, None)

    # The bins of 10:15 to 11:00 are ahead; 10:45 has the largest P95. 11:15 is more than an hour away.
    assert figures(demand.next_hour) == approx_demand(20.0 * P95)


def test_a_shorter_lookahead_looks_at_fewer_bins() -> None:
    demand = tick_demand(profile(MORNING), NOW, None, lookahead_s=30 * MINUTE)

    assert figures(demand.next_hour) == approx_demand(14.0 * P95)  # 10:15 and 10:30 only


def test_the_next_hour_is_never_below_now() -> None:
    evening = MONDAY + WEEKS * WEEK + 20 * HOUR + 5 * MINUTE

    demand = tick_demand(profile(EVENING), evening, None)

    # Every bin ahead is quieter than 20:00, so the tick keeps what it needs now rather than scaling in early.
    assert figures(demand.now) == approx_demand(50.0 * P75)
    assert demand.next_hour == demand.now


def test_an_observation_above_the_profile_wins_now_and_for_the_next_hour() -> None:
    observed = Demand(500.0, 900.0, 90.0)  # an unusual day

    demand = tick_demand(profile(MORNING), NOW, observed)

    assert demand == TickDemand(observed, observed, "profile+observed")


def test_an_observation_below_the_profile_leaves_the_profile_in_charge() -> None:
    observed = Demand(1.0, 900.0, 90.0)

    demand = tick_demand(profile(MORNING), NOW, observed)

    assert demand.source == "profile+observed"
    assert figures(demand.now) == approx_demand(10.0 * P75)
    assert figures(demand.next_hour) == approx_demand(20.0 * P95)


def test_an_observation_between_now_and_the_next_hour_raises_only_now() -> None:
    observed = Demand(60.0, 900.0, 90.0)  # above 10:00's P75 (32.5), below 10:45's P95 (77)

    demand = tick_demand(profile(MORNING), NOW, observed)

    assert demand.now == observed
    assert figures(demand.next_hour) == approx_demand(20.0 * P95)


def test_an_observation_without_a_token_mix_borrows_the_profiles() -> None:
    # A rate without token counts would size no capacity at all: the profile's mix stands in for it.
    observed = Demand(500.0, 0.0, 0.0)

    demand = tick_demand(profile(MORNING), NOW, observed)

    assert figures(demand.now) == approx_demand(500.0)
    assert figures(demand.next_hour) == approx_demand(500.0)


def test_a_profile_without_a_token_mix_borrows_the_observations() -> None:
    observed = Demand(1.0, 900.0, 90.0)

    demand = tick_demand(profile(MORNING, prompt_tokens=0.0, output_tokens=0.0), NOW, observed)

    assert figures(demand.now) == approx_demand(10.0 * P75, 900.0, 90.0)
    assert figures(demand.next_hour) == approx_demand(20.0 * P95, 900.0, 90.0)
