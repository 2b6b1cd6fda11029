"""The busiest demand observed over a recent window: the base a tick sizes to.

:func:`recent_peak` over a whole history (the headroom fit, the benches); :class:`RecentPeak` as
observations arrive (the agent's tick).

Traffic swings between adjacent minutes and windows; a fleet sized to the last observation alone is
chased down and then up again, a boot behind each time. Holding the peak of the last hour (the
backtest's ``rolling`` policy, `bench/reactive_floor.py`) serves more of the demand for fewer node-hours
than a larger headroom on the last observation. Pure: the caller passes the times and observations.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from agent.core.demand import Demand


def recent_peak(history: Sequence[float] | np.ndarray, window: int) -> np.ndarray:
    """``out[t] = max(history[t − window + 1 … t])``: the base a policy holding its peak would size to."""
    x = np.asarray(history, dtype=float)
    if window <= 1 or len(x) == 0:
        return x
    padded = np.concatenate([np.full(window - 1, x[0]), x])
    return np.asarray(np.lib.stride_tricks.sliding_window_view(padded, window).max(axis=1))


class RecentPeak:
    """Observations kept for ``window_s`` seconds; :meth:`peak` is the one with the highest rate."""

    def __init__(self, window_s: float) -> None:
        if not window_s >= 0:
            raise ValueError(f"window_s must be ≥ 0, got {window_s!r}")
        self.window_s = window_s
        self._seen: deque[tuple[float, Demand]] = deque()

    def add(self, t: float, demand: Demand) -> None:
        # Monotonic deque: an observation no busier than a later one can never be the peak again.
        while self._seen and self._seen[-1][1].rps <= demand.rps:
            self._seen.pop()
        self._seen.append((t, demand))
        self._drop_before(t - self.window_s)

    def held(self) -> list[tuple[float, Demand]]:
        """The observations that may still be the peak, oldest first: :meth:`add` them again, in this
        order, to hold the same (a restart)."""
        return list(self._seen)

    def peak(self, now: float) -> Demand | None:
        """The busiest observation of the last ``window_s`` seconds; None when there is none."""
        self._drop_before(now - self.window_s)
        return self._seen[0][1] if self._seen else None

    def _drop_before(self, cutoff: float) -> None:
        while self._seen and self._seen[0][0] < cutoff:
            self._seen.popleft()


class RecentMean:
    """The mean rate of the observations of the last ``window_s`` seconds, with the latest token mix.

    Worker reports count completions, not arrivals: when a backlog drains after capacity arrives, they
    spike well above the traffic. Holding the peak of raw reports would lock onto such a spike for the
    whole window; the peak of a short mean does not.
    """

    def __init__(self, window_s: float) -> None:
        if not window_s >= 0:
            raise ValueError(f"window_s must be ≥ 0, got {window_s!r}")
        self.window_s = window_s
        self._seen: deque[tuple[float, Demand]] = deque()
        self._sum = 0.0

    def add(self, t: float, demand: Demand) -> Demand:
        """Record an observation; returns the mean of the window it closes."""
        self._seen.append((t, demand))
        self._sum += demand.rps
        while len(self._seen) > 1 and self._seen[0][0] < t - self.window_s:
            self._sum -= self._seen.popleft()[1].rps
        return Demand(max(self._sum, 0.0) / len(self._seen), demand.prompt_tokens, demand.output_tokens)
