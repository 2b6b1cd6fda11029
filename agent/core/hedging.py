"""Headroom for the time a new node needs to arrive: how much demand may grow before it serves.

A decision made now is felt only after a boot (minutes) plus the wait for the next tick. Over that lead
time, demand can rise; the headroom is a high quantile of that rise, learned from the observed demand
itself: ``max(demand[t+1 .. t+lead]) / demand[t]`` over the recent history.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def growth_quantile(history: Sequence[float], lead_steps: int, quantile: float) -> float:
    """The ``quantile`` of the rise over ``lead_steps`` steps in ``history`` (≥ 1; 1 with too little data)."""
    if not 0 < quantile < 1:
        raise ValueError("quantile must be in (0, 1)")
    x = np.asarray(history, dtype=float)
    if lead_steps < 1 or len(x) <= lead_steps:
        return 1.0
    # Running maximum of the next lead_steps values, as the max of shifted copies.
    ahead = np.max(np.stack([x[k : len(x) - lead_steps + k] for k in range(1, lead_steps + 1)]), axis=0)
    base = x[: len(x) - lead_steps]
    ok = base > 0
    if not np.any(ok):
        return 1.0
    ratio = ahead[ok] / base[ok]
    return max(1.0, float(np.quantile(ratio, quantile)))
