"""The demand profiler: local-time cells, merging, bounded history, percentiles, fallbacks, persistence."""

from __future__ import annotations

import math
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.profiler import DemandProfiler, ProfilerEmptyError

NEW_YORK = "America/New_York"
HOUR = 3600.0
DAY = 86400.0
WEEK = 7 * DAY
MONDAY = 1704067200.0  # 2024-01-01T00:00Z, a Monday


def at(year: int, month: int, day: int, hour: int, minute: int = 0, tz: str = "UTC") -> float:
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(tz)).timestamp()


def hourly(**kwargs: object) -> DemandProfiler:
    """Hour bins, no neighbours, plain percentiles: each cell is exactly one hour of one weekday."""
    options: dict[str, object] = {"bin_minutes": 60, "neighbour_bins": 0, "residual_spread": False}
    options.update(kwargs)
    return DemandProfiler(**options)  # type: ignore[arg-type]


# -- local time ---------------------------------------------------------------------------------------


def test_cells_follow_local_wall_clock_across_dst_start() -> None:
    profiler = hourly(timezone=NEW_YORK)
    # Sunday 09:00 in New York is 14:00 UTC in winter and 13:00 UTC after the change of 2024-03-10.
    profiler.record(at(2024, 3, 3, 9, 30, NEW_YORK), 10.0, 100.0, 10.0)
    profiler.record(at(2024, 3, 10, 9, 30, NEW_YORK), 20.0, 100.0, 10.0)

    forecast = profiler.predict(at(2024, 3, 17, 9, 30, NEW_YORK))

    assert forecast.source == "cell"
    assert forecast.samples == 2
    assert forecast.p50.rps == pytest.approx(15.0)
    # 14:30 UTC on 2024-03-17 is 10:30 in New York: a cell nothing was recorded in.
    assert profiler.predict(at(2024, 3, 17, 14, 30)).source == "global"


def test_day_of_week_is_the_local_day() -> None:
    profiler = hourly(timezone=NEW_YORK)
    # 03:00 UTC on Tuesday 2024-01-02 is 22:00 on Monday in New York.
    profiler.record(at(2024, 1, 2, 3), 5.0, 100.0, 10.0)

    assert profiler.predict(at(2024, 1, 8, 22, tz=NEW_YORK)).source == "cell"  # a Monday
    assert profiler.predict(at(2024, 1, 9, 22, tz=NEW_YORK)).source == "nearby"  # a Tuesday


def test_repeated_local_hour_at_dst_end_is_one_bin() -> None:
    profiler = hourly(timezone=NEW_YORK)
    # 01:30 happens twice in New York on 2024-11-03: at 05:30 UTC (EDT) and at 06:30 UTC (EST).
    profiler.record(at(2024, 11, 3, 5, 30), 10.0, 100.0, 10.0)
    profiler.record(at(2024, 11, 3, 6, 30), 30.0, 100.0, 10.0)

    assert profiler.sample_count == 1
    assert profiler.predict(at(2024, 11, 3, 6, 30)).p50.rps == pytest.approx(20.0)


# -- merging and token mix ----------------------------------------------------------------------------


def test_records_in_one_bin_merge_into_one_sample() -> None:
    profiler = hourly()
    profiler.record(MONDAY + 10 * HOUR, 10.0, 100.0, 10.0)
    profiler.record(MONDAY + 10 * HOUR + 600, 30.0, 200.0, 20.0)

    forecast = profiler.predict(MONDAY + WEEK + 10 * HOUR)

    assert profiler.sample_count == 1
    assert forecast.samples == 1
    assert forecast.p50.rps == pytest.approx(20.0)  # the mean rate over the bin
    # Request-weighted: 10 rps at 100 tokens and 30 rps at 200 tokens.
    assert forecast.p50.prompt_tokens == pytest.approx((10 * 100 + 30 * 200) / 40)
    assert forecast.p50.output_tokens == pytest.approx((10 * 10 + 30 * 20) / 40)


def test_token_mix_is_weighted_by_each_samples_requests() -> None:
    profiler = hourly()
    profiler.record(MONDAY + 10 * HOUR, 1.0, 1000.0, 100.0)
    profiler.record(MONDAY + WEEK + 10 * HOUR, 3.0, 200.0, 20.0)

    forecast = profiler.predict(MONDAY + 2 * WEEK + 10 * HOUR)

    assert forecast.p95.prompt_tokens == pytest.approx((1 * 1000 + 3 * 200) / 4)
    assert forecast.p95.output_tokens == pytest.approx((1 * 100 + 3 * 20) / 4)


# -- bounded history ----------------------------------------------------------------------------------


def test_history_is_bounded_by_history_days() -> None:
    profiler = hourly(history_days=2)
    for hour in range(10 * 2 * 24):
        profiler.record(MONDAY + hour * HOUR, float(hour), 100.0, 10.0)
        profiler.record(MONDAY + hour * HOUR + 60, float(hour), 100.0, 10.0)

    assert profiler.sample_count == 2 * 24
    # Only the last two days remain: the oldest rate left is that of hour 432.
    assert profiler.predict(MONDAY).p50.rps >= 10 * 2 * 24 - 2 * 24


def test_old_samples_leave_the_forecast() -> None:
    profiler = hourly(history_days=7)
    profiler.record(MONDAY + 10 * HOUR, 1000.0, 100.0, 10.0)
    profiler.record(MONDAY + WEEK + 10 * HOUR, 5.0, 100.0, 10.0)
    assert profiler.predict(MONDAY + 2 * WEEK + 10 * HOUR).samples == 1

    # A record older than the window is ignored rather than stored.
    profiler.record(MONDAY + 10 * HOUR, 1000.0, 100.0, 10.0)
    assert profiler.sample_count == 1
    assert profiler.predict(MONDAY + 2 * WEEK + 10 * HOUR).p95.rps == pytest.approx(5.0)


def test_out_of_order_records_within_the_window_are_kept() -> None:
    profiler = hourly()
    profiler.record(MONDAY + 2 * DAY, 1.0, 100.0, 10.0)
    profiler.record(MONDAY, 3.0, 100.0, 10.0)

    assert profiler.sample_count == 2
    assert profiler.newest_time == MONDAY + 2 * DAY
    assert profiler.predict(MONDAY + WEEK).p50.rps == pytest.approx(3.0)


def test_newest_time_is_none_before_any_record() -> None:
    assert DemandProfiler().newest_time is None
    assert DemandProfiler().sample_count == 0


def test_a_long_gap_clears_the_history() -> None:
    profiler = hourly(history_days=1)
    for hour in range(24):
        profiler.record(MONDAY + hour * HOUR, 1.0, 100.0, 10.0)
    profiler.record(MONDAY + 400 * DAY, 9.0, 100.0, 10.0)

    assert profiler.sample_count == 1


# -- percentiles and fallbacks ------------------------------------------------------------------------


def test_percentiles_of_a_cell_are_numpys_linear_percentiles() -> None:
    profiler = hourly(history_days=35)
    rates = [5.0, 1.0, 4.0, 2.0, 3.0]
    for week, rps in enumerate(rates):
        profiler.record(MONDAY + week * WEEK + 10 * HOUR, rps, 100.0, 50.0)

    forecast = profiler.predict(MONDAY + 5 * WEEK + 10 * HOUR + 1800)

    p50, p75, p95 = np.percentile(rates, [50, 75, 95])
    assert (forecast.p50.rps, forecast.p75.rps, forecast.p95.rps) == pytest.approx((p50, p75, p95))
    assert (forecast.tps_p50, forecast.tps_p75, forecast.tps_p95) == pytest.approx(
        (p50 * 150, p75 * 150, p95 * 150)
    )
    assert forecast.samples == 5
    assert forecast.source == "cell"


def test_neighbour_bins_wrap_across_midnight() -> None:
    profiler = hourly(neighbour_bins=1)
    profiler.record(MONDAY + DAY, 7.0, 100.0, 10.0)  # Tuesday 00:00
    profiler.record(MONDAY + 30 * 60, 3.0, 100.0, 10.0)  # Monday 00:30

    late_monday = profiler.predict(MONDAY + WEEK + 23 * HOUR)
    assert (late_monday.source, late_monday.samples, late_monday.p50.rps) == ("cell", 1, 7.0)
    # Sunday 23:00 is next to Monday 00:00, across the end of the week.
    late_sunday = profiler.predict(MONDAY + 2 * WEEK - HOUR)
    assert (late_sunday.source, late_sunday.samples, late_sunday.p50.rps) == ("cell", 1, 3.0)
    # Wednesday 00:00 has no sample in its own cell, only at the same time on other days.
    assert profiler.predict(MONDAY + WEEK + 2 * DAY).source == "nearby"


def test_fallback_goes_cell_then_nearby_then_global() -> None:
    profiler = hourly()
    profiler.record(MONDAY + 10 * HOUR, 10.0, 100.0, 10.0)
    profiler.record(MONDAY + DAY + 11 * HOUR, 30.0, 100.0, 10.0)

    cell = profiler.predict(MONDAY + WEEK + 10 * HOUR)
    nearby = profiler.predict(MONDAY + WEEK + 2 * DAY + 10 * HOUR)
    overall = profiler.predict(MONDAY + WEEK + 2 * DAY + 15 * HOUR)

    assert (cell.source, cell.samples, cell.p50.rps) == ("cell", 1, 10.0)
    assert (nearby.source, nearby.samples, nearby.p50.rps) == ("nearby", 1, 10.0)
    assert (overall.source, overall.samples, overall.p50.rps) == ("global", 2, 20.0)


def test_empty_profiler_raises_instead_of_inventing_demand() -> None:
    with pytest.raises(ProfilerEmptyError):
        DemandProfiler().predict(MONDAY)
    assert issubclass(ProfilerEmptyError, LookupError)


def test_zero_rate_samples_are_valid_and_never_nan() -> None:
    profiler = hourly()
    profiler.record(MONDAY + 3 * HOUR, 0.0, 0.0, 0.0)
    outage = profiler.predict(MONDAY + WEEK + 3 * HOUR)
    assert (outage.p95.rps, outage.p95.prompt_tokens, outage.p95.output_tokens, outage.tps_p95) == (
        0.0,
        0.0,
        0.0,
        0.0,
    )

    # With traffic elsewhere in history, an all-outage cell borrows the history's token mix.
    profiler.record(MONDAY + 10 * HOUR, 4.0, 300.0, 30.0)
    outage = profiler.predict(MONDAY + WEEK + 3 * HOUR)
    assert (outage.source, outage.p50.rps) == ("cell", 0.0)
    assert (outage.p50.prompt_tokens, outage.p50.output_tokens) == (300.0, 30.0)


def test_zero_rate_bin_does_not_skew_the_token_mix() -> None:
    profiler = hourly(history_days=14)
    profiler.record(MONDAY + 10 * HOUR, 0.0, 9999.0, 9999.0)
    profiler.record(MONDAY + WEEK + 10 * HOUR, 2.0, 100.0, 10.0)

    forecast = profiler.predict(MONDAY + 2 * WEEK + 10 * HOUR)

    assert forecast.p50.rps == pytest.approx(1.0)
    assert (forecast.p50.prompt_tokens, forecast.p50.output_tokens) == (100.0, 10.0)


# -- residual spread ----------------------------------------------------------------------------------


def _two_weeks_with_busy_days(residual_spread: bool) -> DemandProfiler:
    profiler = DemandProfiler(bin_minutes=60, neighbour_bins=1, residual_spread=residual_spread)
    rng = np.random.default_rng(7)
    for day in range(14):
        level = float(rng.uniform(50.0, 150.0))  # days differ; hours within a day barely do
        for hour in range(24):
            profiler.record(MONDAY + day * DAY + hour * HOUR, level * (1 + 0.01 * hour), 100.0, 10.0)
    return profiler


def test_residual_spread_widens_a_band_the_cell_understates() -> None:
    plain = _two_weeks_with_busy_days(residual_spread=False)
    spread = _two_weeks_with_busy_days(residual_spread=True)

    for hour in range(24):
        t = MONDAY + 14 * DAY + hour * HOUR
        a, b = plain.predict(t), spread.predict(t)
        assert b.p50 == a.p50
        assert b.tps_p50 == a.tps_p50
        assert b.p75.rps >= a.p75.rps
        assert b.p95.rps >= a.p95.rps
        assert b.tps_p95 >= a.tps_p95
    # Day-to-day swings of ±50% are far wider than two same-weekday samples show.
    t = MONDAY + 14 * DAY + 12 * HOUR
    assert spread.predict(t).p95.rps > 1.2 * plain.predict(t).p95.rps


def test_residual_spread_leaves_a_perfectly_regular_profile_alone() -> None:
    def regular(residual_spread: bool) -> DemandProfiler:
        profiler = DemandProfiler(bin_minutes=60, neighbour_bins=0, residual_spread=residual_spread)
        for hour in range(21 * 24):
            profiler.record(MONDAY + hour * HOUR, 10.0 + hour % 24, 100.0, 10.0)
        return profiler

    plain, spread = regular(False), regular(True)
    for hour in range(24):
        t = MONDAY + 21 * DAY + hour * HOUR
        assert spread.predict(t) == plain.predict(t)


# -- validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"bin_minutes": 7}, "bin_minutes"),
        ({"bin_minutes": 0}, "bin_minutes"),
        ({"bin_minutes": -5}, "bin_minutes"),
        ({"bin_minutes": 2.5}, "bin_minutes"),
        ({"history_days": 0}, "history_days"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"timezone": "America"}, "timezone"),
        ({"timezone": ""}, "timezone"),
        ({"neighbour_bins": -1}, "neighbour_bins"),
        ({"bin_minutes": 720, "neighbour_bins": 1}, "neighbour_bins"),
    ],
)
def test_bad_constructor_arguments_are_named(kwargs: dict[str, object], argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        DemandProfiler(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["rps", "prompt_tokens", "output_tokens"])
@pytest.mark.parametrize("value", [math.nan, -1.0, math.inf])
def test_bad_observations_are_rejected_by_field(field: str, value: float) -> None:
    values = {"rps": 1.0, "prompt_tokens": 100.0, "output_tokens": 10.0, field: value}
    profiler = DemandProfiler()
    with pytest.raises(ValueError, match=field):
        profiler.record(MONDAY, **values)
    assert profiler.sample_count == 0


@pytest.mark.parametrize("t", [math.nan, math.inf, 1e20])
def test_unusable_time_is_rejected(t: float) -> None:
    profiler = DemandProfiler()
    with pytest.raises(ValueError, match="t must"):
        profiler.record(t, 1.0, 1.0, 1.0)
    profiler.record(MONDAY, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="t must"):
        profiler.predict(t)


# -- persistence --------------------------------------------------------------------------------------


def _busy_profiler() -> DemandProfiler:
    profiler = DemandProfiler(bin_minutes=10, history_days=7, timezone=NEW_YORK, neighbour_bins=2)
    rng = np.random.default_rng(3)
    for i in range(3 * 144 * 7):
        t = MONDAY + i * 200.0 + float(rng.uniform(0, 50))
        profiler.record(
            t, float(rng.gamma(2.0, 50.0)), float(rng.uniform(50, 2000)), float(rng.uniform(5, 500))
        )
    profiler.record(MONDAY + 3 * DAY, 0.0, 0.0, 0.0)
    return profiler


def test_state_round_trips_exactly() -> None:
    original = _busy_profiler()
    restored = DemandProfiler.from_bytes(original.to_bytes())

    assert restored.to_bytes() == original.to_bytes()
    assert (restored.bin_minutes, restored.history_days, restored.timezone, restored.neighbour_bins) == (
        10,
        7,
        NEW_YORK,
        2,
    )
    assert restored.sample_count == original.sample_count
    assert restored.newest_time == original.newest_time
    for i in range(0, 2 * 144 * 7, 7):
        t = MONDAY + 7 * DAY + i * 600.0
        assert restored.predict(t) == original.predict(t)

    # And they keep evolving identically.
    for profiler in (original, restored):
        profiler.record(MONDAY + 30 * DAY, 12.0, 100.0, 10.0)
    assert restored.predict(MONDAY + 31 * DAY) == original.predict(MONDAY + 31 * DAY)


def test_empty_state_round_trips() -> None:
    restored = DemandProfiler.from_bytes(DemandProfiler(bin_minutes=15).to_bytes())
    assert (restored.bin_minutes, restored.sample_count, restored.newest_time) == (15, 0, None)


def _state(**changes: object) -> bytes:
    state = msgspec.msgpack.decode(hourly().to_bytes())
    state.update(changes)
    return msgspec.msgpack.encode(state)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"\x93\x01\x02\x03",
        msgspec.msgpack.encode({"hello": "world"}),
        _state(version=99),
        _state(bin_minutes=7),
        _state(timezone="Nowhere/Land"),
        _state(samples=[[1, 0, 1.0, 1.0, 1.0]]),
        _state(samples=[[1, 1, -1.0, 1.0, 1.0]]),
        _state(samples=[[1, 1, 1.0, 1.0, 1.0], [1, 1, 1.0, 1.0, 1.0]]),
        _state(samples=[[1, 1, 1.0, 1.0, 1.0], [10**6, 1, 1.0, 1.0, 1.0]]),
        _state(newest_time=math.inf),
    ],
)
def test_garbage_state_raises_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="saved demand profiler"):
        DemandProfiler.from_bytes(data)


# -- speed --------------------------------------------------------------------------------------------


def test_two_weeks_of_ten_minute_records_is_fast() -> None:
    profiler = DemandProfiler(bin_minutes=10, history_days=28)
    started = time.perf_counter()
    for i in range(14 * 144):
        profiler.record(MONDAY + i * 600.0, 100.0 + i % 144, 500.0, 200.0)
    assert time.perf_counter() - started < 0.5
    assert profiler.sample_count == 14 * 144


# -- properties ---------------------------------------------------------------------------------------

_observation = st.tuples(
    st.floats(min_value=0, max_value=60 * DAY, allow_nan=False),
    st.floats(min_value=0, max_value=1e6, allow_nan=False),
    st.floats(min_value=0, max_value=1e5, allow_nan=False),
    st.floats(min_value=0, max_value=1e5, allow_nan=False),
)


@settings(deadline=None)
@given(
    observations=st.lists(_observation, min_size=1, max_size=80),
    when=st.floats(min_value=0, max_value=90 * DAY, allow_nan=False),
    residual_spread=st.booleans(),
    neighbour_bins=st.integers(min_value=0, max_value=3),
)
def test_forecast_bands_are_ordered_finite_and_non_negative(
    observations: list[tuple[float, float, float, float]],
    when: float,
    residual_spread: bool,
    neighbour_bins: int,
) -> None:
    profiler = DemandProfiler(
        bin_minutes=30,
        history_days=14,
        timezone=NEW_YORK,
        neighbour_bins=neighbour_bins,
        residual_spread=residual_spread,
    )
    for t, rps, prompt, output in observations:
        profiler.record(MONDAY + t, rps, prompt, output)

    forecast = profiler.predict(MONDAY + when)

    assert forecast.p50.rps <= forecast.p75.rps <= forecast.p95.rps
    assert forecast.tps_p50 <= forecast.tps_p75 <= forecast.tps_p95
    values = [
        forecast.tps_p50,
        forecast.tps_p75,
        forecast.tps_p95,
        *(
            v
            for d in (forecast.p50, forecast.p75, forecast.p95)
            for v in (d.rps, d.prompt_tokens, d.output_tokens)
        ),
    ]
    assert all(math.isfinite(v) and v >= 0 for v in values)
    assert 1 <= forecast.samples <= profiler.sample_count
