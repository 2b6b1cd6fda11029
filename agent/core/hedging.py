"""Headroom for the time a new node needs to arrive: how much demand may grow before it serves.

A decision made now is felt only after a boot (minutes) and lasts until the next decision's nodes serve.
Over that time demand moves; capacity sized to a base ``b[t]`` (the demand measured now, or its peak over
the last ``base_window`` steps) times a headroom ``h`` leaves unserved ``Σ_t Σ_k (d[t+k] − h·b[t])⁺`` of
``Σ_t Σ_k d[t+k]``, for ``k`` from ``first_step`` (the boot: earlier steps are the previous decision's)
to ``lead_steps`` (boot plus the time to the next decision). :func:`headroom_for_budget` finds the smallest
``h`` whose unserved share, on the observed history, stays within a budget (the part of the SLO's allowed
miss given to demand surprises). Moments of (near) zero traffic are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agent.core.recent_peak import recent_peak

# Below this share of the typical (median) rate a moment counts as an outage, or its edge.
_OUTAGE_SHARE = 0.05


def headroom_for_budget(
    history: Sequence[float],
    lead_steps: int,
    budget: float,
    *,
    ceiling: float = 3.0,
    first_step: int = 1,
    base_window: int = 1,
) -> float:
    """Smallest headroom factor ≥ 1 whose unserved share over steps ``first_step … lead_steps`` ahead
    of a decision, sized to the peak of the last ``base_window`` steps, stays within ``budget``.

    1.0 with too little history; never above ``ceiling`` (a history of outages could ask for anything).
    """
    if not 0 < budget < 1:
        raise ValueError("budget must be in (0, 1)")
    if not 1 <= first_step <= max(lead_steps, 1):
        raise ValueError("first_step must be in [1, lead_steps]")
    x = np.asarray(history, dtype=float)
    if lead_steps < 1 or len(x) <= lead_steps:
        return 1.0
    base = recent_peak(x, base_window)[: len(x) - lead_steps]
    ahead = np.stack([x[k : len(x) - lead_steps + k] for k in range(first_step, lead_steps + 1)])
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
