"""Forecast quality of the demand profiler on real traces (Alibaba ServeGen, Apache-2.0).

For each model: record the first ``--train-days`` days of 10-minute rates into a
``DemandProfiler(bin_minutes=10, history_days=28)``, then forecast every 10-minute window of the
remaining days and compare with the actual rate.

- ``batch``: the forecasts use the training days only.
- ``online``: each window is forecast from everything recorded so far, then its actual is recorded.

Figures: ``mape_p50`` (mean |P50 − actual| / actual over windows with actual > 0), ``wmape_p50``
(Σ|P50 − actual| / Σ actual), ``under_p75``/``under_p95`` (share of windows with actual ≤ P75 / P95),
``p95_over_actual`` (Σ P95 / Σ actual: the headroom that coverage costs) and the forecast sources used.

Run: ``python bench/forecast.py`` (with the package importable, e.g. after ``make``); prints one JSON
object.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import dataclass

import msgspec
import numpy as np

from agent.core.profiler import DemandProfiler
from agent.sim.traces import DemandStep, load_servegen

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    args = parser.parse_args(argv)
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
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(results), indent=2).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
