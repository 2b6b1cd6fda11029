"""The built-in example demand: the seed's Llama-70B service, made explicit.

The seed's table assumes "4 nodes, 24/7" and a diurnal peak but never states the demand. This is the
profile we state instead, so that every figure of ``cost-agent plan --demand seed-example`` can be
traced back to it:

- token mix: 1,500 prompt and 500 output tokens per request (the seed's CapacityPlanner constants);
- weekdays: a daytime bump peaking at 14:00 UTC, the night trough at 35% of the peak;
- weekends: 60% of the weekday level;
- multiplicative noise, lognormal with σ = 0.08 per 5-minute bin, from a fixed seed (reproducible);
- four weeks of history; the planner then scales the rate so the forecast's busiest hour needs
  exactly the requested number of nodes (4 by default, as in the seed).
"""

from __future__ import annotations

import math

import numpy as np

from agent.core.demand import Demand

PROMPT_TOKENS = 1500.0
OUTPUT_TOKENS = 500.0
TROUGH = 0.35
WEEKEND_FACTOR = 0.6
PEAK_HOUR_UTC = 14.0
NOISE_SIGMA = 0.08
# 2024-01-01T00:00:00Z, a Monday: a fixed, reproducible start.
DEFAULT_START = 1704067200.0


def seed_example_shape(t: float) -> float:
    """Relative demand (peak weekday = 1) at UNIX time ``t``, before noise."""
    hour = (t % 86400) / 3600
    weekday = int(t // 86400 + 3) % 7  # 1970-01-01 was a Thursday (weekday 3)
    bump = 0.5 + 0.5 * math.cos((hour - PEAK_HOUR_UTC) / 24 * 2 * math.pi)
    level = TROUGH + (1 - TROUGH) * bump**2
    return level * (WEEKEND_FACTOR if weekday >= 5 else 1.0)


def seed_example_history(
    start: float = DEFAULT_START, weeks: int = 4, step_minutes: int = 5, peak_rps: float = 30.0, seed: int = 7
) -> list[tuple[float, Demand]]:
    """Observations (time, demand) every ``step_minutes`` for ``weeks`` weeks."""
    rng = np.random.default_rng(seed)
    step_s = step_minutes * 60
    n = weeks * 7 * 86400 // step_s
    noise = rng.lognormal(mean=0.0, sigma=NOISE_SIGMA, size=n)
    out = []
    for i in range(n):
        t = start + i * step_s
        rps = peak_rps * seed_example_shape(t) * float(noise[i])
        out.append((t, Demand(rps, PROMPT_TOKENS, OUTPUT_TOKENS)))
    return out
