"""The backtest's queue score: a strategy's capacity replayed as a FIFO queue.

The per-minute score counts demand above a minute's capacity as lost. A serving system queues it
instead: a short dip is absorbed by a backlog that drains once capacity returns, and a long one makes
every request behind it wait. This score measures that: the share of tokens served within a delay of
their arrival.

Model: a fluid, work-conserving, first-in-first-out server. Within each step, work arrives at a constant
``arrivals[i]`` tokens/s and the fleet serves up to ``capacity[i]`` tokens/s, its capacity at the SLO's
utilization target (the rate at which a node still meets the latency SLO, so a queued token's wait adds
to a latency that is already within it). Fluid, because a minute holds thousands of requests: the
queue's shape, not single requests, decides the wait. The backlog follows Lindley's recursion on a grid
of ``substeps`` per step; a unit of work arriving at ``a`` waits until the capacity after ``a`` has
served the backlog ahead of it: ``w(a) = inf{w : M(a + w) - M(a) >= Q(a)}``, ``M`` the cumulative
capacity. Work still queued when the trace ends never finishes: its wait is infinite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PERCENTILE = 0.99
# A backlog below this share of the trace's total work is rounding from the cumulative sums, not a queue.
_RELATIVE_TOLERANCE = 1e-9


@dataclass(frozen=True, slots=True)
class QueueScore:
    served_within: float
    """Share of tokens (token-weighted) whose wait is at most ``delay_s``; 1.0 with no arrivals."""
    p99_delay_s: float
    """Token-weighted 99th percentile of the wait, seconds (``math.inf`` when over 1% never finishes)."""
    delay_s: float
    max_backlog_s: float
    """The largest backlog in seconds of that moment's capacity (``math.inf`` if it had none)."""


def queue_score(
    arrivals: np.ndarray,
    capacity: np.ndarray,
    step_s: float,
    delay_s: float,
    *,
    substeps: int = 12,
) -> QueueScore:
    """Score ``arrivals[i]`` against ``capacity[i]`` (tokens/s, constant in step ``i``) as a FIFO queue."""
    lam = np.asarray(arrivals, dtype=float)
    mu = np.asarray(capacity, dtype=float)
    if lam.ndim != 1 or lam.shape != mu.shape:
        raise ValueError(f"arrivals {lam.shape} and capacity {mu.shape} must be 1-D of the same length")
    if not (np.all(np.isfinite(lam)) and np.all(np.isfinite(mu)) and np.all(lam >= 0) and np.all(mu >= 0)):
        raise ValueError("arrivals and capacity must be finite and ≥ 0")
    if not (step_s > 0 and delay_s >= 0 and substeps >= 1):
        raise ValueError("step_s must be > 0, delay_s ≥ 0 and substeps ≥ 1")
    dt = step_s / substeps
    lam = np.repeat(lam, substeps)
    mu = np.repeat(mu, substeps)
    work = lam * dt
    total = float(work.sum())
    if total <= 0:
        return QueueScore(1.0, 0.0, delay_s, 0.0)

    # Backlog at the grid's points (Q[0] = 0), by Lindley's recursion in closed form.
    s = np.concatenate(([0.0], np.cumsum(work - mu * dt)))
    q = s - np.minimum(np.minimum.accumulate(s), 0.0)
    served = np.concatenate(([0.0], np.cumsum(mu * dt)))
    tolerance = _RELATIVE_TOLERANCE * max(total, float(served[-1]))
    q[q <= tolerance] = 0.0

    # Each sub-step's work waits as its midpoint's does (rates are constant within it, so Q is exact there).
    q_mid = np.maximum(q[:-1] + (work - mu * dt) / 2, 0.0)
    q_mid[q_mid <= tolerance] = 0.0
    wait = np.zeros(len(work))
    queued = np.flatnonzero(q_mid > 0)
    if len(queued):
        mid = (queued + 0.5) * dt
        due = served[queued] + mu[queued] * dt / 2 + q_mid[queued]
        # The first grid point by which the capacity has served the work due, then linear within its sub-step.
        j = np.searchsorted(served, due, side="left")
        done = j < len(served)
        jj = j[done]
        before = served[jj - 1]
        finish = (jj - 1) * dt + (due[done] - before) / (served[jj] - before) * dt
        wait[queued] = math.inf
        wait[queued[done]] = np.maximum(finish - mid[done], 0.0)

    within = float(work[wait <= delay_s].sum()) / total
    return QueueScore(
        served_within=min(within, 1.0),
        p99_delay_s=_weighted_percentile(wait, work, total, PERCENTILE),
        delay_s=delay_s,
        max_backlog_s=_max_backlog_s(q, mu),
    )


def _weighted_percentile(values: np.ndarray, weights: np.ndarray, total: float, p: float) -> float:
    """The smallest value at or below which ``p`` of the weight lies. Most waits are zero: only the
    positive ones are sorted."""
    positive = values > 0
    rest = float(weights[positive].sum())
    if total - rest >= p * total:
        return 0.0
    order = np.argsort(values[positive], kind="stable")
    cumulative = (total - rest) + np.cumsum(weights[positive][order])
    k = min(int(np.searchsorted(cumulative, p * total, side="left")), len(order) - 1)
    return float(values[positive][order][k])


def _max_backlog_s(q: np.ndarray, mu: np.ndarray) -> float:
    """Backlog over the capacity serving it: within a sub-step the backlog is linear and the capacity
    constant, so the largest is at one of its ends."""
    peak = np.maximum(q[:-1], q[1:])
    busy = peak > 0
    if not busy.any():
        return 0.0
    if np.any(mu[busy] <= 0):
        return math.inf
    return float(np.max(peak[busy] / mu[busy]))
