"""Forecast quality of the demand profiler on real traces (Alibaba ServeGen, Apache-2.0).

For each model: record the first ``--train-days`` days of 10-minute rates into a
``DemandProfiler(bin_minutes=10, history_days=28)``, then forecast every 10-minute window of the
remaining days and compare with the actual rate.

- ``batch``: the forecasts use the training days only.
- ``online``: each window is forecast from everything recorded so far, then its actual is recorded.

Figures: ``mape_p50`` (mean |P50 − actual| / actual over windows with actual > 0), ``wmape_p50``
(Σ|P50 − actual| / Σ actual), ``under_p75``/``under_p95`` (share of windows with actual ≤ P75 / P95),
``p95_over_actual`` (Σ P95 / Σ actual: the headroom that coverage costs) and the forecast sources used.

Section ``lead_peak`` (``--section lead_peak``): the base a planning-ahead policy sizes to. Nodes ordered at
minute ``t`` serve from ``t + 6`` (the boot) until the next decision's do, at ``t + 11``; capacity
``h · b[t]`` must cover the peak of ``d[t+6 … t+11]``. On one-minute steps (``resample`` to 60 s), each
forecaster produces ``b[t]`` from the data up to ``t`` only; days after ``--train-days`` are scored. Per
forecaster:

- ``h_oracle``: the smallest headroom whose unserved share Σ(d[t+k] − h·b[t])⁺ / Σd[t+k], k = 6 … 11, is
  within ``--budget`` on the scored days themselves (isolates the forecast's quality);
- ``h_warmup``: the same fitted on the warm-up days (what a policy can do), with ``unserved_warmup_h``
  its realised unserved share on the scored days;
- ``cost_oracle`` / ``cost_warmup``: mean(h · b) / mean(d) on the scored days: capacity held per unit of
  demand, the figure to minimise;
- ``cost_oracle_looser``: the oracle cost at looser budgets (0.05% is set by a surge or two a week);
- ``seconds``: the forecaster's own time over the whole trace (fits included).

Moments whose demand is below 5% of the median (outages) are left out, as in
:func:`agent.core.hedging.headroom_for_budget`, and every forecaster is scored on the same moments.
statsmodels (the ``dev`` extra) is imported lazily; without it ``statsmodels_hw`` is skipped with a note.

Run: ``python bench/forecast.py [--section profile|lead_peak|all]`` (with the package importable, e.g.
after ``make``); prints one JSON object (``profile``, the default, prints what it always has).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import numpy as np
import numpy.typing as npt

from agent.core.profiler import DemandProfiler
from agent.core.recent_peak import recent_peak
from agent.sim.traces import DemandStep, TraceError, load_demand, load_servegen, resample

DAY_S = 86400.0


@dataclass(frozen=True)
class Config:
    bin_minutes: int
    history_days: int
    neighbour_bins: int
    train_days: int
    residual_spread: bool


def _profiler(config: Config) -> DemandProfiler:
    return DemandProfiler(
        bin_minutes=config.bin_minutes,
        history_days=config.history_days,
        neighbour_bins=config.neighbour_bins,
        residual_spread=config.residual_spread,
    )


def _record(profiler: DemandProfiler, step: DemandStep) -> None:
    d = step.demand
    profiler.record(step.time_s + step.duration_s / 2, d.rps, d.prompt_tokens, d.output_tokens)


def _score(actual: np.ndarray, p50: np.ndarray, p75: np.ndarray, p95: np.ndarray) -> dict[str, float]:
    positive = actual > 0
    err = np.abs(p50 - actual)
    return {
        "mape_p50": round(float(np.mean(err[positive] / actual[positive])), 4),
        "wmape_p50": round(float(err.sum() / actual.sum()), 4),
        "under_p75": round(float(np.mean(actual <= p75)), 4),
        "under_p95": round(float(np.mean(actual <= p95)), 4),
        "p95_over_actual": round(float(p95.sum() / actual.sum()), 4),
    }


def evaluate(model: str, config: Config) -> dict[str, object]:
    trace = load_servegen(model)
    split = trace.start_s + config.train_days * DAY_S
    train = [s for s in trace.steps if s.time_s < split]
    test = [s for s in trace.steps if s.time_s >= split]
    if not train or not test:
        raise SystemExit(f"{model}: trace too short for {config.train_days} training days")
    actual = np.array([s.demand.rps for s in test])
    result: dict[str, object] = {"train_days": config.train_days, "test_windows": len(test)}

    for mode in ("batch", "online"):
        profiler = _profiler(config)
        started = time.perf_counter()
        for step in train:
            _record(profiler, step)
        record_s = time.perf_counter() - started
        bands = np.empty((len(test), 3))
        sources: Counter[str] = Counter()
        started = time.perf_counter()
        for i, step in enumerate(test):
            forecast = profiler.predict(step.time_s + step.duration_s / 2)
            bands[i] = (forecast.p50.rps, forecast.p75.rps, forecast.p95.rps)
            sources[forecast.source] += 1
            if mode == "online":
                _record(profiler, step)
        predict_s = time.perf_counter() - started
        scores: dict[str, object] = dict(_score(actual, bands[:, 0], bands[:, 1], bands[:, 2]))
        scores["sources"] = dict(sources)
        scores["train_record_ms"] = round(record_s * 1e3, 1)
        scores["predict_us_mean"] = round(predict_s / len(test) * 1e6, 1)
        result[mode] = scores
    return result


# -- lead_peak: the base a planning-ahead decision sizes to ----------------------------------------------

FloatArray = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]
MINUTE_S = 60.0
MINUTES_PER_DAY = 1440
BOOT_STEPS = 6  # a new node serves 6 one-minute steps after it is ordered …
LEAD_STEPS = 11  # … until the next decision's nodes serve (boot + a 5-minute tick)
PROFILE_BIN_MINUTES = 10
# Below this share of the median rate a moment is an outage, as in agent/core/hedging.py.
OUTAGE_SHARE = 0.05
# Smallest and largest headroom searched: below 1 as well, since a forecaster that over-forecasts (a peak
# held for an hour) may need less than its own base; the policy's headroom_for_budget stops at 1.
H_FLOOR = 0.1
H_CEILING = 20.0
# 0.05% is set by one or two surges a week; looser budgets show whether a ranking holds for the bulk.
LOOSER_BUDGETS = (0.002, 0.01)
EWMA_GRID = tuple((a, b) for a in (0.05, 0.1, 0.2, 0.4) for b in (0.01, 0.05, 0.2))
DEFAULT_LEAD_TRACES = ("servegen:m-large", "servegen:m-mid", "servegen:m-small", "azure2023:conv")
LEAD_FORECASTERS = (
    "hour_peak",
    "last_minute",
    "peak_15",
    "ewma_trend",
    "profile_ratio",
    "statsmodels_hw",
    "max_peak15_profile",
    "max_peak15_hw",
)


def minute_series(steps: tuple[DemandStep, ...], start_s: float) -> FloatArray:
    """Rates per minute from ``start_s`` on a dense grid; a minute without a step had no traffic."""
    if not steps:
        return np.zeros(0)
    n = round((steps[-1].time_s - start_s) / MINUTE_S) + 1
    x = np.zeros(n)
    for step in steps:
        x[round((step.time_s - start_s) / MINUTE_S)] = step.demand.rps
    return x


def ahead_matrix(demand: FloatArray, first: int = BOOT_STEPS, lead: int = LEAD_STEPS) -> FloatArray:
    """Row ``k − first``, column ``t``: ``d[t + k]`` for ``k = first … lead`` (NaN past the end)."""
    n = len(demand)
    out = np.full((lead - first + 1, n), np.nan)
    for row, k in enumerate(range(first, lead + 1)):
        out[row, : max(n - k, 0)] = demand[k:]
    return out


def unserved_share(ahead: FloatArray, base: FloatArray, h: float) -> float:
    """Σ(d[t+k] − h·b[t])⁺ / Σ d[t+k] over the columns given (0 without demand)."""
    total = float(ahead.sum())
    if total <= 0:
        return 0.0
    return float(np.maximum(ahead - h * base, 0.0).sum()) / total


def lead_headroom(
    ahead: FloatArray, base: FloatArray, budget: float, floor: float = H_FLOOR, ceiling: float = H_CEILING
) -> float:
    """Smallest ``h`` in [floor, ceiling] whose :func:`unserved_share` is within ``budget`` (bisection:
    the share falls as ``h`` grows); ``ceiling`` when even that misses more."""
    if unserved_share(ahead, base, floor) <= budget:
        return floor
    if unserved_share(ahead, base, ceiling) > budget:
        return ceiling
    lo, hi = floor, ceiling
    for _ in range(40):
        mid = (lo + hi) / 2
        if unserved_share(ahead, base, mid) <= budget:
            hi = mid
        else:
            lo = mid
    return hi


def holt_peak(
    x: FloatArray, alpha: float, beta: float, first: int = BOOT_STEPS, lead: int = LEAD_STEPS
) -> FloatArray:
    """Holt's linear trend on ``x``: at each ``t``, the largest of its forecasts for ``t+first … t+lead``
    (at either end, the trend being a line), never below 0."""
    out = np.empty(len(x))
    level = float(x[0]) if len(x) else 0.0
    trend = 0.0
    for t, value in enumerate(x.tolist()):
        previous = level
        level = alpha * value + (1 - alpha) * (level + trend)
        trend = beta * (level - previous) + (1 - beta) * trend
        out[t] = max(level + first * trend, level + lead * trend, 0.0)
    return out


def bin_means(x: FloatArray, bin_minutes: int) -> FloatArray:
    """Mean rate of each ``bin_minutes`` run of minutes (the last one may be short)."""
    n_bins = -(-len(x) // bin_minutes)
    padded = np.full(n_bins * bin_minutes, np.nan)
    padded[: len(x)] = x
    return np.asarray(np.nanmean(padded.reshape(n_bins, bin_minutes), axis=1))


def _ahead_bins(t: int, j: int, bin_minutes: int, first: int, lead: int) -> tuple[int, int]:
    """Offsets from bin ``j`` of the bins holding minutes ``t+first`` and ``t+lead``."""
    return (t + first) // bin_minutes - j, (t + lead) // bin_minutes - j


def profile_ratio(
    x: FloatArray,
    start_s: float,
    bin_minutes: int = PROFILE_BIN_MINUTES,
    recent: int = 15,
    first: int = BOOT_STEPS,
    lead: int = LEAD_STEPS,
) -> FloatArray:
    """The profile's P50 for the coming minutes ``t+first … t+lead`` (their busiest bin), scaled by how the
    last ``recent`` minutes ran against the profile's P50 for them. The profiler learns each bin once it is
    complete, online (P50 only: the residual spread moves P75/P95 alone). Outages are kept out of it: an
    outage bin is recorded as the same bin a day earlier (:func:`outage_filled`), else a week-old outage
    makes the profile's P50 zero a week later; and recent minutes of an outage (below ``OUTAGE_SHARE`` of
    their profile) are left out of the ratio, else the first minutes after one would scale the coming
    peak down to almost nothing. NaN before the profiler has any history."""
    profiler = DemandProfiler(
        bin_minutes=bin_minutes, history_days=28, neighbour_bins=2, residual_spread=False
    )
    means = outage_filled(bin_means(x, bin_minutes), MINUTES_PER_DAY // bin_minutes)
    bin_s = bin_minutes * MINUTE_S
    reach_back = -(-recent // bin_minutes)  # bins the recent minutes may span before the current one
    reach_ahead = (lead + bin_minutes - 1) // bin_minutes
    out = np.full(len(x), np.nan)
    for j in range(1, len(means)):
        profiler.record(start_s + (j - 1) * bin_s + bin_s / 2, float(means[j - 1]), 1.0, 1.0)
        # P50 of bins j − reach_back … j + reach_ahead, as known at the start of bin j.
        p50 = {
            i: profiler.predict(start_s + (j + i) * bin_s + bin_s / 2).p50.rps
            for i in range(-reach_back, reach_ahead + 1)
        }
        for t in range(j * bin_minutes, min((j + 1) * bin_minutes, len(x))):
            lo = max(t - recent + 1, 0)
            window = x[lo : t + 1]
            profile = np.array([p50[m // bin_minutes - j] for m in range(lo, t + 1)])
            a, b = _ahead_bins(t, j, bin_minutes, first, lead)
            ahead = max(p50[a], p50[b])
            running = window > OUTAGE_SHARE * profile
            expected = float(profile[running].sum())
            # all recent minutes an outage (or no profile): expect the profile's level back
            ratio = float(window[running].sum()) / expected if expected > 0 else 1.0
            out[t] = ahead * ratio
    return out


def outage_filled(means: FloatArray, season: int) -> FloatArray:
    """``means`` with each outage bin (below ``OUTAGE_SHARE`` of the median of the positive bins up to it:
    nothing later is used) replaced by the (filled) bin one ``season`` earlier, or that median in the
    first season. A bin before any traffic stays as it is."""
    out = means.copy()
    for j in range(len(means)):
        positive = means[: j + 1][means[: j + 1] > 0]
        if not positive.size:
            continue
        median = float(np.median(positive))
        if means[j] < OUTAGE_SHARE * median:
            out[j] = out[j - season] if j >= season else median
    return out


def minute_peak_ratio(x: FloatArray, end: int, bins: int, bin_minutes: int) -> float:
    """Mean over the last ``bins`` complete bins before minute ``end`` of (busiest minute ÷ bin mean)."""
    ratios = []
    for j in range(end // bin_minutes - bins, end // bin_minutes):
        if j < 0:
            continue
        chunk = x[j * bin_minutes : (j + 1) * bin_minutes]
        if chunk.size and chunk.mean() > 0:
            ratios.append(float(chunk.max() / chunk.mean()))
    return float(np.mean(ratios)) if ratios else 1.0


@dataclass
class HoltWintersRun:
    base: FloatArray
    fits: int
    fit_s: float
    failures: int


def statsmodels_hw(
    x: FloatArray,
    refit_minutes: int = 60,
    bin_minutes: int = PROFILE_BIN_MINUTES,
    train_days: int = 7,
    first: int = BOOT_STEPS,
    lead: int = LEAD_STEPS,
) -> HoltWintersRun | None:
    """statsmodels' Holt-Winters (multiplicative daily season, no trend) on bin means of the last
    ``train_days`` days, refit every ``refit_minutes``; the forecast of the bins holding ``t+first … t+lead``
    times the recent busiest-minute-to-bin-mean ratio. None without statsmodels. NaN until two days of
    bins are complete (a season needs two cycles to be estimated). Outage bins (below ``OUTAGE_SHARE`` of
    the median) are replaced by the same bin a day earlier before a fit: zeros would drag the level and a
    season down for hours after the traffic is back."""
    try:
        from statsmodels.tsa.holtwinters import ExponentialSmoothing
    except ImportError:
        return None
    season = MINUTES_PER_DAY // bin_minutes
    means = outage_filled(bin_means(x, bin_minutes), season)
    out = np.full(len(x), np.nan)
    fits = failures = 0
    fit_s = 0.0
    horizon = (refit_minutes + lead) // bin_minutes + 2
    for t0 in range(0, len(x), refit_minutes):
        j0 = t0 // bin_minutes  # bins before j0 are complete at minute t0
        if j0 < 2 * season:
            continue
        y = means[max(0, j0 - train_days * season) : j0]
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter on some windows
            try:
                seasonal = "mul" if float(y.min()) > 0 else "add"
                model = ExponentialSmoothing(
                    y,
                    trend=None,
                    seasonal=seasonal,
                    seasonal_periods=season,
                    initialization_method="estimated",
                )
                forecast = np.maximum(np.asarray(model.fit().forecast(horizon), dtype=float), 0.0)
            except (ValueError, np.linalg.LinAlgError):
                failures += 1
                forecast = np.full(horizon, means[j0 - 1])
        fit_s += time.perf_counter() - started
        fits += 1
        ratio = minute_peak_ratio(x, t0, 6, bin_minutes)
        for t in range(t0, min(t0 + refit_minutes, len(x))):
            a, b = _ahead_bins(t, j0, bin_minutes, first, lead)
            out[t] = ratio * max(forecast[a], forecast[b])
    return HoltWintersRun(out, fits, fit_s, failures)


def score_base(
    ahead: FloatArray, demand: FloatArray, base: FloatArray, warm: Mask, scored: Mask, budget: float
) -> dict[str, object]:
    """The figures of one forecaster's base: headroom fitted on the scored moments (oracle) and on the
    warm-up (a policy's), their cost proxies and the warm-up headroom's realised unserved share."""
    defined = np.isfinite(base)
    if not defined[scored].all():
        return {"note": f"no base at {int((~defined[scored]).sum())} scored moments"}
    b_s, a_s = base[scored], ahead[:, scored]
    mean_d = float(demand[scored].mean())
    h_oracle = lead_headroom(a_s, b_s, budget)
    result: dict[str, object] = {
        "h_oracle": round(h_oracle, 4),
        "cost_oracle": round(h_oracle * float(b_s.mean()) / mean_d, 4),
        "cost_oracle_looser": {
            str(loose): round(lead_headroom(a_s, b_s, loose) * float(b_s.mean()) / mean_d, 4)
            for loose in LOOSER_BUDGETS
        },
    }
    fit_on = warm & defined
    if fit_on.any():
        h_warm = lead_headroom(ahead[:, fit_on], base[fit_on], budget)
        result["h_warmup"] = round(h_warm, 4)
        result["cost_warmup"] = round(h_warm * float(b_s.mean()) / mean_d, 4)
        result["unserved_warmup_h"] = round(unserved_share(a_s, b_s, h_warm), 6)
        result["warmup_minutes"] = int(fit_on.sum())
    else:
        result["note"] = "no warm-up moments with a base: no warm-up headroom"
    return result


def warmup_cost(ahead: FloatArray, demand: FloatArray, base: FloatArray, warm: Mask, budget: float) -> float:
    """Capacity per unit demand on the warm-up with the headroom fitted there: how a policy picks
    parameters without seeing the scored days."""
    on = warm & np.isfinite(base)
    h = lead_headroom(ahead[:, on], base[on], budget)
    return h * float(base[on].mean()) / float(demand[on].mean())


def evaluate_lead_peak(
    spec: str, train_days: int, budget: float, forecasters: tuple[str, ...], refit_minutes: int
) -> dict[str, object]:
    try:
        trace = resample(load_demand(spec), MINUTE_S)
    except TraceError as exc:
        return {"skipped": str(exc)}
    x = minute_series(trace.steps, trace.start_s)
    split = train_days * MINUTES_PER_DAY
    if len(x) <= split + LEAD_STEPS:
        return {"skipped": f"{len(x)} minutes: too short for {train_days} warm-up days and a scored day"}
    ahead = ahead_matrix(x)
    t = np.arange(len(x))
    positive = x[x > 0]
    live = x > OUTAGE_SHARE * float(np.median(positive)) if positive.size else np.zeros(len(x), dtype=bool)
    warm = live & (t + LEAD_STEPS < split)
    scored = live & (t >= split) & (t + LEAD_STEPS < len(x))
    peak_ahead = ahead[:, scored].max(axis=0)
    result: dict[str, object] = {
        "minutes": len(x),
        "warmup_days": train_days,
        "scored_minutes": int(scored.sum()),
        # What a perfect forecast of the coming peak would hold: the floor under every cost below.
        "clairvoyant_cost": round(float(peak_ahead.mean() / x[scored].mean()), 4),
        "distinct_minute_rates_per_10min": round(
            float(np.mean([len(set(x[i : i + 10].tolist())) for i in range(0, len(x) - 9, 10)])), 2
        ),
    }
    bases: dict[str, FloatArray] = {}
    timings: dict[str, float] = {}

    def timed(name: str, make: Callable[[], FloatArray]) -> None:
        started = time.perf_counter()
        bases[name] = make()
        timings[name] = time.perf_counter() - started

    timed("hour_peak", lambda: recent_peak(x, 60))
    timed("last_minute", lambda: x.copy())
    timed("peak_15", lambda: recent_peak(x, 15))
    extras: dict[str, dict[str, object]] = {}
    if "ewma_trend" in forecasters:
        started = time.perf_counter()
        costs = {(a, b): warmup_cost(ahead, x, holt_peak(x, a, b), warm, budget) for a, b in EWMA_GRID}
        alpha, beta = min(costs, key=lambda key: costs[key])
        bases["ewma_trend"] = holt_peak(x, alpha, beta)
        timings["ewma_trend"] = time.perf_counter() - started
        extras["ewma_trend"] = {"alpha": alpha, "beta": beta, "chosen_on": "warm-up cost over a 4×3 grid"}
    if {"profile_ratio", "max_peak15_profile"} & set(forecasters):
        timed("profile_ratio", lambda: profile_ratio(x, trace.start_s))
    if {"statsmodels_hw", "max_peak15_hw"} & set(forecasters):
        started = time.perf_counter()
        run = statsmodels_hw(x, refit_minutes=refit_minutes, train_days=train_days)
        if run is None:
            extras["statsmodels_hw"] = {
                "note": "statsmodels is not installed: skipped (pip install statsmodels)"
            }
        else:
            bases["statsmodels_hw"] = run.base
            timings["statsmodels_hw"] = time.perf_counter() - started
            extras["statsmodels_hw"] = {
                "fits": run.fits,
                "fit_s_mean": round(run.fit_s / max(run.fits, 1), 4),
                "fit_failures": run.failures,
                "refit_minutes": refit_minutes,
            }
    # Blends: the larger of a short recent peak (catches what is here now) and a forecast (what is coming).
    if "profile_ratio" in bases:
        bases["max_peak15_profile"] = np.fmax(bases["peak_15"], bases["profile_ratio"])
        timings["max_peak15_profile"] = timings["peak_15"] + timings["profile_ratio"]
    if "statsmodels_hw" in bases:
        bases["max_peak15_hw"] = np.fmax(bases["peak_15"], bases["statsmodels_hw"])
        timings["max_peak15_hw"] = timings["peak_15"] + timings["statsmodels_hw"]

    table: dict[str, object] = {}
    for name in forecasters:
        if name not in bases:
            table[name] = extras.get(name, {"note": "not computed"})
            continue
        row = score_base(ahead, x, bases[name], warm, scored, budget)
        row["seconds"] = round(timings[name], 3)
        row.update(extras.get(name, {}))
        table[name] = row
    result["forecasters"] = table
    return result


def lead_peak(
    specs: list[str], train_days: int, budget: float, forecasters: tuple[str, ...], refit_minutes: int
) -> dict[str, object]:
    results: dict[str, object] = {
        "steps": f"1 minute; b[t] from data up to t; h·b[t] must cover d[t+{BOOT_STEPS} … t+{LEAD_STEPS}]",
        "budget": budget,
        "headroom_search": [H_FLOOR, H_CEILING],
    }
    for spec in specs:
        results[spec] = evaluate_lead_peak(spec, train_days, budget, forecasters, refit_minutes)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--section",
        choices=("profile", "lead_peak", "all"),
        default="profile",
        help="profile: the 10-minute profile's quality (the original output); lead_peak: the base for the "
        "peak of the coming boot + tick; all: both, under those keys",
    )
    parser.add_argument("--models", nargs="+", default=["m-large", "m-mid", "m-small"])
    parser.add_argument("--train-days", type=int, default=7)
    parser.add_argument("--bin-minutes", type=int, default=10)
    parser.add_argument("--history-days", type=int, default=28)
    parser.add_argument("--neighbour-bins", type=int, default=2)
    parser.add_argument(
        "--no-residual-spread",
        dest="residual_spread",
        action="store_false",
        help="plain cell percentiles, without the spread learned from the history's residuals",
    )
    parser.add_argument(
        "--traces", nargs="+", default=list(DEFAULT_LEAD_TRACES), help="lead_peak: demand specs"
    )
    parser.add_argument("--budget", type=float, default=0.0005, help="lead_peak: unserved share allowed")
    parser.add_argument(
        "--forecasters", nargs="+", choices=LEAD_FORECASTERS, default=list(LEAD_FORECASTERS), help="lead_peak"
    )
    parser.add_argument("--refit-minutes", type=int, default=60, help="lead_peak: statsmodels refit interval")
    args = parser.parse_args(argv)
    output: dict[str, object] = {}
    if args.section in ("profile", "all"):
        config = Config(
            args.bin_minutes, args.history_days, args.neighbour_bins, args.train_days, args.residual_spread
        )
        results: dict[str, object] = {
            "source": "Alibaba ServeGen (alibaba/ServeGen, Apache-2.0), 10-minute total rates",
            "profiler": {
                "bin_minutes": config.bin_minutes,
                "history_days": config.history_days,
                "neighbour_bins": config.neighbour_bins,
                "residual_spread": config.residual_spread,
            },
        }
        for model in args.models:
            results[model] = evaluate(model, config)
        output = results if args.section == "profile" else {"profile": results}
    if args.section in ("lead_peak", "all"):
        lead = lead_peak(
            args.traces, args.train_days, args.budget, tuple(args.forecasters), args.refit_minutes
        )
        output = lead if args.section == "lead_peak" else {**output, "lead_peak": lead}
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(output), indent=2).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
