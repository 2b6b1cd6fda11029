"""The cost ledger: what the fleet has cost, per tier and per type, and what it saved.

Contract:

* :meth:`CostLedger.record` takes one interval: its length in hours, the number of instances held during
  it per ``(instance type, tier)`` (an average, so it may be fractional), and the tokens and requests
  served in it. Every instance is priced at *its own type's* price for its tier
  (:meth:`InstanceType.price`); ``spot_prices`` overrides the spot $/h of the named types for that
  interval only (a live spot feed). It returns the interval's cost.
* Input is validated in full before anything is added: an unknown type or tier, a negative, NaN or
  infinite amount, or an interval that starts before the previous timed one ended raises ``ValueError``
  naming the field, and leaves the ledger exactly as it was.
* The ledger keeps running sums only, at most one per ``(type, tier)`` of the catalog: its memory does
  not grow with the number of records and :meth:`CostLedger.report` costs O(catalog), not O(records).
* The on-demand equivalent is the same instance-hours, type by type, priced on-demand. It is summed
  interval by interval in the same order as the real cost, so with catalog prices (no tier dearer than
  on-demand) ``total_cost <= ondemand_equivalent_cost`` holds exactly, not just up to rounding. A live
  spot price above on-demand is recorded as paid, and then savings can be negative.
* Reserved instances are paid whether used or not. The ledger prices what it is told is held; the caller
  must pass the reserved count for every interval, busy or idle.
* :meth:`CostLedger.state` and :meth:`CostLedger.restore` carry the running sums across a restart (a
  :class:`LedgerState`, msgspec-encodable); a state from another catalog, or with an amount that is not
  finite and non-negative, raises ``ValueError`` and leaves the ledger as it was.

Pure and synchronous: no asyncio, nats or structlog here.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from agent.core.catalog import HOURS_PER_MONTH, TIERS, Catalog, Tier

_TOKENS_PER_MTOK = 1_000_000.0

# Interval starts are hours on some clock (possibly since the epoch, ~5e5 h, where a float resolves
# ~1e-10 h); a start this much before the previous end is rounding, not an overlap.
_OVERLAP_TOLERANCE_H = 1e-6


def _amount(field: str, value: object) -> float:
    """A finite, non-negative number as float, or ``ValueError`` naming ``field``."""
    # bool is an int subclass, but True instances is always a caller bug.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{field}: must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{field}: must be a finite number >= 0, got {value!r}")
    return number


class LedgerState(msgspec.Struct, frozen=True):
    """The running sums of a :class:`CostLedger`, as saved across a restart."""

    catalog: str
    cost: float
    ondemand_cost: float
    hours: float
    tokens: float
    requests: float
    intervals: int
    start_h: float | None
    end_h: float | None
    instance_hours: list[tuple[str, str, float]]
    """(type, tier, instance-hours), one per pair used."""
    pair_cost: list[tuple[str, str, float]]


@dataclass(frozen=True, slots=True)
class CostReport:
    """Totals over every interval recorded so far. Money in USD, time in hours."""

    total_cost: float
    hours: float
    avg_hourly_cost: float
    tokens: float
    requests: float
    cost_per_mtok: float | None
    cost_per_request: float | None
    instance_hours: dict[Tier, float]
    instance_hours_by_type: dict[str, dict[Tier, float]]
    cost_by_tier: dict[Tier, float]
    cost_by_type: dict[str, float]
    spot_fraction: float
    ondemand_equivalent_cost: float
    savings: float
    savings_fraction: float
    monthly_cost: float
    intervals: int
    period_start_h: float | None
    period_end_h: float | None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able types only (str keys, float/int/None values, nested dicts)."""
        return {
            "total_cost": self.total_cost,
            "hours": self.hours,
            "avg_hourly_cost": self.avg_hourly_cost,
            "tokens": self.tokens,
            "requests": self.requests,
            "cost_per_mtok": self.cost_per_mtok,
            "cost_per_request": self.cost_per_request,
            "instance_hours": {str(t): float(h) for t, h in self.instance_hours.items()},
            "instance_hours_by_type": {
                name: {str(t): float(h) for t, h in tiers.items()}
                for name, tiers in self.instance_hours_by_type.items()
            },
            "cost_by_tier": {str(t): float(c) for t, c in self.cost_by_tier.items()},
            "cost_by_type": {name: float(c) for name, c in self.cost_by_type.items()},
            "spot_fraction": self.spot_fraction,
            "ondemand_equivalent_cost": self.ondemand_equivalent_cost,
            "savings": self.savings,
            "savings_fraction": self.savings_fraction,
            "monthly_cost": self.monthly_cost,
            "intervals": self.intervals,
            "period_start_h": self.period_start_h,
            "period_end_h": self.period_end_h,
        }


class CostLedger:
    """Running cost accounts for one fleet priced from one catalog (see the module docstring)."""

    # Slots make the bounded state explicit: nothing here can quietly become a per-record list.
    __slots__ = (
        "_catalog",
        "_cost",
        "_end_h",
        "_hours",
        "_instance_hours",
        "_intervals",
        "_ondemand_cost",
        "_order",
        "_pair_cost",
        "_requests",
        "_start_h",
        "_tokens",
    )

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        # A fixed summation order (catalog order, then tier order) makes a record's cost independent of
        # the caller's mapping order, and keeps real and on-demand sums term-by-term comparable.
        pairs = [(name, tier) for name in catalog.types for tier in TIERS]
        self._order: dict[tuple[str, Tier], int] = {pair: i for i, pair in enumerate(pairs)}
        self._cost = 0.0
        self._ondemand_cost = 0.0
        self._hours = 0.0
        self._tokens = 0.0
        self._requests = 0.0
        self._intervals = 0
        self._start_h: float | None = None
        self._end_h: float | None = None
        # Keyed by (type, tier): bounded by the catalog's size, created on first use.
        self._instance_hours: dict[tuple[str, Tier], float] = {}
        self._pair_cost: dict[tuple[str, Tier], float] = {}

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    def _check_key(self, key: object) -> tuple[str, Tier]:
        if not (isinstance(key, tuple) and len(key) == 2):
            raise ValueError(f"counts: key must be an (instance type, tier) pair, got {key!r}")
        name, tier = key
        if not isinstance(name, str) or name not in self._catalog.types:
            raise ValueError(
                f"counts: unknown instance type {name!r} (not in catalog {self._catalog.name!r})"
            )
        if tier not in TIERS:
            raise ValueError(f"counts[{key!r}]: unknown tier {tier!r}, expected one of {list(TIERS)}")
        return (name, tier)

    def _check_spot_prices(self, spot_prices: Mapping[str, float] | None) -> dict[str, float]:
        if spot_prices is None:
            return {}
        checked: dict[str, float] = {}
        for name, price in spot_prices.items():
            if not isinstance(name, str) or name not in self._catalog.types:
                raise ValueError(
                    f"spot_prices: unknown instance type {name!r} (not in catalog {self._catalog.name!r})"
                )
            value = _amount(f"spot_prices[{name!r}]", price)
            # A feed that reads 0 means "no quote", not "free"; pricing nodes at 0 would hide real cost.
            if value == 0:
                raise ValueError(f"spot_prices[{name!r}]: must be > 0, got {price!r}")
            checked[name] = value
        return checked

    def record(
        self,
        duration_h: float,
        counts: Mapping[tuple[str, Tier], float],
        *,
        tokens: float = 0.0,
        requests: float = 0.0,
        spot_prices: Mapping[str, float] | None = None,
        start_h: float | None = None,
    ) -> float:
        """Add one interval and return its cost; on bad input raise ``ValueError`` and change nothing."""
        duration = _amount("duration_h", duration_h)
        served_tokens = _amount("tokens", tokens)
        served_requests = _amount("requests", requests)
        start: float | None = None
        if start_h is not None:
            if isinstance(start_h, bool) or not isinstance(start_h, numbers.Real):
                raise ValueError(f"start_h: must be a number, got {start_h!r}")
            start = float(start_h)
            if not math.isfinite(start):
                raise ValueError(f"start_h: must be finite, got {start_h!r}")
            # Overlapping intervals would price the same held nodes twice.
            if self._end_h is not None and start < self._end_h - _OVERLAP_TOLERANCE_H:
                raise ValueError(
                    f"start_h: interval starts at {start!r} h, "
                    f"before the previous one ended at {self._end_h!r} h"
                )
        overrides = self._check_spot_prices(spot_prices)

        held: list[tuple[int, tuple[str, Tier], float]] = []
        for key, count in counts.items():
            pair = self._check_key(key)
            held.append((self._order[pair], pair, _amount(f"counts[{pair!r}]", count)))
        held.sort()

        # Everything is valid: compute the interval's terms, then commit them all at once.
        cost = 0.0
        ondemand_cost = 0.0
        terms: list[tuple[tuple[str, Tier], float, float]] = []
        for _, pair, count in held:
            instance_hours = count * duration
            if instance_hours == 0:
                continue
            name, tier = pair
            itype = self._catalog.types[name]
            price = overrides.get(name, itype.spot_hourly) if tier == "spot" else itype.price(tier)
            term = instance_hours * price
            cost += term
            ondemand_cost += instance_hours * itype.ondemand_hourly
            terms.append((pair, instance_hours, term))

        for pair, instance_hours, term in terms:
            self._instance_hours[pair] = self._instance_hours.get(pair, 0.0) + instance_hours
            self._pair_cost[pair] = self._pair_cost.get(pair, 0.0) + term
        self._cost += cost
        self._ondemand_cost += ondemand_cost
        self._hours += duration
        self._tokens += served_tokens
        self._requests += served_requests
        self._intervals += 1
        if start is not None:
            end = start + duration
            self._start_h = start if self._start_h is None else self._start_h
            self._end_h = end if self._end_h is None else max(self._end_h, end)
        return cost

    def state(self) -> LedgerState:
        return LedgerState(
            catalog=self._catalog.name,
            cost=self._cost,
            ondemand_cost=self._ondemand_cost,
            hours=self._hours,
            tokens=self._tokens,
            requests=self._requests,
            intervals=self._intervals,
            start_h=self._start_h,
            end_h=self._end_h,
            instance_hours=[(n, t, h) for (n, t), h in self._instance_hours.items()],
            pair_cost=[(n, t, c) for (n, t), c in self._pair_cost.items()],
        )

    def restore(self, state: LedgerState) -> None:
        """Continue from ``state`` (see the module docstring); ``ValueError`` and no change when it does
        not fit this ledger's catalog."""
        if state.catalog != self._catalog.name:
            raise ValueError(
                f"catalog: saved for {state.catalog!r}, this ledger prices {self._catalog.name!r}"
            )
        sums = {
            name: _amount(name, getattr(state, name))
            for name in ("cost", "ondemand_cost", "hours", "tokens", "requests", "intervals")
        }
        for name, hours in (("start_h", state.start_h), ("end_h", state.end_h)):
            if hours is not None:
                _amount(name, hours)
        per_pair: list[dict[tuple[str, Tier], float]] = []
        for field, rows in (("instance_hours", state.instance_hours), ("pair_cost", state.pair_cost)):
            per_pair.append(
                {self._check_key((n, t)): _amount(f"{field}[{n!r}, {t!r}]", v) for n, t, v in rows}
            )
        if per_pair[0].keys() != per_pair[1].keys():
            raise ValueError("instance_hours, pair_cost: not the same (type, tier) pairs")
        self._cost, self._ondemand_cost, self._hours = sums["cost"], sums["ondemand_cost"], sums["hours"]
        self._tokens, self._requests = sums["tokens"], sums["requests"]
        self._intervals = int(sums["intervals"])
        self._start_h, self._end_h = state.start_h, state.end_h
        self._instance_hours, self._pair_cost = per_pair

    def report(self) -> CostReport:
        """The totals so far; O(catalog size), independent of how many intervals were recorded."""
        instance_hours: dict[Tier, float] = dict.fromkeys(TIERS, 0.0)
        cost_by_tier: dict[Tier, float] = dict.fromkeys(TIERS, 0.0)
        by_type: dict[str, dict[Tier, float]] = {}
        cost_by_type: dict[str, float] = {}
        for pair in sorted(self._instance_hours, key=self._order.__getitem__):
            name, tier = pair
            hours = self._instance_hours[pair]
            pair_cost = self._pair_cost[pair]
            instance_hours[tier] += hours
            cost_by_tier[tier] += pair_cost
            by_type.setdefault(name, dict.fromkeys(TIERS, 0.0))[tier] += hours
            cost_by_type[name] = cost_by_type.get(name, 0.0) + pair_cost

        all_instance_hours = sum(instance_hours.values())
        avg_hourly = self._cost / self._hours if self._hours > 0 else 0.0
        savings = self._ondemand_cost - self._cost
        return CostReport(
            total_cost=self._cost,
            hours=self._hours,
            avg_hourly_cost=avg_hourly,
            tokens=self._tokens,
            requests=self._requests,
            cost_per_mtok=self._cost / (self._tokens / _TOKENS_PER_MTOK) if self._tokens > 0 else None,
            cost_per_request=self._cost / self._requests if self._requests > 0 else None,
            instance_hours=instance_hours,
            instance_hours_by_type=by_type,
            cost_by_tier=cost_by_tier,
            cost_by_type=cost_by_type,
            spot_fraction=instance_hours["spot"] / all_instance_hours if all_instance_hours > 0 else 0.0,
            ondemand_equivalent_cost=self._ondemand_cost,
            savings=savings,
            savings_fraction=savings / self._ondemand_cost if self._ondemand_cost > 0 else 0.0,
            monthly_cost=avg_hourly * HOURS_PER_MONTH,
            intervals=self._intervals,
            period_start_h=self._start_h,
            period_end_h=self._end_h,
        )
