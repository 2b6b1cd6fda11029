"""The demand a tick of the rolling policy covers: one rule for the backtest and for the agent.

From one observation per step (a minute's mean arrival rate):

- **base**: the busiest step of the last ``base_window_steps`` (traffic swinging between adjacent windows
  is not chased down and up again, a boot behind each time);
- **outage**: while that base is below ``outage_share`` of what the weekly profile expects over the coming
  lead time, the traffic is taken to be cut off upstream, not gone: the base is the expectation, so that
  its return finds the fleet running (:mod:`agent.core.outage`);
- **headroom**: the smallest factor that, on the observed history, would have left at most
  ``headroom_budget`` of demand unserved between one boot and one boot plus a tick after a decision
  (:func:`agent.core.hedging.headroom_for_budget`: the forecast's measured error), refitted hourly;
- **surge**: a step busier than the base the last plan covered asks for a plan at once.

The tick covers ``base × headroom`` now and over the coming lead time. Pure: the caller passes times and
observations, and how many main-type nodes a demand needs (to compare token mixes).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agent.core.demand import Demand
from agent.core.hedging import headroom_for_budget
from agent.core.outage import outage_return
from agent.core.profiler import DemandProfiler, ProfilerEmptyError


@dataclass(frozen=True, slots=True)
class Cover:
    """What one tick covers and why."""

    demand: Demand
    """``base × headroom``: what the tick sizes to."""
    base: Demand
    headroom: float
    outage: bool
    """The base is the profile's expectation: the measured traffic looked cut off."""

    def zone_loss_share(self, configured: float) -> float:
        """``survive_zone_loss`` for this tick: the configured share is of the demand measured (the
        base); the tick's demand carries the headroom for growth on top, which a zone's loss need not
        also be covered for."""
        return min(1.0, configured / self.headroom) if configured > 0 and self.headroom > 0 else configured


@dataclass(slots=True)
class RollingDemand:
    step_s: float = 60.0
    """One observation per step: a step's mean arrival rate."""
    lead_steps: int = 11
    """Steps from a decision until the next decision's nodes serve (a boot plus a tick)."""
    boot_steps: int = 6
    """Steps before a decision's nodes serve: until then the previous decision's capacity serves."""
    base_window_steps: int = 60
    history_steps: int = 7 * 1440
    headroom_budget: float = 0.0005
    """Share of demand the headroom may leave unserved on the history (half a 99.9% SLO's miss; the
    other half is left for reclaims)."""
    outage_share: float = 0.1
    refit_s: float = 3600.0
    """The headroom is refitted this often: a week of history moves slowly."""
    nodes: Callable[[Demand], float] = lambda d: d.rps
    """Main-type nodes a demand needs: the busiest step is the one needing the most."""
    _observed: deque[float] = field(default_factory=deque)
    _recent: deque[Demand] = field(default_factory=deque)
    _planned_base_rps: float = math.inf
    _headroom: float = 1.0
    _headroom_at: float = -math.inf

    def __post_init__(self) -> None:
        if not self.step_s > 0:
            raise ValueError("step_s must be > 0")
        if self.lead_steps < 1 or self.base_window_steps < 1 or self.history_steps < 1:
            raise ValueError("lead_steps, base_window_steps and history_steps must be ≥ 1")
        if not 1 <= self.boot_steps <= self.lead_steps:
            raise ValueError("boot_steps must be in [1, lead_steps]")
        if not 0 < self.headroom_budget < 1:
            raise ValueError("headroom_budget must be in (0, 1)")
        if not 0 <= self.outage_share < 1:
            raise ValueError("outage_share must be in [0, 1)")

    @property
    def lead_s(self) -> float:
        return self.lead_steps * self.step_s

    def observe(self, demand: Demand) -> None:
        """One step's demand (a minute's mean arrival rate)."""
        self._observed.append(demand.rps)
        if len(self._observed) > self.history_steps:
            self._observed.popleft()
        self._recent.append(demand)
        if len(self._recent) > self.base_window_steps:
            self._recent.popleft()

    def restore(self, observed: Iterable[float], recent: Iterable[Demand]) -> None:
        """Hold again what :meth:`history` returned (a restarted agent)."""
        self._observed = deque(observed, maxlen=None)
        while len(self._observed) > self.history_steps:
            self._observed.popleft()
        self._recent = deque(recent)
        while len(self._recent) > self.base_window_steps:
            self._recent.popleft()
        self._headroom_at = -math.inf

    def history(self) -> tuple[list[float], list[Demand]]:
        """The observations held: every step's rate, and the base window's demands."""
        return list(self._observed), list(self._recent)

    def base(self, fallback: Demand) -> Demand:
        """The busiest step of the base window (by the nodes it needs); ``fallback`` with none held."""
        return max(self._recent, key=self.nodes, default=fallback)

    def surged(self, demand: Demand) -> bool:
        """This step is busier than the base the last plan covered: plan now, not at the next tick."""
        return demand.rps > self._planned_base_rps

    def headroom(self, t: float) -> float:
        if t - self._headroom_at >= self.refit_s:
            self._headroom = headroom_for_budget(
                list(self._observed),
                self.lead_steps,
                self.headroom_budget,
                first_step=self.boot_steps,
                base_window=self.base_window_steps,
            )
            self._headroom_at = t
        return self._headroom

    def cover(
        self,
        t: float,
        fallback: Demand,
        expected: Demand | Callable[[], Demand | None] | None = None,
    ) -> Cover:
        """What the tick at ``t`` sizes to. ``fallback``: the demand now, when nothing was observed yet;
        ``expected``: the profile's expectation over the coming lead time (None: no profile), or a function
        giving it, asked only when the base is below ``outage_share`` of the busiest step held (an outage
        is a fall from traffic seen; a profile's forecast costs a millisecond, a tick a few)."""
        base = self.base(fallback)
        if callable(expected):
            fell = self.outage_share > 0 and base.rps < self.outage_share * max(self._observed, default=0.0)
            expected = expected() if fell else None
        held = outage_return(base, expected, self.outage_share)
        self._planned_base_rps = held.rps
        headroom = self.headroom(t)
        return Cover(held.scaled(headroom), held, headroom, held is not base)


def expected_over(profiler: DemandProfiler, t: float, span_s: float) -> Demand | None:
    """The profile's P50 at its busiest over ``[t, t + span_s]``: what the traffic would be without an
    outage (None without a profile)."""
    try:
        step = profiler.bin_minutes * 60.0
        points = [t + k * step for k in range(int(span_s // step) + 1)] + [t + span_s]
        return max((profiler.predict(at).p50 for at in points), key=lambda d: d.rps)
    except ProfilerEmptyError:
        return None
