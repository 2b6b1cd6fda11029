"""How the optimizer reads the observed demand: the backtest's rolling values once it sees arrivals.

The backtest's ``rolling`` policy (``agent/backtest.py``) sizes each tick to the busiest one-minute demand
of the last ten minutes and re-plans as soon as a minute's demand passes what the latest plan covered. Its
demand is a trace's arrival rate. The agent sees one of two kinds of demand in its
:class:`~agent.core.demand_bins.DemandBins`:

- ``arrivals``: at least one fresh entry keyed ``frontend:<url>`` (a Dynamo frontend's request counter,
  counted when a request arrives, before any worker): the backtest's kind of demand, so its values apply.
- ``completions``: worker reports only, which count a request when it ends. A backlog draining after
  capacity arrives spikes them above the traffic, and at the emulated demo's 1/64 scale a report counts a
  handful of requests: holding their peak over-provisioned the demo 1.3-2.3×, so nothing is held.

Each of the three settings is a number, used whatever the kind, or ``"auto"``, resolved by
:data:`AUTO_VALUES`. Pure: the caller passes the configured values and the bins' fresh sources.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

Auto = Literal["auto"]
AUTO: Final[Auto] = "auto"
DemandKind = Literal["arrivals", "completions"]

ARRIVALS_PREFIX: Final = "frontend:"
"""DemandBins entries under this prefix count arrivals (``agent.actors.dynamo_source.bins_key``)."""

ROLLING_WINDOW_S: Final = 600.0
"""The rolling policy holds the busiest demand of the last ten minutes: on the four README backtests it
holds both the per-minute and the 60 s queue score at 99.9%, which the hour's peak (8-13% cheaper on
m-large) does not (``bench/policy_variants.py``, issue 15)."""
ROLLING_STEP_S: Final = 60.0
"""The backtest's step: each of its observations is one minute's mean arrival rate, so the agent's are too.
The hour's peak of shorter intervals holds the noise, not the traffic: for steady Poisson arrivals at 5
requests/s, the peak of 5 s intervals is 1.68× the rate, of minute means 1.17× (2 requests/s: 2.10× and
1.27×; median of 200 simulated hours)."""
ARRIVALS_SAMPLE_S: Final = 5.0
"""How often arrivals are sampled between ticks: a Dynamo frontend's default scrape interval, so that the
minute's mean is taken over every scraped interval rather than a few of them."""


@dataclass(frozen=True, slots=True)
class DemandPolicy:
    """What the optimizer applies now: the observed demand's base, its surge check and its smoothing, and
    how often the demand is sampled between ticks (the surge check samples too)."""

    kind: DemandKind
    base_window_s: float
    surge_check_s: float
    smoothing_s: float
    sample_s: float

    def periods(self) -> tuple[float, float]:
        """(sampling, surge check) in seconds, 0 for never."""
        return self.sample_s, self.surge_check_s

    def describe(self) -> str:
        """One phrase for a plan's detail."""
        if not (self.base_window_s or self.surge_check_s or self.smoothing_s):
            return f"{self.kind}: the latest observation"
        return (
            f"{self.kind}: peak of {self.base_window_s:g} s, surge check {self.surge_check_s:g} s, "
            f"mean of {self.smoothing_s:g} s"
        )


AUTO_VALUES: Final[dict[DemandKind, tuple[float, float, float]]] = {
    # (base window, surge check, smoothing): the surge is checked once a step, as the backtest does
    "arrivals": (ROLLING_WINDOW_S, ROLLING_STEP_S, ROLLING_STEP_S),
    "completions": (0.0, 0.0, 0.0),
}


def demand_kind(sources: Iterable[str], previous: DemandKind) -> DemandKind:
    """``arrivals`` when any source counts arrivals (a frontend), ``completions`` when the sources are
    workers only, and ``previous`` when there is none: a gap in the reports is no new kind of demand, and
    a held peak survives a frontend's short outage."""
    seen = list(sources)
    if not seen:
        return previous
    return "arrivals" if any(s.startswith(ARRIVALS_PREFIX) for s in seen) else "completions"


@dataclass(frozen=True, slots=True)
class DemandPolicyConfig:
    """The three settings as configured: seconds, or ``"auto"`` (by the kind of demand seen)."""

    base_window_s: float | Auto
    surge_check_s: float | Auto
    smoothing_s: float | Auto

    def __post_init__(self) -> None:
        for name in ("base_window_s", "surge_check_s", "smoothing_s"):
            value = getattr(self, name)
            if value != AUTO and not (isinstance(value, int | float) and value >= 0):
                raise ValueError(f"{name} must be ≥ 0 seconds or {AUTO!r} (got {value!r})")

    def resolve(self, kind: DemandKind) -> DemandPolicy:
        """The values in force for this kind of demand: each configured number, else the kind's own."""
        configured = (self.base_window_s, self.surge_check_s, self.smoothing_s)
        window, surge, smoothing = (
            float(auto if value == AUTO else value)
            for value, auto in zip(configured, AUTO_VALUES[kind], strict=True)
        )
        # Arrivals are sampled at their own pace for the minute's mean; worker reports, as before, only
        # at each surge check.
        held = window > 0 or smoothing > 0
        sample = ARRIVALS_SAMPLE_S if kind == "arrivals" and held else surge
        return DemandPolicy(kind, window, surge, smoothing, sample)

    def timer_s(self) -> float:
        """The finest sampling or surge check any kind of demand may ask for (0: none, the tick only)."""
        periods = [p for kind in AUTO_VALUES for p in self.resolve(kind).periods() if p > 0]
        return min(periods, default=0.0)
