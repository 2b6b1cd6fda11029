"""The fleet as the actuator reports it: one record per live instance, built from lifecycle events.

Lifecycle: ``launched → ready → draining → terminated``. An instance is paid for from ``launched`` until
``terminated`` (:meth:`FleetState.paid_counts`, what the ledger prices) and counts as capacity the
optimizer can keep while ``launched`` or ``ready`` (:meth:`FleetState.fleet`); a draining node is leaving.

Events may arrive late or twice (NATS is at-most-once per subscriber, actuators retry): an event that
would move an instance backwards (``ready`` after ``draining``) is ignored, and ``terminated`` is final,
remembered for the last ``remember_terminated`` instances. Unknown types, or spot/on-demand pools that
the catalog does not list, raise ``ValueError`` naming the field; nothing is changed then.

Memory is bounded whatever ids a client invents: at most ``max_live`` instances are held. A new one beyond
that first evicts the instance that has been draining longest (it is leaving anyway, and a drain whose node
never reports ``terminated`` would otherwise stay for ever), counted in :attr:`FleetState.evicted`; with
none draining, the new instance is refused (``ValueError``): the nodes already known, and paid for, stay.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final, Literal, get_args

import msgspec

from agent.core.catalog import Catalog, Tier
from agent.core.optimizer import Fleet

InstanceState = Literal["launched", "ready", "draining", "terminated"]
_ORDER: Final[dict[str, int]] = {"launched": 0, "ready": 1, "draining": 2, "terminated": 3}
_SNAPSHOT_GONE: Final = 1_000
"""Terminated ids a snapshot keeps: enough to ignore the late events of a restart's minutes."""


class FleetSnapshot(msgspec.Struct, frozen=True):
    live: list[tuple[str, str, str, str, str, float]]
    """(instance id, type, pool, tier, state, since) per live instance."""
    gone: list[str]
    """Terminated ids, oldest first."""


@dataclass(frozen=True, slots=True)
class Instance:
    instance_id: str
    instance_type: str
    pool: str
    tier: Tier
    state: InstanceState
    since: float


class FleetState:
    def __init__(self, catalog: Catalog, remember_terminated: int = 10_000, max_live: int = 10_000) -> None:
        self.catalog = catalog
        self._live: dict[str, Instance] = {}
        self._draining: dict[str, None] = {}
        """Draining ids in the order they began draining: the first is evicted first."""
        self._gone: set[str] = set()
        self._gone_order: deque[str] = deque()
        self._remember = remember_terminated
        self._max_live = max_live
        self.evicted = 0
        """Draining instances forgotten to stay within ``max_live``."""

    def check(self, instance_type: str, pool: str, tier: Tier) -> None:
        itype = self.catalog.types.get(instance_type)
        if itype is None:
            raise ValueError(
                f"instance_type: {instance_type!r} is not in catalog {self.catalog.name!r} "
                f"(known: {', '.join(self.catalog.types)})"
            )
        if tier != "reserved" and pool not in itype.pools:
            raise ValueError(
                f"pool: {pool!r} is not a pool of {instance_type!r} in catalog {self.catalog.name!r} "
                f"(known: {', '.join(itype.pools)})"
            )

    def apply(
        self, instance_id: str, instance_type: str, pool: str, tier: Tier, state: InstanceState, at: float
    ) -> bool:
        """Apply one event; False when it changed nothing (a duplicate, a late event, or news of an instance
        already terminated). A bad event raises ``ValueError`` and changes nothing."""
        self.check(instance_type, pool, tier)
        if instance_id in self._gone:
            return False
        previous = self._live.get(instance_id)
        if previous is not None and _ORDER[state] <= _ORDER[previous.state]:
            return False
        if previous is None and state != "terminated":
            self._make_room(instance_id)
        self._draining.pop(instance_id, None)
        if state == "draining":
            self._draining[instance_id] = None
        if state == "terminated":
            self._live.pop(instance_id, None)
            self._gone.add(instance_id)
            self._gone_order.append(instance_id)
            if len(self._gone_order) > self._remember:
                self._gone.discard(self._gone_order.popleft())
        else:
            self._live[instance_id] = Instance(instance_id, instance_type, pool, tier, state, at)
        return True

    def _make_room(self, instance_id: str) -> None:
        if len(self._live) < self._max_live:
            return
        if not self._draining:
            raise ValueError(
                f"instance_id: {instance_id!r} refused: {self._max_live} instances are live already and none "
                "is draining (made-up ids, or a fleet above the bound)"
            )
        oldest = next(iter(self._draining))
        del self._draining[oldest]
        del self._live[oldest]
        self.evicted += 1

    def get(self, instance_id: str) -> Instance | None:
        """The live instance, or None when it is not live (never seen, or terminated)."""
        return self._live.get(instance_id)

    def snapshot(self) -> FleetSnapshot:
        return FleetSnapshot(
            live=[
                (i.instance_id, i.instance_type, i.pool, i.tier, i.state, i.since)
                for i in self._live.values()
            ],
            gone=list(self._gone_order)[-_SNAPSHOT_GONE:],
        )

    def restore(self, snap: FleetSnapshot) -> None:
        """Replace what is held with ``snap`` (``ValueError`` naming the instance, and no change, when an
        instance does not fit the catalog)."""
        live: dict[str, Instance] = {}
        for instance_id, name, pool, tier, state, since in snap.live:
            if tier not in get_args(Tier) or state not in get_args(InstanceState) or state == "terminated":
                raise ValueError(f"instance {instance_id!r}: tier {tier!r} or state {state!r} unknown")
            try:
                self.check(name, pool, tier)  # type: ignore[arg-type]
            except ValueError as err:
                raise ValueError(f"instance {instance_id!r}: {err}") from None
            live[instance_id] = Instance(instance_id, name, pool, tier, state, since)  # type: ignore[arg-type]
        if len(live) > self._max_live:
            raise ValueError(f"live: {len(live)} instances, above the bound of {self._max_live}")
        gone = snap.gone[-self._remember :] if self._remember > 0 else []
        draining = sorted((i.since, i.instance_id) for i in live.values() if i.state == "draining")
        self._draining = dict.fromkeys(instance_id for _, instance_id in draining)
        self._live = live
        self._gone_order = deque(gone)
        self._gone = set(gone)

    def state(self, instance_id: str) -> InstanceState | None:
        """The instance's state, or None when it is not live (never seen, or terminated)."""
        live = self._live.get(instance_id)
        return live.state if live is not None else None

    def __len__(self) -> int:
        return len(self._live)

    def instances(self) -> list[Instance]:
        return list(self._live.values())

    def paid_counts(self) -> dict[tuple[str, Tier], int]:
        counts: dict[tuple[str, Tier], int] = {}
        for inst in self._live.values():
            key = (inst.instance_type, inst.tier)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def fleet(self) -> Fleet:
        """Nodes the optimizer may keep: launched or ready (draining ones are already leaving)."""
        reserved: dict[str, int] = {}
        spot: dict[tuple[str, str], int] = {}
        ondemand: dict[tuple[str, str], int] = {}
        for inst in self._live.values():
            if inst.state == "draining":
                continue
            if inst.tier == "reserved":
                reserved[inst.instance_type] = reserved.get(inst.instance_type, 0) + 1
            else:
                held = spot if inst.tier == "spot" else ondemand
                key = (inst.instance_type, inst.pool)
                held[key] = held.get(key, 0) + 1
        return Fleet(reserved=reserved, spot=spot, ondemand=ondemand)

    def spot_pools_held(self) -> dict[tuple[str, str], int]:
        """Paid spot nodes per (type, pool): weights for the spot price the ledger charges."""
        held: dict[tuple[str, str], int] = {}
        for inst in self._live.values():
            if inst.tier == "spot":
                key = (inst.instance_type, inst.pool)
                held[key] = held.get(key, 0) + 1
        return held
