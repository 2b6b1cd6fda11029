"""ActuatorActor: the one place that applies plans to a fleet, through any driver (:mod:`agent.actuators`).

Listens to: ``{ns}.evt.plan.allocation`` (AllocationPlan), ``{ns}.evt.spot.price.*`` (SpotPrice: what each
spot pool allows), ``{ns}.evt.spot.drain.*`` (DrainOrder: a notice for a node the driver runs), and, in
shadow mode without a reader, ``{ns}.evt.fleet.instance.*`` (the fleet something else runs); its timer
every ``[actuator] poll_seconds``.
Publishes: ``{ns}.evt.fleet.instance.{instance_id}`` (InstanceEvent) for every change the driver reports,
stamped with the change's time and cause; ``{ns}.evt.migration.report.{instance_id}`` (MigrationReport,
policy ``dynamo-frontend``) for a reclaimed node whose workers are Dynamo's.

Guarantees:
- A plan newer than the last applied (by ``sent_at``) is applied at once and whole, as the fleet reconcile
  decides (:func:`agent.core.reconcile.reconcile`); an older one is ignored (``plans_ignored``). Reserved
  targets, and types or pools the catalog does not know, are left alone.
- A spot launch is refused when the pool's latest fresh quote (``available``) has no room; a pool without a
  fresh quote has no limit.
- One change at a time: plans, drains and polls hold one lock, so a driver never sees two at once.
- The Dynamo drain: on a notice the driver stops routing and drains at once (SIGTERM, or an eviction whose
  grace ends before the deadline); at the deadline the node dies and the frontend (``--migration-limit``
  ≥ 1) re-sends what was still running to survivors. Once the node is gone and the frontends' migration
  count (``model_migration_total``) has stayed put over two reads, the report counts the
  migrations since the drain began; each is attributed once (two drains at the same time share one
  count: the first report gets it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from nats.aio.msg import Msg

from agent.actuators.base import Actuator, NodeChange
from agent.actuators.shadow import ShadowActuator
from agent.bus import Bus
from agent.core.catalog import Catalog
from agent.core.reconcile import FleetNow, Launch, Refuse, Release, catalog_targets, reconcile
from agent.runtime.actor import Actor, Listen
from agent.runtime.clock import Clock
from schemas import (
    AllocationPlan,
    DrainOrder,
    InstanceEvent,
    MigrationCounts,
    MigrationReport,
    SpotPrice,
    envelope,
)

_log = structlog.get_logger("agent.actuator")
FRONTEND_POLICY = "dynamo-frontend"
# A drained node's report waits until the frontends' migration count has stayed put over this many reads
# (and quiet_s) after the node was gone (the frontend re-sends the broken streams as it finds them).
_QUIET_READS = 2


@dataclass(slots=True)
class _Drain:
    order: DrainOrder
    migrations_at_start: float | None
    gone_at: float | None = None
    seen: tuple[float, int] | None = None
    """(the frontends' count, their read) when the count last changed, or was first read, after the
    node was gone ..."""
    seen_at: float = 0.0
    """... and when."""


class ActuatorActor(Actor):
    name = "actuator"

    def __init__(
        self,
        bus: Bus,
        clock: Clock,
        driver: Actuator,
        *,
        catalog: Catalog,
        boot_s: float,
        make_before_break: bool,
        poll_s: float,
        price_max_age_s: float,
        frontend_migrations: Callable[[], tuple[float, int] | None] | None = None,
        report_after_s: float = 0.0,
        quiet_s: float = 0.0,
    ) -> None:
        super().__init__(bus, clock, interval_s=poll_s)
        self.driver = driver
        self.catalog = catalog
        self.boot_s = boot_s
        self.make_before_break = make_before_break
        self.price_max_age_s = price_max_age_s
        self.frontend_migrations = frontend_migrations
        """The frontends' migration count and how many reads it took (None: not read yet); None: no
        Dynamo frontend."""
        self.report_after_s = report_after_s
        """A drained node's report is sent at the latest this long after the node was gone, even if the
        frontends could not be read quietly twice (one that does not answer)."""
        self.quiet_s = quiet_s
        """... and once its migration count has stayed put this long and over two reads (a loaded
        frontend finds its broken streams one by one)."""
        self.plans_applied = 0
        self.plans_ignored = 0
        self.launches_refused = 0
        self.opened = False
        self._plan_sent_at = float("-inf")
        self._lock = asyncio.Lock()
        self._quotes: dict[tuple[str, str], tuple[int | None, float]] = {}
        self._drains: dict[str, _Drain] = {}
        self._attributed = 0.0
        self._m = bus.metrics

    # --- actor -----------------------------------------------------------------------------------

    def subscriptions(self) -> Sequence[Listen]:
        s = self.bus.subjects
        listens = [
            Listen(s.plan_allocation, AllocationPlan, self.on_plan),
            Listen(s.spot_price_all, SpotPrice, self.on_price),
            Listen(s.spot_drain_all, DrainOrder, self.on_drain),
        ]
        if isinstance(self.driver, ShadowActuator) and self.driver.reader is None:
            listens.append(Listen(s.fleet_instance_all, InstanceEvent, self.on_instance))
        return listens

    async def on_start(self) -> None:
        if self.opened:
            return  # a restart of the actor: the driver's records are as they were
        async with self._lock:
            await self._publish(await self.driver.open(self.clock.now()))
            self.opened = True

    async def on_plan(self, plan: AllocationPlan, _raw: Msg) -> None:
        async with self._lock:
            if plan.sent_at < self._plan_sent_at:
                self.plans_ignored += 1
                _log.info("plan_ignored", plan_id=plan.plan_id, reason="older than the last applied")
                return
            self._plan_sent_at = plan.sent_at
            now = self.clock.now()
            raw = {(t.instance_type, t.pool, t.tier): t.count for t in plan.targets}
            targets, unknown = catalog_targets(raw, self.catalog)
            for name, pool in unknown:
                _log.warning("unknown_target", plan_id=plan.plan_id, instance_type=name, pool=pool)
            fleet = FleetNow(now, self.driver.fleet(now), self._spot_available(now))
            decisions = reconcile(
                fleet, targets, boot_s=self.boot_s, make_before_break=self.make_before_break
            )
            changes = await self.driver.carry_out(decisions, now, plan.msg_id)
            refused = sum(d.count for d in decisions if isinstance(d, Refuse))
            self.launches_refused += refused
            self.plans_applied += 1
            await self._publish(changes)
            _log.info(
                "plan_applied",
                mode=self.driver.mode,
                plan_id=plan.plan_id,
                launched=sum(d.count for d in decisions if isinstance(d, Launch)),
                released=sum(1 for d in decisions if isinstance(d, Release)),
                refused=refused,
            )

    async def on_price(self, quote: SpotPrice, _raw: Msg) -> None:
        self._quotes[(quote.instance_type, quote.pool)] = (quote.available, self.clock.now())

    async def on_drain(self, order: DrainOrder, _raw: Msg) -> None:
        if order.reason == "lost" or not self.runs(order.instance_id):
            return  # a node this driver does not run, or one already dead: nothing to stop
        async with self._lock:
            now = self.clock.now()
            changes = await self.driver.reclaim(order.instance_id, order.deadline, now, order.msg_id)
            if self.frontend_migrations is not None and order.instance_id not in self._drains:
                read = self.frontend_migrations()
                self._drains[order.instance_id] = _Drain(order, read[0] if read is not None else None)
            await self._publish(changes)

    async def on_instance(self, event: InstanceEvent, _raw: Msg) -> None:
        if isinstance(self.driver, ShadowActuator) and event.source != self.bus.source:
            self.driver.observe(event)

    async def on_timer(self) -> None:
        async with self._lock:
            now = self.clock.now()
            await self._publish(await self.driver.poll(now))
            await self._report_drains(now)

    async def on_stop(self) -> None:
        await self.driver.close()

    # --- helpers ---------------------------------------------------------------------------------

    def runs(self, instance_id: str) -> bool:
        """Whether the driver runs this node (then its drain is the actuator's, not the coordinator's)."""
        return self.driver.runs(instance_id)

    def _spot_available(self, now: float) -> dict[tuple[str, str], int | None]:
        return {
            pool: available
            for pool, (available, at) in self._quotes.items()
            if now - at <= self.price_max_age_s
        }

    async def _publish(self, changes: Sequence[NodeChange]) -> None:
        for change in changes:
            event = InstanceEvent(
                **envelope(self.bus.source, sent_at=change.at, correlation_id=change.cause),
                instance_id=change.instance_id,
                instance_type=change.instance_type,
                pool=change.pool,
                tier=change.tier,
                state=change.state,
                machine=change.machine,
            )
            await self.bus.publish(self.bus.subjects.fleet_instance(change.instance_id), event)
            if change.state == "terminated" and change.instance_id in self._drains:
                self._drains[change.instance_id].gone_at = change.at

    async def _report_drains(self, now: float) -> None:
        """The report of each drained node gone for ``report_after_s``: the frontend's migrations since."""
        if self.frontend_migrations is None:
            return
        for instance_id, drain in list(self._drains.items()):
            if drain.gone_at is None:
                continue
            read = self.frontend_migrations()
            total = read[0] if read is not None else None
            if read is not None and (drain.seen is None or drain.seen[0] != read[0]):
                drain.seen, drain.seen_at = read, now
            quiet = (
                read is not None
                and drain.seen is not None
                and read[1] >= drain.seen[1] + _QUIET_READS
                and now >= drain.seen_at + self.quiet_s
            )
            if not (quiet or now >= drain.gone_at + self.report_after_s):
                continue  # the frontend is still migrating (or not read since): wait for quiet reads
            del self._drains[instance_id]
            start = max(drain.migrations_at_start or 0.0, self._attributed)
            migrated = max(0, round((total or 0.0) - start))
            if total is not None:
                self._attributed = max(self._attributed, total)
            order = drain.order
            report = MigrationReport(
                **self.bus.envelope(correlation_id=order.correlation_id),
                instance_id=instance_id,
                policy=FRONTEND_POLICY,
                reason=order.reason,
                requests=migrated,
                counts=MigrationCounts(frontend_migrated=migrated),
                lost=0,
                bytes_moved=0.0,
                tokens_recomputed=0.0,
                hot_blocks_moved=0,
                notice_at=order.sent_at,
                first_commands_at=order.sent_at,
                completed_at=drain.gone_at,
                deadline=order.deadline,
            )
            await self.bus.publish(self.bus.subjects.migration_report(instance_id), report)
            _log.info(
                "migration_reported", instance_id=instance_id, policy=FRONTEND_POLICY, migrated=migrated
            )
