"""``bench/forecast.py --section lead_peak`` runs end to end on a short synthetic minute trace and prints one
JSON report with every forecaster scored; its pure helpers do what the figures rest on. The figures on the
real traces are the bench's business, not a test's."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from cli import load_bench, run_bench


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("forecast.py")


def _synthetic_trace(path: Path, days: int) -> None:
    """A daily wave with noise and a surge on the last day, one row a minute."""
    rng = np.random.default_rng(7)
    minutes = np.arange(days * 1440)
    rps = 100 + 50 * np.sin(2 * math.pi * minutes / 1440) + rng.normal(0, 5, minutes.size)
    rps[(days - 1) * 1440 + 600 : (days - 1) * 1440 + 660] *= 1.8
    rows = "".join(f"{m * 60},{max(r, 0.0):.3f},500,200\n" for m, r in zip(minutes, rps, strict=True))
    path.write_text("time_s,rps,prompt_tokens,output_tokens\n" + rows, encoding="utf-8")


def test_lead_peak_section_scores_every_forecaster_on_a_short_trace(
    tmp_path: Path, bench: ModuleType
) -> None:
    trace = tmp_path / "wave.csv"
    _synthetic_trace(trace, days=4)
    spec = f"csv:{trace}"
    done = run_bench(
        "forecast.py",
        *("--section", "lead_peak", "--traces", spec, "--train-days", "3", "--refit-minutes", "720"),
        timeout_s=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)[spec]

    assert report["scored_minutes"] > 1000
    rows = report["forecasters"]
    assert set(rows) == set(bench.LEAD_FORECASTERS)
    for name, row in rows.items():
        if "h_oracle" not in row:  # only statsmodels may be missing, and then it says so
            assert name in {"statsmodels_hw", "max_peak15_hw"}
            assert "statsmodels" in row["note"]
            continue
        assert bench.H_FLOOR <= row["h_oracle"] <= bench.H_CEILING, name
        assert row["cost_oracle"] > 0, name
        assert 0 <= row["unserved_warmup_h"] < 1, name
        assert row["seconds"] >= 0, name


def test_a_base_that_is_the_coming_peak_needs_no_headroom(bench: ModuleType) -> None:
    demand = np.array([5.0, 1, 2, 8, 3, 4, 9, 2, 1, 7, 6, 3, 2, 5, 4, 8, 1, 2, 3, 9, 4, 2, 6, 5, 1])
    ahead = bench.ahead_matrix(demand)[:, :10]
    peak = ahead.max(axis=0)

    assert ahead.shape == (bench.LEAD_STEPS - bench.BOOT_STEPS + 1, 10)
    assert ahead[0, 0] == demand[bench.BOOT_STEPS]
    assert bench.unserved_share(ahead, peak, 1.0) == 0.0
    assert bench.lead_headroom(ahead, peak, 0.0005) <= 1.0
    # half the peak needs twice the base, a hair less for the share the budget lets go unserved
    assert 1.99 < bench.lead_headroom(ahead, peak / 2, 0.0005) <= 2.0


def test_ahead_matrix_leaves_the_steps_past_the_end_undefined(bench: ModuleType) -> None:
    ahead = bench.ahead_matrix(np.arange(20.0))

    assert np.isnan(ahead[:, -1]).all()
    assert np.isfinite(ahead[:, : 20 - bench.LEAD_STEPS]).all()


def test_holt_forecasts_the_far_end_of_a_rising_line(bench: ModuleType) -> None:
    ramp = np.arange(500.0)

    forecast = bench.holt_peak(ramp, alpha=0.5, beta=0.5)

    assert forecast[-1] == pytest.approx(ramp[-1] + bench.LEAD_STEPS, rel=1e-6)


def test_holt_forecasts_the_near_end_of_a_falling_line_and_never_below_zero(bench: ModuleType) -> None:
    fall = 500.0 - np.arange(500.0)

    forecast = bench.holt_peak(fall, alpha=0.5, beta=0.5)

    assert forecast[100] == pytest.approx(fall[100] - bench.BOOT_STEPS, rel=1e-6)
    assert forecast.min() >= 0.0


def test_the_profile_forecaster_follows_a_repeating_day_scaled_to_the_recent_level(bench: ModuleType) -> None:
    day = 100 + 50 * np.sin(2 * math.pi * np.arange(1440) / 1440)
    # day 2 runs 20% above day 1: the recent ratio carries the level, the profile the shape
    series = np.concatenate([day, 1.2 * day])

    base = bench.profile_ratio(series, 1704067200.0)

    assert np.isnan(base[:10]).all()  # no history yet
    t = 1440 + 300
    coming_peak = series[t + bench.BOOT_STEPS : t + bench.LEAD_STEPS + 1].max()
    assert base[t] == pytest.approx(coming_peak, rel=0.03)


def test_an_outage_bin_is_learned_as_the_same_bin_a_day_earlier(bench: ModuleType) -> None:
    means = np.array([10.0, 20.0, 30.0, 11.0, 0.0, 31.0])

    filled = bench.outage_filled(means, season=3)

    assert filled.tolist() == [10.0, 20.0, 30.0, 11.0, 20.0, 31.0]


def test_an_outage_in_the_first_day_is_learned_as_the_median_so_far(bench: ModuleType) -> None:
    filled = bench.outage_filled(np.array([0.0, 10.0, 30.0, 0.0]), season=10)

    assert filled.tolist() == [0.0, 10.0, 30.0, 20.0]  # nothing before the first traffic to fill from
