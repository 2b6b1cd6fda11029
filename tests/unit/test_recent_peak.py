"""The recent peak: the busiest observation of a sliding window."""

import pytest

from agent.core.demand import Demand
from agent.core.recent_peak import RecentPeak


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
