"""The recent peak: the busiest observation of a sliding window."""

import pytest

from agent.core.demand import Demand
from agent.core.recent_peak import RecentMean, RecentPeak, recent_peak


def d(rps: float) -> Demand:
    return Demand(rps, 1000.0, 200.0)


def test_the_peak_is_the_busiest_observation_within_the_window() -> None:
    peak = RecentPeak(window_s=3600)
    for t, rps in ((0, 5.0), (600, 9.0), (1200, 3.0), (1800, 4.0)):
        peak.add(t, d(rps))
    assert peak.peak(1800) == d(9.0)


def test_an_observation_leaves_the_window_after_window_seconds() -> None:
    peak = RecentPeak(window_s=3600)
    peak.add(0, d(9.0))
    peak.add(1800, d(3.0))
    assert peak.peak(3600) == d(9.0)
    assert peak.peak(3601) == d(3.0)
    assert peak.peak(1800 + 3601) is None


def test_a_zero_window_holds_only_the_latest_observation() -> None:
    peak = RecentPeak(window_s=0)
    peak.add(0, d(9.0))
    peak.add(1, d(3.0))
    assert peak.peak(1) == d(3.0)


def test_a_negative_window_is_rejected() -> None:
    with pytest.raises(ValueError, match="window_s"):
        RecentPeak(window_s=-1)


def test_the_recent_mean_averages_the_window_and_keeps_the_latest_token_mix() -> None:
    mean = RecentMean(window_s=120)
    mean.add(0, d(10.0))
    mean.add(60, d(30.0))
    latest = Demand(20.0, 500.0, 100.0)
    assert mean.add(120, latest) == Demand(20.0, 500.0, 100.0)
    assert mean.add(180, d(40.0)).rps == pytest.approx(30.0)  # 30, 20, 40: the first has left


def test_a_zero_window_mean_is_the_latest_observation() -> None:
    mean = RecentMean(window_s=0)
    mean.add(0, d(10.0))
    assert mean.add(1, d(30.0)).rps == 30.0


def test_recent_peak_is_the_maximum_of_the_last_window_steps() -> None:
    assert list(recent_peak([1.0, 5.0, 2.0, 3.0, 1.0], 2)) == [1.0, 5.0, 5.0, 3.0, 3.0]
    assert list(recent_peak([1.0, 5.0, 2.0], 1)) == [1.0, 5.0, 2.0]
