"""Shadow mode: the agent plans next to the team's current autoscaler and changes nothing.

The fleet it plans against is the one that runs: read from a driver in read-only use
(``[actuator.kubernetes]`` set: its scaling adapters and pods), or else from the InstanceEvents that
something else publishes. Each decision the reconcile takes is logged as what the agent *would* have
done and counted; the cost report compares the running fleet's cost with the plan's (``plan_gap_hourly``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from agent.actuators.base import Actuator, NodeChange
from agent.core.reconcile import Decision, Launch, NodeNow, Refuse, Release, Slot, TakeBack
from schemas import InstanceEvent

_log = structlog.get_logger("agent.actuators.shadow")


@dataclass(slots=True)
class _Seen:
    slot: Slot
    order: float
    ready: bool
    standing: str


@dataclass(slots=True)
class ShadowActuator:
    """``reader``: a driver whose view of the fleet is used, never its changes (None: the bus's events)."""

    reader: Actuator | None = None
    mode: str = "shadow"
    would: dict[str, int] = field(
        default_factory=lambda: {"launch": 0, "release": 0, "take_back": 0, "refuse": 0}
    )
    """What the agent would have done, by kind: nodes launched, released, taken back, refused."""
    _seen: dict[str, _Seen] = field(default_factory=dict)

    async def open(self, now: float) -> list[NodeChange]:
        return await self.reader.open(now) if self.reader is not None else []

    def fleet(self, now: float) -> Sequence[NodeNow]:
        if self.reader is not None:
            return self.reader.fleet(now)
        return [
            NodeNow(
                node_id=node_id,
                slot=seen.slot,
                launch_order=seen.order,
                ready_at=None if seen.ready else now,
                standing="held" if seen.standing == "held" else "released",
            )
            for node_id, seen in self._seen.items()
        ]

    def observe(self, event: InstanceEvent) -> None:
        """An InstanceEvent from whatever runs the fleet (used when there is no reader)."""
        if event.state == "terminated":
            self._seen.pop(event.instance_id, None)
            return
        slot: Slot = (event.instance_type, event.pool, event.tier)
        known = self._seen.get(event.instance_id)
        order = known.order if known is not None else event.sent_at
        standing = "released" if event.state == "draining" else "held"
        self._seen[event.instance_id] = _Seen(slot, order, event.state == "ready", standing)

    async def carry_out(self, decisions: Sequence[Decision], now: float, cause: str) -> list[NodeChange]:
        for decision in decisions:
            if isinstance(decision, Launch):
                self.would["launch"] += decision.count
                kind, count = "launch", decision.count
            elif isinstance(decision, Refuse):
                self.would["refuse"] += decision.count
                kind, count = "refuse", decision.count
            elif isinstance(decision, TakeBack):
                self.would["take_back"] += 1
                kind, count = "take_back", 1
            else:
                assert isinstance(decision, Release)
                self.would["release"] += 1
                kind, count = "release", 1
            name, pool, tier = decision.slot
            _log.info(
                "shadow_would",
                kind=kind,
                count=count,
                instance_type=name,
                pool=pool,
                tier=tier,
                reason=decision.reason,
                plan=cause,
            )
        return []

    async def reclaim(self, instance_id: str, deadline: float, now: float, cause: str) -> list[NodeChange]:
        return []  # the current autoscaler and the engine drain it; the agent only re-plans

    async def poll(self, now: float) -> list[NodeChange]:
        return await self.reader.poll(now) if self.reader is not None else []

    async def close(self) -> None:
        if self.reader is not None:
            await self.reader.close()

    def runs(self, instance_id: str) -> bool:
        return False  # shadow mode drains nothing
