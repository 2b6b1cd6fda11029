"""Waves of spot reclaims as the market showed them, and the non-spot floor they call for.

A reclaim wave takes spot from one zone or from several at once. Spreading spot so that any one zone's
loss leaves demand served (the optimizer's ``survive_zone_loss``) covers a one-zone wave; what a wider
wave takes before replacements serve (a boot after the notice) must be carried by capacity the market
cannot take: reserved and on-demand nodes. How much depends on three measured things, never on a flat
share:

- how often waves come and how wide they are (:class:`ReclaimWaves`, learned from availability drops and
  notices seen: the market's own record, per zone);
- how long a lost node is missed: ``boot − notice`` (a notice longer than a boot misses nothing);
- the slack the plan already carries above demand (its headroom for forecast error).

:func:`non_spot_floor` is the smallest share of the planned capacity that keeps the expected unserved
share from reclaim waves within a budget (the part of the SLO's allowed miss left to reclaims). Pure:
the caller passes times and observations.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Wave:
    """Zones that lost spot within one window, of the zones that had any when it began."""

    t: float
    lost: float
    """Zones lost, each counted by the share of its availability that went (16 → 4 is 0.75)."""
    up: int


@dataclass(slots=True)
class ReclaimWaves:
    """Availability per zone as seen over time, grouped into waves: drops within ``window_s`` of a wave's
    first drop belong to it. Waves older than ``history_s`` are forgotten."""

    window_s: float
    history_s: float = 7 * 86400.0
    waves: deque[Wave] = field(default_factory=deque)
    _last: dict[str, int] = field(default_factory=dict)
    _open_at: float = -math.inf
    _open_zones: dict[str, float] = field(default_factory=dict)
    _open_up: int = 0
    _first_seen: float | None = None
    _latest: float = -math.inf

    def observe(self, t: float, available: Mapping[str, int]) -> None:
        """Spot nodes each zone offers at ``t`` (a zone left out is not observed this time)."""
        if self._first_seen is None:
            self._first_seen = t
        self._latest = max(self._latest, t)
        up_before = sum(1 for n in self._last.values() if n > 0)
        for zone, n in available.items():
            before = self._last.get(zone, n)
            if n < before:
                self._reclaimed(t, zone, up_before, (before - n) / before)
        self._last.update(available)
        self._close(t)

    def reclaimed(self, t: float, zone: str, share: float = 1.0) -> None:
        """A notice in ``zone`` taking ``share`` of the spot held there (one node of four: 0.25): the
        market took spot there, whatever it still advertises."""
        if self._first_seen is None:
            self._first_seen = t
        self._latest = max(self._latest, t)
        up = sum(1 for n in self._last.values() if n > 0) or 1
        self._reclaimed(t, zone, up, min(max(share, 0.0), 1.0))
        self._close(t)

    def _reclaimed(self, t: float, zone: str, up: int, share: float) -> None:
        if t - self._open_at > self.window_s:
            self._flush()
            self._open_at, self._open_zones, self._open_up = t, {}, max(up, 1)
        # ``share`` is of what the zone still held: a zone falling in steps within one wave (16 → 8 → 4)
        # lost 0.75 of it, not the sum of the steps' shares.
        lost = self._open_zones.get(zone, 0.0)
        self._open_zones[zone] = lost + share * (1.0 - lost)

    def _close(self, t: float) -> None:
        if self._open_zones and t - self._open_at > self.window_s:
            self._flush()
        while self.waves and self.waves[0].t < t - self.history_s:
            self.waves.popleft()

    def _flush(self) -> None:
        if self._open_zones:
            lost = sum(self._open_zones.values())
            self.waves.append(Wave(self._open_at, lost, max(self._open_up, len(self._open_zones))))
            self._open_zones = {}

    def span_s(self) -> float:
        """How long the waves held were observed over."""
        if self._first_seen is None:
            return 0.0
        return min(self.history_s, self._latest - self._first_seen)

    def shares(self, beyond_zones: int = 0) -> list[float]:
        """The share of spot each wave took (the open wave included), spread evenly over the zones up;
        with ``beyond_zones``, only what it took beyond that many whole zones (already survived)."""
        waves = list(self.waves)
        if self._open_zones:
            lost = sum(self._open_zones.values())
            waves.append(Wave(self._open_at, lost, max(self._open_up, len(self._open_zones))))
        return [max(0.0, min(1.0, (w.lost - beyond_zones) / w.up)) for w in waves if w.up > 0]


def non_spot_floor(
    wave_shares: list[float],
    span_s: float,
    *,
    gap_s: float,
    slack: float,
    budget: float,
    step: float = 0.01,
) -> float:
    """Smallest share ``f`` of the planned capacity to hold as reserved or on-demand so that reclaim waves
    leave at most ``budget`` of demand unserved.

    A wave taking a share ``q`` of the spot fleet (``(1 − f)`` of a capacity ``C = (1 + slack) · D``)
    leaves ``max(0, q·(1 − f)·(1 + slack) − slack)`` of demand ``D`` unserved until replacements serve,
    ``gap_s`` later; waves come as often as they came over ``span_s``. 0 with no gap, no history or no
    wave; 1 when even an all-non-spot fleet's share cannot meet the budget (it always can: f = 1 loses
    nothing).
    """
    if not 0 < budget < 1:
        raise ValueError("budget must be in (0, 1)")
    if gap_s <= 0 or span_s <= 0 or not wave_shares:
        return 0.0
    slack = max(0.0, slack)
    weight = gap_s / span_s  # each wave's unserved lasts gap_s of the span

    def unserved(f: float) -> float:
        return weight * sum(max(0.0, min(1.0, q * (1 - f) * (1 + slack) - slack)) for q in wave_shares)

    f = 0.0
    while f < 1.0 and unserved(f) > budget:
        f = round(f + step, 10)
    return min(f, 1.0)
