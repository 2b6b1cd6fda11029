"""The fleet reconcile: what to launch, release and take back so that a fleet meets a plan.

``reconcile(fleet, targets, boot_s=...)`` is a pure function of the fleet now (:class:`FleetNow`) and a
plan's node counts per (type, pool, tier); it returns the decisions, each with its reason, in the order to
apply them. Every actuator applies its result and decides nothing itself: the backtest's replay
(:mod:`agent.sim.replay`), the demo's simulated cloud (:mod:`agent.sim.cloud`), and the real ones to come
(local Dynamo workers, Kubernetes), each of which only describes its nodes and carries the decisions out.

The rule, for each (type, pool, tier) the plan lists (a slot it does not list is left as it is; reserved
slots too: only commitment planning changes reserved nodes):

1. **Take back before launching.** A node *held* counts against its slot's target. When fewer are held
   than the target, nodes on their way out (*leaving*, released by an earlier plan and still serving) are
   taken back first: the one that would leave last first, so those still leaving go as early as they were
   to (then the newest).
2. **Launch the rest** of the shortfall. A spot launch only as far as the pool's market has room: the
   market's availability less the spot nodes holding the pool (held, leaving, or released and still
   draining; a reclaimed node no longer holds it). What does not fit is refused (:class:`Refuse`).
3. **Release the surplus, newest first.** A node still booting goes at once: it never served. A running
   node is released make before break: it serves on until the nodes booting at that moment (this plan's
   launches included, any slot) are ready, and leaves then, even if they are reclaimed meanwhile (a later
   plan, woken by the notice, may take it back). With nothing booting, or ``make_before_break=False``, it
   goes at once.

Hence, per slot, the nodes held afterwards are exactly the target, or fewer when the spot market has no
room; and until every node booting afterwards is ready, no node that was serving stops serving.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from agent.core.catalog import Catalog, Tier

Slot = tuple[str, str, Tier]
"""(instance type, pool, tier)."""

Standing = Literal["held", "leaving", "released", "reclaimed"]
"""Where a node stands with the plans:

- ``held``: counts against its slot's target (booting or running);
- ``leaving``: released make before break by an earlier plan, serving until its ``leave_at``; may be taken
  back;
- ``released``: draining after a release; no plan's any more, but a spot node still holds its pool's market
  capacity until it is gone;
- ``reclaimed``: under a market notice; neither a plan's nor the market's."""

HOLDS_MARKET: frozenset[Standing] = frozenset({"held", "leaving", "released"})
"""The standings in which a spot node holds its pool's market capacity (the market reclaims among these)."""


@dataclass(frozen=True, slots=True)
class NodeNow:
    node_id: str
    slot: Slot
    launch_order: float
    """Grows with every launch (a sequence number, or a launch time): the newest node has the highest."""
    ready_at: float | None = None
    """None: running (serving now). Else booting: when it is expected to serve."""
    standing: Standing = "held"
    leave_at: float | None = None
    """A leaving node: when it leaves."""

    def __post_init__(self) -> None:
        if (self.standing == "leaving") != (self.leave_at is not None):
            raise ValueError(
                f"node {self.node_id}: a leave_at goes with standing 'leaving', and only with it"
            )


@dataclass(frozen=True, slots=True)
class FleetNow:
    """The fleet as an actuator sees it at ``now``: every node not yet gone, and the spot market."""

    now: float
    nodes: Sequence[NodeNow]
    spot_available: Mapping[tuple[str, str], int | None] = field(default_factory=dict)
    """Spot nodes each (type, pool) allows in all; a pool not listed (or None) has no limit."""


@dataclass(frozen=True, slots=True)
class TakeBack:
    """A leaving node is held again: it no longer leaves."""

    node_id: str
    slot: Slot
    reason: str


@dataclass(frozen=True, slots=True)
class Launch:
    count: int
    slot: Slot
    ready_at: float
    """When the new nodes are expected to serve (``now + boot_s``)."""
    reason: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """Spot launches the market has no room for: nothing to do but count them."""

    count: int
    slot: Slot
    available: int
    holding: int
    reason: str


@dataclass(frozen=True, slots=True)
class Release:
    node_id: str
    slot: Slot
    leave_at: float | None
    """None: at once. Else the node keeps serving (and costing) until then, and leaves (make before
    break); until then it is *leaving*."""
    reason: str


Decision = TakeBack | Launch | Refuse | Release


def catalog_targets(
    targets: Mapping[Slot, int], catalog: Catalog
) -> tuple[dict[Slot, int], list[tuple[str, str]]]:
    """A plan's spot and on-demand targets for the types and pools ``catalog`` knows (reserved ones are
    left out: only commitment planning changes reserved nodes), and the (type, pool) pairs it does not."""
    known: dict[Slot, int] = {}
    unknown: list[tuple[str, str]] = []
    for (name, pool, tier), count in targets.items():
        if tier == "reserved":
            continue
        itype = catalog.types.get(name)
        if itype is None or pool not in itype.pools:
            unknown.append((name, pool))
            continue
        known[(name, pool, tier)] = count
    return known, unknown


def reconcile(
    fleet: FleetNow,
    targets: Mapping[Slot, int],
    *,
    boot_s: float,
    make_before_break: bool = True,
) -> tuple[Decision, ...]:
    """The decisions that bring ``fleet`` to ``targets``, in the order to apply them: per slot in the
    order of ``targets``, take-backs, then a launch and a refusal; then every release. A new node is
    ready ``boot_s`` after ``now``."""
    by_slot: dict[Slot, list[NodeNow]] = {}
    for node in fleet.nodes:
        by_slot.setdefault(node.slot, []).append(node)
    grown: list[Decision] = []
    surplus: list[tuple[NodeNow, str]] = []
    for slot, count in targets.items():
        if count < 0:
            raise ValueError(f"target for {slot} must be ≥ 0, got {count!r}")
        if slot[2] == "reserved":
            continue
        mine = by_slot.get(slot, [])
        held = _newest_first([n for n in mine if n.standing == "held"])
        if len(held) > count:
            why = f"target {count}, {len(held)} held: surplus, newest first"
            surplus.extend((node, why) for node in held[: len(held) - count])
        else:
            grown.extend(_grow(fleet, mine, slot, count, len(held), boot_s))
    leave_at = _last_boot(fleet, grown, {node.node_id for node, _ in surplus}) if make_before_break else None
    return (*grown, *(_release(node, why, leave_at, make_before_break) for node, why in surplus))


def _grow(
    fleet: FleetNow, mine: Sequence[NodeNow], slot: Slot, count: int, held: int, boot_s: float
) -> Iterable[Decision]:
    """Take back, then launch what the market has room for, then refuse the rest."""
    leaving = sorted((n for n in mine if n.standing == "leaving"), key=_leaves_last, reverse=True)
    back = leaving[: count - held]
    for node in back:
        yield TakeBack(node.node_id, slot, f"target {count}, {held} held: taken back before launching")
    wanted = count - held - len(back)
    if wanted == 0:
        return
    room = _spot_room(fleet, mine, slot)
    fits = wanted if room is None else max(0, min(wanted, room[0] - room[1]))
    if fits:
        why = f"target {count}, {held + len(back)} held"
        yield Launch(fits, slot, fleet.now + boot_s, f"{why} after taking back" if back else why)
    if room is not None and fits < wanted:
        available, holding = room
        why = f"the spot market allows {available} in the pool and {holding} hold it"
        yield Refuse(wanted - fits, slot, available, holding, why)


def _spot_room(fleet: FleetNow, mine: Sequence[NodeNow], slot: Slot) -> tuple[int, int] | None:
    """(nodes the market allows, nodes holding it) for a spot slot with a limit; None: no limit."""
    name, pool, tier = slot
    available = fleet.spot_available.get((name, pool)) if tier == "spot" else None
    if available is None:
        return None
    return available, sum(1 for n in mine if n.standing in HOLDS_MARKET)


def _last_boot(fleet: FleetNow, grown: Sequence[Decision], released: set[str]) -> float | None:
    """When the last node booting after these decisions is ready (this plan's launches included; nodes
    released now excluded); None when nothing boots."""
    launched = [d.ready_at for d in grown if isinstance(d, Launch) and d.ready_at > fleet.now]
    booting = [
        n.ready_at
        for n in fleet.nodes
        if n.standing == "held" and n.ready_at is not None and n.node_id not in released
    ]
    return max(launched + booting, default=None)


def _release(node: NodeNow, why: str, leave_at: float | None, make_before_break: bool) -> Release:
    if node.ready_at is not None:
        return Release(node.node_id, node.slot, None, f"{why}; still booting: at once")
    if leave_at is not None:
        return Release(
            node.node_id, node.slot, leave_at, f"{why}; serves until the nodes booting now are ready"
        )
    at_once = "nothing booting" if make_before_break else "no make before break"
    return Release(node.node_id, node.slot, None, f"{why}; {at_once}: at once")


def _leaves_last(node: NodeNow) -> tuple[float, float]:
    return (node.leave_at if node.leave_at is not None else 0.0, node.launch_order)


def _newest_first(nodes: list[NodeNow]) -> list[NodeNow]:
    return sorted(nodes, key=lambda n: n.launch_order, reverse=True)
