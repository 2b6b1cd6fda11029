"""What demand a live tick covers: the seed's rule (current P75, next-hour P95) made safe for a live feed.

- now: the larger of the profile's P75 for this time and the demand observed right now. The profile knows
  the usual; the observation catches a day that is not usual (and is all there is on a cold start).
- next: the largest P95 the profile gives for the bins of the coming hour, and never less than ``now``.

With neither a profile nor an observation the demand is zero and the optimizer keeps its floors only.
Pure: the caller passes the profiler and the observation.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.core.demand import Demand
from agent.core.profiler import DemandProfiler, ProfilerEmptyError

NO_DEMAND = Demand(0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class TickDemand:
    now: Demand
    next_hour: Demand
    source: str
    """``profile+observed``, ``profile``, ``observed`` or ``none``: what the figures came from."""


def _larger(a: Demand, b: Demand) -> Demand:
    """The larger rate; with an empty token mix it borrows the other's (rates without tokens size nothing)."""
    big, small = (a, b) if a.rps >= b.rps else (b, a)
    if big.prompt_tokens + big.output_tokens == 0 and small.prompt_tokens + small.output_tokens > 0:
        return Demand(big.rps, small.prompt_tokens, small.output_tokens)
    return big


def tick_demand(
    profiler: DemandProfiler, now: float, observed: Demand | None, lookahead_s: float = 3600.0
) -> TickDemand:
    try:
        p75_now = profiler.predict(now).p75
    except ProfilerEmptyError:
        if observed is None:
            return TickDemand(NO_DEMAND, NO_DEMAND, "none")
        return TickDemand(observed, observed, "observed")
    step = profiler.bin_minutes * 60.0
    steps = max(1, round(lookahead_s / step))
    next_hour = max((profiler.predict(now + k * step).p95 for k in range(1, steps + 1)), key=lambda d: d.rps)
    demand_now = p75_now if observed is None else _larger(p75_now, observed)
    return TickDemand(
        now=demand_now,
        next_hour=_larger(next_hour, demand_now),
        source="profile" if observed is None else "profile+observed",
    )
