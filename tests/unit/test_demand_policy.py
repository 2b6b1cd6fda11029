"""The demand policy, read as a specification: with arrivals the agent reads demand as the backtest's
rolling policy does (the ten minutes' peak of minute means, a surge check between ticks); with worker reports
alone it keeps the latest observation; a number in the settings always wins over "auto"."""

from __future__ import annotations

import pytest

from agent.actors.dynamo_source import bins_key
from agent.config import DynamoSettings, OptimizerSettings
from agent.core.demand_bins import DemandBins
from agent.core.demand_policy import (
    ARRIVALS_SAMPLE_S,
    AUTO,
    ROLLING_STEP_S,
    ROLLING_WINDOW_S,
    DemandKind,
    DemandPolicy,
    DemandPolicyConfig,
    demand_kind,
)
from agent.sim.replay import SimConfig

ALL_AUTO = DemandPolicyConfig(AUTO, AUTO, AUTO)
FRONTEND = bins_key("http://127.0.0.1:8000")


def bins_with(*sources: str, at: float = 0.0) -> DemandBins:
    bins = DemandBins(bin_seconds=300.0, close_delay_s=15.0, stale_after_s=60.0)
    for source in sources:
        bins.add(source, at, interval_s=5.0, requests=20, prompt_tokens=20_000, output_tokens=4_000)
    return bins


def test_a_frontend_in_the_bins_means_arrivals_and_workers_alone_mean_completions() -> None:
    assert demand_kind(bins_with(FRONTEND).sources(0.0), "completions") == "arrivals"
    assert demand_kind(bins_with("w0", FRONTEND, "w1").sources(0.0), "completions") == "arrivals"
    assert demand_kind(bins_with("w0", "w1").sources(0.0), "arrivals") == "completions"


@pytest.mark.parametrize("previous", ["arrivals", "completions"])
def test_no_fresh_source_at_all_keeps_the_kind_already_seen(previous: DemandKind) -> None:
    # A frontend's short outage (or a quiet start) is no new kind of demand: a held peak stays held.
    assert demand_kind(bins_with().sources(0.0), previous) == previous


def test_a_frontend_that_fell_silent_no_longer_counts_as_arrivals() -> None:
    bins = bins_with(FRONTEND, at=0.0)
    bins.add("w0", 61.0, interval_s=5.0, requests=10, prompt_tokens=10_000, output_tokens=2_000)
    # As in DemandBins.current: an entry older than stale_after_s is not the demand now.
    assert bins.sources(60.0) == [FRONTEND, "w0"]
    assert bins.sources(61.0) == ["w0"]
    assert demand_kind(bins.sources(61.0), "arrivals") == "completions"


def test_auto_with_arrivals_is_the_backtests_rolling_policy() -> None:
    policy = ALL_AUTO.resolve("arrivals")
    assert policy == DemandPolicy(
        "arrivals", ROLLING_WINDOW_S, ROLLING_STEP_S, ROLLING_STEP_S, sample_s=ARRIVALS_SAMPLE_S
    )
    # The rolling policy holds the ten minutes' peak of its steps' demand (a minute's mean each) and
    # checks for a surge every step.
    step = SimConfig().step_s
    assert (policy.base_window_s, policy.smoothing_s, policy.surge_check_s) == (600.0, step, step)
    # The minute's mean is taken over samples as frequent as a frontend's scrapes.
    assert policy.sample_s == ARRIVALS_SAMPLE_S == DynamoSettings().scrape_interval_seconds


def test_auto_with_worker_reports_alone_keeps_the_latest_observation_and_no_surge_check() -> None:
    assert ALL_AUTO.resolve("completions") == DemandPolicy("completions", 0.0, 0.0, 0.0, sample_s=0.0)


def test_worker_reports_are_sampled_only_at_surge_checks_as_before() -> None:
    policy = DemandPolicyConfig(3600.0, 30.0, 120.0).resolve("completions")
    assert policy.periods() == (30.0, 30.0)  # (sampling, surge check)


def test_arrivals_are_sampled_between_checks_only_when_a_peak_or_a_mean_holds_them() -> None:
    assert DemandPolicyConfig(3600.0, 30.0, 0.0).resolve("arrivals").periods() == (ARRIVALS_SAMPLE_S, 30.0)
    assert DemandPolicyConfig(0.0, 30.0, 0.0).resolve("arrivals").periods() == (30.0, 30.0)


@pytest.mark.parametrize("kind", ["arrivals", "completions"])
def test_a_number_in_the_settings_wins_whatever_the_demand(kind: str) -> None:
    config = DemandPolicyConfig(base_window_s=1800.0, surge_check_s=0.0, smoothing_s=AUTO)
    policy = config.resolve(kind)  # type: ignore[arg-type]
    assert (policy.base_window_s, policy.surge_check_s) == (1800.0, 0.0)
    assert policy.smoothing_s == (ROLLING_STEP_S if kind == "arrivals" else 0.0)


def test_the_timer_runs_at_the_finest_period_either_kind_may_ask_for() -> None:
    assert ALL_AUTO.timer_s() == ARRIVALS_SAMPLE_S
    assert DemandPolicyConfig(0.0, 30.0, 0.0).timer_s() == 30.0
    assert DemandPolicyConfig(0.0, 0.0, 0.0).timer_s() == 0.0  # none: the tick's own timer


def test_the_agents_default_settings_are_auto_for_all_three() -> None:
    assert OptimizerSettings().demand_policy() == ALL_AUTO


@pytest.mark.parametrize(
    ("field", "value"),
    [("base_window_s", -1.0), ("surge_check_s", "sometimes"), ("smoothing_s", float("nan"))],
)
def test_neither_auto_nor_seconds_is_refused_naming_the_field(field: str, value: object) -> None:
    values: dict[str, object] = {"base_window_s": AUTO, "surge_check_s": AUTO, "smoothing_s": AUTO}
    values[field] = value
    with pytest.raises(ValueError, match=f"^{field} must be ≥ 0 seconds or 'auto'"):
        DemandPolicyConfig(**values)  # type: ignore[arg-type]


def test_a_plans_detail_says_which_reading_applied() -> None:
    assert ALL_AUTO.resolve("completions").describe() == "completions: the latest observation"
    assert (
        ALL_AUTO.resolve("arrivals").describe() == "arrivals: peak of 600 s, surge check 60 s, mean of 60 s"
    )
