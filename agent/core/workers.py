"""Which workers run where, and which have gone quiet: the spot monitor's view, built from worker metrics.

Workers report every few seconds (``interval_s``). A worker is *silent* once it has missed
``missed_intervals`` reports in a row (no report for that many of its own intervals); the spot monitor
then declares it lost without notice. Instances move ``active → draining → gone``; only workers of active
instances are routable targets and only they are checked for silence (a draining node's workers stop at its
deadline, which is expected, not news).

Memory is bounded by the live fleet: a gone instance's workers are forgotten.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

InstanceLife = Literal["active", "draining", "gone"]


@dataclass(slots=True)
class WorkerInfo:
    worker_id: str
    instance_id: str
    instance_type: str
    pool: str
    tier: str
    last_seen: float
    interval_s: float
    lost: bool = False


class WorkerRegistry:
    def __init__(self) -> None:
        self._workers: dict[str, WorkerInfo] = {}
        self._life: dict[str, InstanceLife] = {}
        self._types: dict[str, tuple[str, str, str]] = {}  # instance → (type, pool, tier)

    def observe(
        self,
        worker_id: str,
        instance_id: str,
        instance_type: str,
        pool: str,
        tier: str,
        t: float,
        interval_s: float,
    ) -> None:
        if self._life.get(instance_id) == "gone":
            return  # a report delayed past the node's end
        info = self._workers.get(worker_id)
        if info is None or info.instance_id != instance_id:
            self._workers[worker_id] = WorkerInfo(
                worker_id, instance_id, instance_type, pool, tier, t, interval_s
            )
        elif t >= info.last_seen:
            info.last_seen = t
            info.interval_s = interval_s
            info.lost = False
        self.add_instance(instance_id, instance_type, pool, tier)

    def add_instance(self, instance_id: str, instance_type: str, pool: str, tier: str) -> None:
        self._life.setdefault(instance_id, "active")
        self._types[instance_id] = (instance_type, pool, tier)

    def knows(self, instance_id: str) -> bool:
        return instance_id in self._life

    def life(self, instance_id: str) -> InstanceLife | None:
        return self._life.get(instance_id)

    def describe(self, instance_id: str) -> tuple[str, str, str] | None:
        """(instance type, pool, tier) of a known instance."""
        return self._types.get(instance_id)

    def set_life(self, instance_id: str, life: InstanceLife) -> None:
        self._life[instance_id] = life
        if life == "gone":
            for worker_id in [w for w, info in self._workers.items() if info.instance_id == instance_id]:
                del self._workers[worker_id]

    def workers_of(self, instance_id: str) -> list[WorkerInfo]:
        return [info for info in self._workers.values() if info.instance_id == instance_id]

    def routable(self, exclude_instance: str | None = None) -> list[WorkerInfo]:
        """Workers that can take requests: on active instances, not lost."""
        return [
            info
            for info in self._workers.values()
            if not info.lost
            and info.instance_id != exclude_instance
            and self._life.get(info.instance_id) == "active"
        ]

    def newly_silent(self, now: float, missed_intervals: float) -> list[WorkerInfo]:
        """Workers of active instances silent for ``missed_intervals`` of their intervals; each is
        returned once (it is marked lost; a new report revives it)."""
        silent = []
        for info in self._workers.values():
            if info.lost or self._life.get(info.instance_id) != "active":
                continue
            if now - info.last_seen > missed_intervals * info.interval_s:
                info.lost = True
                silent.append(info)
        return silent
