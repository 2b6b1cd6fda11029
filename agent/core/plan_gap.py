"""The running fleet against the latest plan: what each costs per hour now, and the difference.

This is what shadow mode is read by (the agent plans beside another autoscaler and changes nothing), and it
is as meaningful in every other mode: a positive gap is what the fleet costs above the plan right now, e.g.
nodes still draining, launches not yet made, or an autoscaler that is not the agent's.

Contract:

* Nodes are counted per slot ``(instance type, pool, tier)``. Each node is priced at its own type's price
  for its tier (:meth:`InstanceType.price`), a spot node at the fresh quote for its ``(type, pool)`` when
  there is one, else at the catalog's spot price: the ledger's rule. The fleet and the plan are priced with
  the *same* prices, so the gap comes only from the nodes, never from a quote that moved since the plan
  was made.
* The fleet is what is paid for now (launched, ready or draining nodes); the plan is its targets as listed,
  reserved nodes included.
* With no plan, the plan's cost and the gap are ``None`` and the plan's node counts are zero.
* Node counts by tier always carry the three tiers.
* An unknown instance type or tier, a count that is not a non-negative integer, or a spot price that is
  not a finite number > 0 raises ``ValueError`` naming the field.

Pure and synchronous: no asyncio, nats or structlog here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.core.catalog import TIERS, Catalog, Tier
from agent.core.fleet_state import Instance
from agent.core.reconcile import Slot
from agent.core.spot_prices import Pool


@dataclass(frozen=True, slots=True)
class PlanGap:
    """Money in $/h; counts are nodes."""

    fleet_hourly_cost: float
    fleet_nodes: dict[Tier, int]
    plan_hourly_cost: float | None
    plan_nodes: dict[Tier, int]
    plan_gap_hourly: float | None
    """``fleet_hourly_cost - plan_hourly_cost``: positive when the running fleet costs more than the plan."""


def paid_slots(instances: Iterable[Instance]) -> dict[Slot, int]:
    """Nodes per slot among ``instances`` (every live instance of a FleetState is paid for)."""
    counts: dict[Slot, int] = {}
    for inst in instances:
        slot = (inst.instance_type, inst.pool, inst.tier)
        counts[slot] = counts.get(slot, 0) + 1
    return counts


def _checked_price(field: str, price: float) -> float:
    # A quote of 0 would mean "free" here, hiding real cost; the wire type already forbids it.
    if isinstance(price, bool) or not isinstance(price, int | float):
        raise ValueError(f"{field}: must be a number, got {price!r}")
    if not math.isfinite(price) or price <= 0:
        raise ValueError(f"{field}: must be a finite number > 0, got {price!r}")
    return float(price)


def slots_hourly_cost(
    catalog: Catalog, field: str, slots: Mapping[Slot, int], spot_prices: Mapping[Pool, float]
) -> float:
    """$/h of the nodes in ``slots``; ``field`` names the input in errors (``fleet``, ``plan``)."""
    total = 0.0
    for slot, count in slots.items():
        name, pool, tier = slot
        itype = catalog.types.get(name)
        if itype is None:
            raise ValueError(f"{field}[{slot!r}]: unknown instance type {name!r} (catalog {catalog.name!r})")
        if tier not in TIERS:
            raise ValueError(f"{field}[{slot!r}]: unknown tier {tier!r}, expected one of {list(TIERS)}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{field}[{slot!r}]: count must be an integer >= 0, got {count!r}")
        price = itype.price(tier)
        if tier == "spot" and (name, pool) in spot_prices:
            price = _checked_price(f"spot_prices[{(name, pool)!r}]", spot_prices[(name, pool)])
        total += price * count
    return total


def nodes_by_tier(slots: Mapping[Slot, int]) -> dict[Tier, int]:
    """Nodes per tier, the three tiers always present."""
    counts = dict.fromkeys(TIERS, 0)
    for (_name, _pool, tier), count in slots.items():
        counts[tier] += count
    return counts


def plan_gap(
    catalog: Catalog,
    fleet: Mapping[Slot, int],
    plan: Mapping[Slot, int] | None,
    spot_prices: Mapping[Pool, float],
) -> PlanGap:
    """The fleet's and the plan's $/h at the same prices (``spot_prices``: the fresh quotes, by pool), and
    the gap between them; ``plan`` None when no plan has been seen."""
    fleet_cost = slots_hourly_cost(catalog, "fleet", fleet, spot_prices)
    if plan is None:
        return PlanGap(fleet_cost, nodes_by_tier(fleet), None, nodes_by_tier({}), None)
    plan_cost = slots_hourly_cost(catalog, "plan", plan, spot_prices)
    return PlanGap(fleet_cost, nodes_by_tier(fleet), plan_cost, nodes_by_tier(plan), fleet_cost - plan_cost)
