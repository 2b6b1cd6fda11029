"""Which workers run where, and which have gone quiet: the spot monitor's view, built from worker metrics.

Workers report every few seconds (``interval_s``). A worker is *silent* once it has missed
``missed_intervals`` reports in a row (no report for that many of its own intervals); the spot monitor
then declares it lost without notice. Instances move ``active → draining → gone``; only workers of active
instances are routable targets and only they are checked for silence (a draining node's workers stop at its
deadline, which is expected, not news).

Silence counts only while the agent itself is connected (:func:`counted_silence`): when the agent's own
link to NATS was down, no report could reach it, so that time says nothing about the workers. Reports are
counted from the reconnection on, which also gives every worker one full silence window to be heard again.

Memory and work per report are O(1) whatever ids a client invents: at most ``max_instances`` instances
and ``max_workers`` workers are held; beyond, the one that reported least recently is forgotten (counted
in :attr:`WorkerRegistry.evicted`). A gone instance's workers are forgotten at once.

:meth:`WorkerRegistry.snapshot` and :meth:`WorkerRegistry.restore` carry it across a restart, least
recently heard first, so that a notice for a node known before the restart is still accepted.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, Literal, get_args

import msgspec

InstanceLife = Literal["active", "draining", "gone"]

MAX_WORKERS: Final = 10_000
"""Far above a fleet's real workers (a thousand 8-GPU nodes with a worker per GPU is 8,000)."""
MAX_INSTANCES: Final = 10_000


class RegistrySnapshot(msgspec.Struct, frozen=True):
    instances: list[tuple[str, str, str, str, str]]
    """(instance id, life, type, pool, tier), least recently heard first."""
    workers: list[tuple[str, str, float, float, bool]]
    """(worker id, instance id, last seen, interval s, lost), least recently heard first."""
    machines: list[tuple[str, str]] = []
    """(instance id, machine) for instances that are not machines themselves (Kubernetes pods)."""
    from_fleet: list[str] = []
    """Instances whose type, pool and tier the actuator stated (a worker's report does not change them)."""


def counted_silence(now: float, last_seen: float, connected_since: float | None) -> float:
    """How long a worker has been silent *while the agent could have heard it*: 0 while the agent is
    disconnected (``connected_since`` None), else the time since its last report or since the agent
    (re)connected, whichever is later."""
    if connected_since is None:
        return 0.0
    return max(now - max(last_seen, connected_since), 0.0)


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
    def __init__(self, max_workers: int = MAX_WORKERS, max_instances: int = MAX_INSTANCES) -> None:
        if max_workers < 1 or max_instances < 1:
            raise ValueError(f"max_workers, max_instances: must be ≥ 1, got {max_workers}, {max_instances}")
        self.max_workers = max_workers
        self.max_instances = max_instances
        # Least recently reported first: the next to evict is at the front.
        self._workers: OrderedDict[str, WorkerInfo] = OrderedDict()
        self._by_instance: dict[str, dict[str, WorkerInfo]] = {}
        self._life: OrderedDict[str, InstanceLife] = OrderedDict()
        self._types: dict[str, tuple[str, str, str]] = {}  # instance → (type, pool, tier)
        # Instances whose type, pool and tier the fleet (the actuator) stated: a worker's report, which
        # anyone on the bus can forge, does not relabel them (a reserved node reported as spot would let a
        # forged notice drain it). Saved with the rest: a restart does not reopen that door.
        self._from_fleet: set[str] = set()
        # A Kubernetes worker pod runs on a node: the sidecar's notice names the node, not the pod.
        self._machine: dict[str, str] = {}  # instance → machine
        self._on_machine: dict[str, set[str]] = {}  # machine → instances
        self.evicted = 0
        """Workers and instances forgotten to stay within the bounds."""

    def __len__(self) -> int:
        return len(self._workers)

    def instances(self) -> int:
        return len(self._life)

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
        self.add_instance(instance_id, instance_type, pool, tier)
        info = self._workers.get(worker_id)
        if info is None or info.instance_id != instance_id:
            if info is not None:
                self._forget_worker(info)
            info = WorkerInfo(worker_id, instance_id, instance_type, pool, tier, t, interval_s)
            self._workers[worker_id] = info
            self._by_instance.setdefault(instance_id, {})[worker_id] = info
            while len(self._workers) > self.max_workers:
                self._forget_worker(next(iter(self._workers.values())))
                self.evicted += 1
        elif t >= info.last_seen:
            info.last_seen = t
            info.interval_s = interval_s
            info.lost = False
            self._workers.move_to_end(worker_id)

    def add_instance(
        self,
        instance_id: str,
        instance_type: str,
        pool: str,
        tier: str,
        *,
        from_fleet: bool = False,
        machine: str = "",
    ) -> None:
        """Know the instance (active until told otherwise); ``from_fleet``: the actuator's word on its type,
        pool and tier, which later worker reports do not change; ``machine``: the machine it runs on when
        it is not one itself (the actuator's word too)."""
        if machine and from_fleet and machine != instance_id:
            self._place(instance_id, machine)
        if instance_id in self._life:
            self._life.move_to_end(instance_id)
        else:
            self._life[instance_id] = "active"
            while len(self._life) > self.max_instances:
                self._forget_instance(next(iter(self._life)))
                self.evicted += 1
        if from_fleet:
            self._from_fleet.add(instance_id)
        elif instance_id in self._from_fleet:
            return
        self._types[instance_id] = (instance_type, pool, tier)

    def knows(self, instance_id: str) -> bool:
        return instance_id in self._life

    def stated_by_fleet(self, instance_id: str) -> bool:
        """Whether the actuator has given the instance's type, pool and tier (a worker report cannot change
        them then)."""
        return instance_id in self._from_fleet

    def machine_of(self, instance_id: str) -> str:
        """The machine the instance runs on, as the fleet said; empty when it is one itself or unknown."""
        return self._machine.get(instance_id, "")

    def instances_named(self, name: str) -> list[str]:
        """The instances a notice for ``name`` concerns: the instance of that id, else every instance on
        the machine of that name; empty when neither is known."""
        if name in self._life:
            return [name]
        return sorted(i for i in self._on_machine.get(name, ()) if i in self._life)

    def _place(self, instance_id: str, machine: str) -> None:
        self._unplace(instance_id)
        self._machine[instance_id] = machine
        self._on_machine.setdefault(machine, set()).add(instance_id)

    def _unplace(self, instance_id: str) -> None:
        machine = self._machine.pop(instance_id, None)
        if machine is not None:
            peers = self._on_machine[machine]
            peers.discard(instance_id)
            if not peers:
                del self._on_machine[machine]

    def life(self, instance_id: str) -> InstanceLife | None:
        return self._life.get(instance_id)

    def describe(self, instance_id: str) -> tuple[str, str, str] | None:
        """(instance type, pool, tier) of a known instance."""
        return self._types.get(instance_id)

    def set_life(self, instance_id: str, life: InstanceLife) -> None:
        if instance_id not in self._life:
            return  # forgotten (evicted): nothing left to change
        self._life[instance_id] = life
        if life == "gone":
            for info in list(self._by_instance.get(instance_id, {}).values()):
                self._forget_worker(info)

    def workers_of(self, instance_id: str) -> list[WorkerInfo]:
        return list(self._by_instance.get(instance_id, {}).values())

    def routable(self, exclude_instance: str | None = None) -> list[WorkerInfo]:
        """Workers that can take requests: on active instances, not lost."""
        return [
            info
            for info in self._workers.values()
            if not info.lost
            and info.instance_id != exclude_instance
            and self._life.get(info.instance_id) == "active"
        ]

    def newly_silent(
        self, now: float, missed_intervals: float, connected_since: float | None = float("-inf")
    ) -> list[WorkerInfo]:
        """Workers of active instances silent for ``missed_intervals`` of their intervals, counted only
        while connected (:func:`counted_silence`); each is returned once (it is marked lost; a new
        report revives it)."""
        silent = []
        for info in self._workers.values():
            if info.lost or self._life.get(info.instance_id) != "active":
                continue
            if counted_silence(now, info.last_seen, connected_since) > missed_intervals * info.interval_s:
                info.lost = True
                silent.append(info)
        return silent

    def snapshot(self) -> RegistrySnapshot:
        return RegistrySnapshot(
            instances=[(i, life, *self._types.get(i, ("", "", ""))) for i, life in self._life.items()],
            workers=[
                (w.worker_id, w.instance_id, w.last_seen, w.interval_s, w.lost)
                for w in self._workers.values()
            ],
            machines=sorted(self._machine.items()),
            from_fleet=sorted(self._from_fleet),
        )

    def restore(self, snap: RegistrySnapshot) -> None:
        """Replace what is held with ``snap`` (``ValueError``, and no change, when it is inconsistent);
        beyond the bounds the least recently heard are left out."""
        life: OrderedDict[str, InstanceLife] = OrderedDict()
        types: dict[str, tuple[str, str, str]] = {}
        for instance_id, state, name, pool, tier in snap.instances[-self.max_instances :]:
            if state not in get_args(InstanceLife):
                raise ValueError(f"instance {instance_id!r}: life {state!r} unknown")
            life[instance_id] = state  # type: ignore[assignment]
            types[instance_id] = (name, pool, tier)
        workers: OrderedDict[str, WorkerInfo] = OrderedDict()
        for worker_id, instance_id, last_seen, interval_s, lost in snap.workers[-self.max_workers :]:
            if instance_id not in types:
                raise ValueError(f"worker {worker_id!r}: instance {instance_id!r} is not in the snapshot")
            if not interval_s > 0:
                raise ValueError(f"worker {worker_id!r}: interval_s must be > 0, got {interval_s!r}")
            workers[worker_id] = WorkerInfo(
                worker_id, instance_id, *types[instance_id], last_seen, interval_s, lost
            )
        self._life, self._types, self._workers = life, types, workers
        self._from_fleet = {i for i in snap.from_fleet if i in life}
        self._machine, self._on_machine = {}, {}
        for instance_id, machine in snap.machines:
            if instance_id in life and machine:
                self._place(instance_id, machine)
        self._by_instance = {}
        for info in workers.values():
            self._by_instance.setdefault(info.instance_id, {})[info.worker_id] = info

    def _forget_worker(self, info: WorkerInfo) -> None:
        del self._workers[info.worker_id]
        peers = self._by_instance.get(info.instance_id)
        if peers is not None:
            peers.pop(info.worker_id, None)
            if not peers:
                del self._by_instance[info.instance_id]

    def _forget_instance(self, instance_id: str) -> None:
        for info in list(self._by_instance.get(instance_id, {}).values()):
            self._forget_worker(info)
        del self._life[instance_id]
        self._types.pop(instance_id, None)
        self._from_fleet.discard(instance_id)
        self._unplace(instance_id)
