"""Headroom for the time a new node needs to arrive: how much demand may grow before it serves.

A decision made now is felt only after a boot (minutes) plus the wait for the next tick. Over that lead
time demand moves; capacity sized to the demand measured now, times a headroom ``h``, leaves unserved
``Σ_t Σ_k (d[t+k] − h·d[t])⁺`` of ``Σ_t Σ_k d[t+k]`` (k = 1 … lead). :func:`headroom_for_budget` finds the
smallest ``h`` whose unserved share, on the observed history, stays within a budget (the part of the
SLO's allowed miss given to demand surprises). Moments of (near) zero traffic are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Below this share of the typical (median) rate a moment counts as an outage, or its edge.
_OUTAGE_SHARE = 0.05


def headroom_for_budget(
    history: Sequence[float], lead_steps: int, budget: float, *, ceiling: float = 3.0
) -> float:
    """Smallest headroom factor ≥ 1 whose unserved share over ``lead_steps`` stays within ``budget``.

    1.0 with too little history; never above ``ceiling`` (a history of outages could ask for anything).
    """
    if not 0 < budget < 1:
        raise ValueError("budget must be in (0, 1)")
    x = np.asarray(history, dtype=float)
    if lead_steps < 1 or len(x) <= lead_steps:
        return 1.0
    base = x[: len(x) - lead_steps]
    ahead = np.stack([x[k : len(x) - lead_steps + k] for k in range(1, lead_steps + 1)])
    # From (almost) no traffic, an outage, no factor predicts the recovery: other rules (the non-spot
    # floor, the step-down limit) carry those moments, so they do not set the headroom.
    positive = x[x > 0]
    live = base > (_OUTAGE_SHARE * float(np.median(positive)) if positive.size else 0.0)
    base, ahead = base[live], ahead[:, live]
    total = float(ahead.sum())
    if total <= 0:
        return 1.0

    def unserved(h: float) -> float:
        return float(np.maximum(ahead - h * base, 0.0).sum()) / total

    if unserved(1.0) <= budget:
        return 1.0
    if unserved(ceiling) > budget:
        return ceiling
    lo, hi = 1.0, ceiling  # unserved() falls as h grows: bisect
    for _ in range(30):
        mid = (lo + hi) / 2
        if unserved(mid) <= budget:
            hi = mid
        else:
            lo = mid
    return hi
