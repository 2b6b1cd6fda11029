"""SpotMonitor actor.

Listens to: ``{ns}.evt.spot.notice.*`` (PreemptionNotice from node sidecars or the simulated cloud),
``{ns}.evt.worker.metrics.*`` (which workers run on which instance, and that they are alive),
``{ns}.evt.fleet.instance.*`` (which instances exist), and its health-check timer
(``[spot_monitor] health_check_seconds``, checked on a finer timer of ``notice_batch_seconds``).
Publishes:  ``{ns}.evt.spot.drain.{instance_id}`` (DrainOrder) and wakes the optimizer in-process.
Guarantees:
- Each instance goes ``active → draining → gone``. The first terminate/stop notice for an active instance
  orders a drain of all its workers at once, and wakes the optimizer (reason ``preemption``) within
  ``notice_batch_seconds``, so that replacement capacity is planned on the notice, not at the next tick.
  Every node going within that window (notices, silent workers) is replanned in ONE plan: a burst of 200
  notices is one plan, not 200. A repeated notice changes nothing.
- A notice is refused (``invalid``, counted, logged with the instance) for an instance nobody has
  reported, and for one the registry knows as reserved or on-demand (from its workers' reports and the
  fleet's events): only the spot market reclaims, so such a notice is forged or mistaken, and a healthy
  node is never drained on it.
- At most ``max_notices_per_minute`` notices become drains per minute, a burst of that many at once (a
  zone-wide reclaim); the rest are held (at most ``max_held_notices``, one per instance, beyond that
  dropped), counted and logged, and released at the rate, the earliest deadline first
  (``agent.core.notice_gate``).
- A rebalance recommendation is logged; with ``prelaunch_on_rebalance`` it also wakes the optimizer with
  the node counted as leaving, so a replacement is launched before any notice.
- A worker of an active instance that misses ``missed_intervals`` reports is declared lost: a DrainOrder
  with reason ``lost`` (the coordinator has the router requeue its requests from the prompt) and the
  optimizer is woken to replace the node: once per health check, for every node lost at that check.
- Silence counts only while the agent itself is connected to NATS and the server answers a round trip at
  the health check (``bus.link``): an outage of the agent's own link, or a half-open one, declares nobody
  lost, and after a reconnection every worker has a full silence window to be
  heard again (``agent.core.workers.counted_silence``).
- After its deadline a draining instance is gone and forgotten.
- Durable (``[state]``, key ``spot_monitor``): the registry (which workers run on which instance, its
  tier, which instances drain until when) is saved at each fleet event and drain, and every
  ``snapshot_seconds`` otherwise; a restarted agent accepts a notice for a node it knew.
- Work and memory per report are O(1) whatever ids a client invents: the registry holds a bounded number
  of workers and instances, forgetting the least recently heard (``costagent_registry_evicted_total``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import msgspec
import structlog
from nats.aio.msg import Msg

from agent.bus import Bus, Rejected
from agent.config import SpotMonitorSettings
from agent.core.notice_gate import NoticeGate
from agent.core.workers import RegistrySnapshot, WorkerRegistry
from agent.runtime.actor import Listen
from agent.runtime.clock import Clock
from agent.runtime.persistent_actor import PersistentActor
from agent.runtime.state_store import Snapshots, decode_state, encode_state
from schemas import DrainOrder, InstanceEvent, PreemptionNotice, WorkerMetrics
from schemas.preemption import DrainReason

# ([(instance id, (type, pool, tier) if known)], trigger id) → the optimizer plans once without them.
CapacityLost = Callable[[Sequence[tuple[str, tuple[str, str, str] | None]], str], Awaitable[None]]


class SpotMonitorState(msgspec.Struct, frozen=True, tag="spot_monitor.v1", tag_field="kind"):
    registry: RegistrySnapshot
    deadlines: dict[str, float]
    """Draining instances' deadlines: after one, the instance is gone."""


class SpotMonitorActor(PersistentActor):
    name = "spot_monitor"
    state_key = "spot_monitor"

    def __init__(
        self,
        bus: Bus,
        clock: Clock,
        *,
        settings: SpotMonitorSettings,
        registry: WorkerRegistry,
        capacity_lost: CapacityLost,
        snapshots: Snapshots | None = None,
    ) -> None:
        # One timer: the batch window's, which also keeps the health check's schedule.
        super().__init__(
            bus,
            clock,
            interval_s=min(settings.notice_batch_seconds, settings.health_check_seconds),
            snapshots=snapshots,
        )
        self.settings = settings
        self.registry = registry
        self.capacity_lost = capacity_lost
        self._deadlines: dict[str, float] = {}
        self.drains = 0
        self.gate: NoticeGate[PreemptionNotice] = NoticeGate(
            settings.max_notices_per_minute, settings.max_held_notices, clock.now()
        )
        self._health_due = clock.now() + settings.health_check_seconds
        # Nodes going since the last plan, with the first trigger's id: replanned together at the next wake.
        self._going: dict[str, tuple[str, str, str] | None] = {}
        self._going_cause = ""
        self._evicted_counted = registry.evicted
        self._log = structlog.get_logger("agent.spot_monitor").bind(actor=self.name)

    def subscriptions(self) -> Sequence[Listen]:
        s = self.bus.subjects
        return [
            Listen(s.spot_notice_all, PreemptionNotice, self.on_notice),
            Listen(s.worker_metrics_all, WorkerMetrics, self.on_metrics),
            Listen(s.fleet_instance_all, InstanceEvent, self.on_instance),
        ]

    def encode_state(self) -> bytes:
        return encode_state(SpotMonitorState(self.registry.snapshot(), dict(self._deadlines)))

    def restore_state(self, data: bytes) -> None:
        saved = decode_state(SpotMonitorState, data)
        self.registry.restore(saved.registry)  # the coordinator's too: it is the same registry
        self._deadlines = dict(saved.deadlines)

    async def on_metrics(self, m: WorkerMetrics, _raw: Msg) -> None:
        self.registry.observe(
            m.worker_id, m.instance_id, m.instance_type, m.pool, m.tier, self.clock.now(), m.interval_s
        )
        self._count_evicted()
        self.changed()

    async def on_instance(self, event: InstanceEvent, _raw: Msg) -> None:
        known = self.registry.knows(event.instance_id)
        # Saved at once only when a restart would miss what a notice needs (a new node, the fleet's word on
        # it, its machine, its end); a repeat of what is known waits for the timer: no full snapshot per
        # message.
        placed = event.machine in ("", event.instance_id) or self.registry.machine_of(event.instance_id) == (
            event.machine
        )
        stated = self.registry.stated_by_fleet(event.instance_id)
        news = not (known and stated and placed) or event.state == "terminated"
        if event.state == "terminated":
            if known:
                self.registry.set_life(event.instance_id, "gone")
                self._deadlines.pop(event.instance_id, None)
        else:
            self.registry.add_instance(
                event.instance_id,
                event.instance_type,
                event.pool,
                event.tier,
                from_fleet=True,
                machine=event.machine,
            )
            self._count_evicted()
        if news:
            await self.save_now()  # a notice for this node right after a restart must find it
        else:
            self.changed()

    def _count_evicted(self) -> None:
        """Into the metric: what the registry forgot to stay within its bound since the last count."""
        new = self.registry.evicted - self._evicted_counted
        if new:
            self.bus.metrics.registry_evicted.inc(new)
            self._evicted_counted = self.registry.evicted

    async def on_notice(self, notice: PreemptionNotice, _raw: Msg) -> None:
        instance_id = notice.instance_id
        # The notice names a machine: an instance, or a Kubernetes node whose worker pods are the instances.
        targets = self.registry.instances_named(instance_id)
        if not targets:
            raise Rejected(f"instance_id: {instance_id!r} is not an instance (or a machine) this agent knows")
        for target in targets:
            described = self.registry.describe(target)
            tier = described[2] if described is not None else "unknown"
            if tier != "spot":
                # Only the spot market reclaims: a notice for a reserved or on-demand node is forged or
                # mistaken.
                raise Rejected(f"instance_id: {target!r} is a {tier} instance, not spot; not drained")
        active = [t for t in targets if self.registry.life(t) == "active"]
        log = self._log.bind(instance_id=instance_id, msg_id=notice.msg_id, kind=notice.kind)
        if notice.kind == "rebalance":
            log.info("rebalance_recommendation", prelaunch=self.settings.prelaunch_on_rebalance)
            if self.settings.prelaunch_on_rebalance:
                for target in active:
                    self._going_now(target, notice.msg_id)
            return
        if not active:
            return  # already draining or gone: a repeat
        admitted = self.gate.admit(self.clock.now(), instance_id, notice.deadline, notice)
        if admitted == "now":
            await self._drain_on_notice(notice)
        elif admitted == "held":
            self.bus.metrics.notices_held.inc()
            if self.gate.held == 1:  # once per flood, not once per notice
                log.warning("notices_held", per_minute=self.settings.max_notices_per_minute)
        elif admitted == "dropped":
            self.bus.metrics.notices_dropped.inc()
            log.warning("notice_dropped", held=self.gate.held)

    async def _drain_on_notice(self, notice: PreemptionNotice, *, save: bool = True) -> None:
        instance_id = notice.instance_id
        targets = [t for t in self.registry.instances_named(instance_id) if self.registry.life(t) == "active"]
        workers = [w.worker_id for t in targets for w in self.registry.workers_of(t)]
        for target in targets:
            self.registry.set_life(target, "draining")
            self._deadlines[target] = notice.deadline
        # One order for the machine the notice named: the actuator evicts whatever runs on it.
        await self._drain(instance_id, notice.deadline, "notice", notice.msg_id, workers)
        self._log.info(
            "drain_ordered",
            instance_id=instance_id,
            msg_id=notice.msg_id,
            kind=notice.kind,
            deadline_in_s=round(notice.deadline - self.clock.now(), 3),
            instances=targets,
        )
        for target in targets:
            self._going_now(target, notice.msg_id)
        if save:
            await self.save_now()  # the drain and its deadline: a restart must not order it again

    def _going_now(self, instance_id: str, cause: str) -> None:
        """Count the node out of the fleet at the next wake, with every other node going by then."""
        if not self._going:
            self._going_cause = cause
        self._going[instance_id] = self.registry.describe(instance_id)

    async def _replan_going(self) -> None:
        """One plan for every node going since the last (a burst of notices, a zone's silent workers)."""
        if not self._going:
            return
        going, self._going = list(self._going.items()), {}
        await self.capacity_lost(going, self._going_cause)

    async def _drain(
        self,
        instance_id: str,
        deadline: float,
        reason: DrainReason,
        cause: str,
        workers: list[str] | None = None,
    ) -> None:
        """Order the drain of ``workers`` (default: every worker of the instance)."""
        if workers is None:
            workers = [w.worker_id for w in self.registry.workers_of(instance_id)]
        order = DrainOrder(
            **self.bus.envelope(correlation_id=cause),
            instance_id=instance_id,
            worker_ids=workers,
            deadline=deadline,
            reason=reason,
        )
        await self.bus.publish(self.bus.subjects.spot_drain(instance_id), order)
        self.drains += 1

    async def on_timer(self) -> None:
        now = self.clock.now()
        released = self.gate.release(now)
        for notice in released:
            if self.registry.life(notice.instance_id) == "active":
                await self._drain_on_notice(notice, save=False)
        if released:
            await self.save_now()  # once for the batch: a minute's release is up to 120 drains
            self._log.info("held_notices_released", released=len(released), held=self.gate.held)
        if now >= self._health_due:
            self._health_due = now + self.settings.health_check_seconds
            await self._health_check(now)
        await self._replan_going()

    async def _health_check(self, now: float) -> None:
        for instance_id, deadline in list(self._deadlines.items()):
            if now >= deadline:
                del self._deadlines[instance_id]
                self.registry.set_life(instance_id, "gone")
        self.changed()
        # Asked of the server now, not of nats-py's state: a half-open link says connected and hears nothing.
        connected_since = await self.bus.link.answering()
        silent = self.registry.newly_silent(now, self.settings.missed_intervals, connected_since)
        by_instance: dict[str, list[str]] = {}
        for info in silent:
            by_instance.setdefault(info.instance_id, []).append(info.worker_id)
        for instance_id, workers in by_instance.items():
            self._log.warning("workers_lost", instance_id=instance_id, workers=workers)
            await self._drain(instance_id, now, "lost", f"lost-{instance_id}-{now:.3f}", workers)
            if not any(not w.lost for w in self.registry.workers_of(instance_id)):
                # Replanned with every other node going now (a zone, or a flood of made-up ids).
                self._going_now(instance_id, f"lost-{now:.3f}")
