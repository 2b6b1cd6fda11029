"""Demand values shared by the profiler, the capacity planner and the optimizers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Demand:
    """A request rate with its token mix (means per request)."""

    rps: float
    prompt_tokens: float
    output_tokens: float

    def __post_init__(self) -> None:
        for name in ("rps", "prompt_tokens", "output_tokens"):
            value = getattr(self, name)
            if not value >= 0:  # also rejects NaN
                raise ValueError(f"demand field {name!r} must be a number ≥ 0, got {value!r}")

    @property
    def tokens_per_s(self) -> float:
        return self.rps * (self.prompt_tokens + self.output_tokens)

    def scaled(self, factor: float) -> Demand:
        """The same token mix at ``factor`` times the rate."""
        return Demand(self.rps * factor, self.prompt_tokens, self.output_tokens)


ForecastSource = Literal["cell", "nearby", "global"]


@dataclass(frozen=True, slots=True)
class DemandForecast:
    """Percentiles of demand expected at one time, from the observations of comparable past times.

    ``source`` says which observations were used: the time's own day-of-week × time-of-day cell (with its
    neighbouring bins), nearby cells when that was empty, or the whole history as a last resort.
    """

    p50: Demand
    p75: Demand
    p95: Demand
    tps_p50: float
    tps_p75: float
    tps_p95: float
    samples: int
    source: ForecastSource

    def scaled(self, factor: float) -> DemandForecast:
        return DemandForecast(
            p50=self.p50.scaled(factor),
            p75=self.p75.scaled(factor),
            p95=self.p95.scaled(factor),
            tps_p50=self.tps_p50 * factor,
            tps_p75=self.tps_p75 * factor,
            tps_p95=self.tps_p95 * factor,
            samples=self.samples,
            source=self.source,
        )
