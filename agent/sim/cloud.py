"""Simulated cloud: the actuator of the live demo, its spot market, and one emulated GPU worker per node.

Listens to: ``{ns}.evt.plan.allocation`` (AllocationPlan), and its own timer every ``market_check_s`` clock
seconds (boots, releases, reclaim deadlines, the spot market, the reclaim storm, price quotes).

Publishes:
- ``{ns}.evt.fleet.instance.{instance_id}`` (InstanceEvent) on every state change of a node, ``sent_at``
  the clock time of the change (``correlation_id`` the plan's ``msg_id`` when a plan caused it); and, with
  every price heartbeat, the current state of every node not yet terminated again (repeats are harmless
  to the agent, and that is how a restarted agent learns the fleet before its first plan).
- ``{ns}.evt.spot.notice.{instance_id}`` (PreemptionNotice, kind ``terminate``, provider ``sim``, source
  ``sidecar:{instance_id}``) when the market reclaims a spot node: the subject and message a node sidecar
  publishes.
- ``{ns}.evt.spot.price.{pool}`` (SpotPrice) for every spot (type, pool) of the catalog: at start, every
  ``price_interval_s``, and at once (before any reclaim it causes) when the market's availability changes.
  The price is the catalog's spot price; ``available`` what the market allows.
- ``{ns}.cmd.router.stop_routing`` (StopRouting, request/reply, failure ignored) for the worker of each node
  it releases.

Runs one :class:`~agent.sim.worker.WorkerEmulator` per ready node (``worker_id`` ``w-{instance_id}``, all
on one :class:`~agent.sim.worker.Fabric`), started when the node becomes ready and stopped when it is
terminated; :meth:`SimCloud.shutdown` stops the ones still running.

The market is a function ``spot_available(type, pool, clock time)``; :func:`trace_market` makes one from
availability traces (:mod:`agent.sim.spot_traces`).

Lifecycle of a node: ``launched`` (a plan asked for it) → ``ready`` (``boot_s`` later, at the first check
past it: its worker starts) → ``draining`` (released by a plan, or reclaimed by the market) →
``terminated``. A released node terminates at the first check at which its worker has nothing in flight,
at the latest ``release_grace_s`` after the release (its worker is then killed: what is left is lost); one
without a worker (still booting) terminates at once. A reclaimed node's worker dies exactly at the notice's
deadline (``kill_at``) and the node terminates at the first check past it; a node reclaimed while booting
never becomes ready.

Guarantees:
- Every plan newer than the last one applied (by ``sent_at``) is applied at once, whole, as the fleet
  reconcile (:func:`agent.core.reconcile.reconcile`) decides: each spot and on-demand (type, pool) it
  lists is converged to its count (leaving nodes taken back first, the one that would leave last first;
  missing nodes launched; surplus ones released newest first: at once, or with ``make_before_break`` once
  the nodes booting then are ready, serving meanwhile as *leaving*). Reserved targets are never acted on;
  (type, pool) pairs a plan does not list, or that the catalog does not know, are left as they are. An
  older plan arriving late is ignored (counted in ``plans_ignored``).
- Hence, for every (type, pool, tier), launched + ready nodes that are not leaving never exceed the latest
  plan's target: a plan brings them to at most the target, and between plans they only decrease (a boot
  moves a node from launched to ready; releases and reclaims take nodes out).
- A spot launch is refused (nothing launched, ``launches_refused`` counted) when the pool's availability is
  already used by the spot nodes that hold it: launched, ready, or draining after a release and not
  reclaimed. A reclaimed node no longer holds the market's capacity.
- The market: at each check, where the spot nodes holding a pool exceed what ``spot_available`` allows,
  the excess is reclaimed, the busiest first (see below; among equally busy nodes, newest first). The
  storm: in its window, each check draws for every launched or ready spot node not yet reclaimed, in
  launch order from a ``Random(seed)``, a hit with probability ``1 - (1 - rate) ** (dt / 3600)`` (``dt``
  the part of the time since the previous check inside the window), so that ``rate`` of the nodes go
  within an hour; as many nodes as there were hits are reclaimed, the busiest first (among equally busy
  nodes, those whose own draw hit, then launch order: an idle fleet loses exactly the nodes that drew a
  hit). No node is reclaimed twice.
- Busiest: the most output tokens still to generate by the requests on the node's worker (running or
  queued), then the most requests, then the most KV cache in use by them, counted at the check (a node
  still booting has none). A storm takes back capacity that is running work, and the run that shows what
  a notice costs is the one where it lands on the longest work: that is what a drain must handle.
- Notice length: each reclaim's notice is ``short_notice_s`` long with probability
  ``short_notice_share``, else ``notice_s``, drawn in reclaim order from a ``Random`` of its own seeded
  from ``seed`` (so the share changes no storm draw). Clouds differ: AWS warns two minutes ahead, GCP and
  Azure 30 s; a fleet across them sees both.
- :meth:`SimCloud.bill` is exact from the records: each node from launched to terminated, at its type's
  catalog price for its tier (spot at the catalog's spot price, the price the quotes carry).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

import structlog
from nats.aio.msg import Msg

from agent.bus import Bus
from agent.core.catalog import TIERS, Catalog, Tier
from agent.core.reconcile import (
    HOLDS_MARKET,
    Decision,
    FleetNow,
    Launch,
    NodeNow,
    Refuse,
    Slot,
    Standing,
    TakeBack,
    reconcile,
)
from agent.runtime.actor import Actor, Listen
from agent.runtime.clock import Clock
from agent.sim.cloud_signals import SpotAvailability, SpotQuotes, publish_notice, storm_hit_probability
from agent.sim.spot_traces import SpotTrace
from agent.sim.worker import Fabric, WorkerEmulator
from schemas import (
    AllocationPlan,
    ErrorReply,
    InstanceEvent,
    InstanceState,
    RouterAck,
    StopRouting,
    envelope,
)

_SECONDS_PER_HOUR: Final = 3600.0
# How long a stop_routing command waits for the router's answer (real seconds).
_ROUTER_WAIT_S: Final = 1.0
# Clock rounding: a boot due at 1e-9 s after now is due now.
_SLACK: Final = 1e-9
_NO_RESERVED: Final[Mapping[str, int]] = MappingProxyType({})

_log = structlog.get_logger("agent.sim.cloud")


@dataclass(frozen=True, slots=True)
class CloudConfig:
    boot_s: float = 120.0
    """launched → ready."""
    notice_s: float = 120.0
    """Spot reclaim notice length (AWS: two minutes)..."""
    short_notice_s: float = 30.0
    """... except for a share of the notices this short (GCP, Azure: 30 s) ..."""
    short_notice_share: float = 0.0
    """... drawn per notice with this probability, from the seed."""
    make_before_break: bool = True
    """A node a plan gives up keeps serving until the nodes booting at that moment are ready (a node still
    booting goes at once), as an actuator replacing nodes should: the plan moves capacity, it does not
    open a gap. A later plan may take it back before it goes. False: released at once."""
    release_grace_s: float = 300.0
    """A released node drains (router stop_routing, no new work) at most this long, then terminates; sooner
    when its worker has nothing in flight."""
    market_check_s: float = 15.0
    """The cloud's timer: boots, reclaims, storm, releases, deadlines."""
    price_interval_s: float = 300.0
    """SpotPrice per spot (type, pool): catalog price, ``available`` from the market."""
    storm_start_s: float | None = None
    """Reclaim storm: from this many clock seconds after the cloud started ..."""
    storm_duration_s: float = 3600.0
    """... for this long ..."""
    storm_rate_per_hour: float = 0.2
    """... each live spot node is reclaimed with this probability per hour."""
    seed: int = 0
    # Passed to each WorkerEmulator.
    same_node_bytes_per_s: float = 100e9
    cross_node_bytes_per_s: float = 3.125e9
    kv_bytes_per_token: float = 327_680.0
    worker_step_s: float = 1.0
    metrics_interval_s: float = 5.0

    def __post_init__(self) -> None:
        for name in (
            "boot_s",
            "notice_s",
            "short_notice_s",
            "release_grace_s",
            "storm_duration_s",
            "kv_bytes_per_token",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"cloud config: {name} must be a finite number ≥ 0, got {value!r}")
        for name in (
            "market_check_s",
            "price_interval_s",
            "same_node_bytes_per_s",
            "cross_node_bytes_per_s",
            "worker_step_s",
            "metrics_interval_s",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"cloud config: {name} must be a finite number > 0, got {value!r}")
        if self.storm_start_s is not None and not (
            math.isfinite(self.storm_start_s) and self.storm_start_s >= 0
        ):
            raise ValueError(f"cloud config: storm_start_s must be ≥ 0 or None, got {self.storm_start_s!r}")
        for name in ("storm_rate_per_hour", "short_notice_share"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"cloud config: {name} must be in [0, 1], got {value!r}")


@dataclass(frozen=True, slots=True)
class CloudBill:
    """What the fleet cost, from the cloud's own records. ``by_tier`` and ``instance_hours`` (node-hours)
    always have the three tiers; ``by_type`` the types that were held."""

    total: float
    by_tier: dict[str, float]
    by_type: dict[str, float]
    instance_hours: dict[str, float]


@dataclass(slots=True)
class SimInstance:
    instance_id: str
    instance_type: str
    pool: str
    tier: Tier
    state: InstanceState
    launched_at: float
    ready_at: float | None = None
    terminated_at: float | None = None
    worker_id: str = ""
    released_at: float | None = None
    """When a plan released it (it is then draining)."""
    drain_cause: str = field(default="", repr=False)
    """``msg_id`` of the plan that released it or of the notice that reclaimed it (the correlation id of
    its draining and terminated events)."""
    notice_deadline: float | None = None
    """When the market reclaims it (a notice was sent; it is then draining)."""
    seq: int = 0
    """Launch order: the newest has the highest."""
    leave_at: float | None = None
    """Given up by a plan while other nodes boot: serves (and is billed) until then, then is released."""
    leave_cause: str = field(default="", repr=False)
    cause: str = field(default="", repr=False)
    """``msg_id`` of the plan that launched it (the correlation id of its events), if any."""


def trace_market(traces: Mapping[tuple[str, str], SpotTrace], start: float) -> SpotAvailability:
    """A ``spot_available`` for :class:`SimCloud` from availability traces, one per (type, pool): the
    trace's count at ``t − start`` (before ``start``: its first tick; past its end it wraps around).
    A (type, pool) without a trace has no limit."""

    def available(instance_type: str, pool: str, t: float) -> int | None:
        trace = traces.get((instance_type, pool))
        return None if trace is None else trace.available_at(max(0.0, t - start))

    return available


def _standing(inst: SimInstance) -> Standing | None:
    """Where a node stands with the plans (None: terminated): launched or ready and counted by them
    (``held``), or given up and still serving (``leaving``); draining after a release (``released``) or
    after a notice (``reclaimed``)."""
    if inst.state == "terminated":
        return None
    if inst.state == "draining":
        return "released" if inst.notice_deadline is None else "reclaimed"
    return "held" if inst.leave_at is None else "leaving"


def _hold_market(inst: SimInstance) -> bool:
    """A spot node that holds its pool's market capacity: launched, ready, or draining after a release
    (still running) and not reclaimed."""
    return _standing(inst) in HOLDS_MARKET


def _idle(worker: WorkerEmulator) -> bool:
    """Nothing in flight: every request admitted has left (done, moved out or lost), no copy under way."""
    in_flight = worker.started - worker.completed - worker.moved_out - worker.lost
    return worker.stopped or (in_flight == 0 and worker.transfers_in_progress == 0)


class SimCloud(Actor):
    name = "sim_cloud"

    def __init__(
        self,
        bus: Bus,
        clock: Clock,
        *,
        catalog: Catalog,
        config: CloudConfig,
        spot_available: SpotAvailability,
        reserved: Mapping[str, int] = _NO_RESERVED,
    ) -> None:
        super().__init__(bus, clock, interval_s=config.market_check_s)
        for name, count in reserved.items():
            catalog.type(name)  # CatalogError for an unknown type
            if count < 0:
                raise ValueError(f"reserved: {name!r} count must be ≥ 0, got {count!r}")
        self.catalog = catalog
        self.config = config
        self.spot_available = spot_available
        self.reserved: dict[str, int] = dict(reserved)
        self.instances: dict[str, SimInstance] = {}
        """Every instance ever (terminated ones kept for the bill)."""
        self.workers: dict[str, WorkerEmulator] = {}
        """Instance id → its worker while it runs."""
        self.preemptions: list[tuple[str, float, float]] = []
        """(instance id, notice time, deadline) for every reclaim, market or storm, in order."""
        self.storm_reclaims = 0
        self.short_notices = 0
        """Reclaims whose notice was ``short_notice_s`` long."""
        self.plans_applied = 0
        self.plans_ignored = 0
        self.launches_refused = 0
        self.targets: dict[tuple[str, str, Tier], int] = {}
        """The targets of the latest plan applied, every tier as the plan lists them."""
        self.plan_id: str | None = None
        """The latest plan applied."""
        self.fabric = Fabric()
        self.started_at: float | None = None
        self._plan_sent_at = -math.inf
        self._seq = itertools.count(1)
        self._rng = random.Random(config.seed)
        self._notice_rng = random.Random(f"notice-length-{config.seed}")
        self._lock = asyncio.Lock()
        self._storm_checked = 0.0
        self._next_price_at = 0.0
        self._quotes = SpotQuotes(bus, catalog, spot_available)
        self._worker_stops: dict[str, asyncio.Event] = {}
        self._worker_tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    # --- queries ----------------------------------------------------------------------------------

    def live(self, type_: str, pool: str, tier: str) -> int:
        """Nodes of (type, pool, tier) launched or ready, neither draining nor leaving: what a plan's
        target counts."""
        return sum(
            1
            for i in self.instances.values()
            if i.state in ("launched", "ready")
            and i.leave_at is None
            and (i.instance_type, i.pool, i.tier) == (type_, pool, tier)
        )

    def bill(self, until: float | None = None) -> CloudBill:
        """Each node from launched to terminated (or to ``until``, default now), at its type's catalog
        price for its tier."""
        end_of_bill = self.clock.now() if until is None else until
        by_tier = dict.fromkeys(TIERS, 0.0)
        hours_by_tier = dict.fromkeys(TIERS, 0.0)
        by_type: dict[str, float] = {}
        for inst in self.instances.values():
            end = inst.terminated_at if inst.terminated_at is not None else end_of_bill
            hours = max(0.0, min(end, end_of_bill) - inst.launched_at) / _SECONDS_PER_HOUR
            cost = hours * self.catalog.type(inst.instance_type).price(inst.tier)
            by_tier[inst.tier] += cost
            hours_by_tier[inst.tier] += hours
            by_type[inst.instance_type] = by_type.get(inst.instance_type, 0.0) + cost
        return CloudBill(
            total=sum(by_tier.values()),
            by_tier={str(k): v for k, v in by_tier.items()},
            by_type=by_type,
            instance_hours={str(k): v for k, v in hours_by_tier.items()},
        )

    # --- actor ------------------------------------------------------------------------------------

    def subscriptions(self) -> Sequence[Listen]:
        return [Listen(self.bus.subjects.plan_allocation, AllocationPlan, self.on_plan)]

    async def on_start(self) -> None:
        if self.started_at is not None:
            return  # a restart: the fleet is as it was
        async with self._lock:
            now = self.clock.now()
            self.started_at = now
            self._storm_checked = now
            for name, count in self.reserved.items():
                pool = self.catalog.type(name).pools[0]
                for _ in range(count):
                    inst = self._new(name, pool, "reserved", now, cause="")
                    await self._publish(inst, now)  # launched, and at once ready
                    await self._boot(inst, now)
            await self._quotes.publish(now, every_pool=True)
            self._next_price_at = now + self.config.price_interval_s

    async def on_plan(self, plan: AllocationPlan, _raw: Msg) -> None:
        released: list[str] = []
        async with self._lock:
            if plan.sent_at < self._plan_sent_at:
                self.plans_ignored += 1
                _log.info("plan_ignored", plan_id=plan.plan_id, msg_id=plan.msg_id, reason="older")
                return
            self._plan_sent_at = plan.sent_at
            now = self.clock.now()
            targets: dict[Slot, int] = {}
            for target in plan.targets:
                targets[(target.instance_type, target.pool, target.tier)] = target.count
            decisions = reconcile(
                self._fleet_now(now),
                self._in_catalog(targets, plan.plan_id),
                boot_s=self.config.boot_s,
                make_before_break=self.config.make_before_break,
            )
            for decision in decisions:
                worker_id = await self._carry_out(decision, now, plan.msg_id)
                if worker_id is not None:
                    released.append(worker_id)
            self.targets = targets
            self.plan_id = plan.plan_id
            self.plans_applied += 1
            _log.info(
                "plan_applied",
                plan_id=plan.plan_id,
                msg_id=plan.msg_id,
                reason=plan.reason,
                released=len(released),
                refused_total=self.launches_refused,
            )
        # Outside the lock: a slow router must not hold up the market.
        await asyncio.gather(*(self._stop_routing(worker_id) for worker_id in released))

    async def on_timer(self) -> None:
        """One market check: releases and reclaim deadlines end, prices are quoted, the market and the
        storm reclaim, booted nodes become ready."""
        released: list[str] = []
        async with self._lock:
            now = self.clock.now()
            await self._end_drains(now)
            await self._market(now)
            await self._storm(now)
            await self._boots(now)
            for inst in list(self.instances.values()):
                if inst.leave_at is not None and inst.state == "ready" and now >= inst.leave_at - _SLACK:
                    cause = inst.leave_cause
                    inst.leave_at, inst.leave_cause = None, ""
                    if await self._release(inst, now, cause):
                        released.append(inst.worker_id)
        await asyncio.gather(*(self._stop_routing(worker_id) for worker_id in released))

    async def shutdown(self) -> None:
        """Stop every worker task (the demo's end); no worker is started afterwards."""
        self._closed = True
        for stop in self._worker_stops.values():
            stop.set()
        tasks = list(self._worker_tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    # --- lifecycle --------------------------------------------------------------------------------

    def _new(self, name: str, pool: str, tier: Tier, now: float, cause: str) -> SimInstance:
        seq = next(self._seq)
        inst = SimInstance(
            instance_id=f"{name}-{pool}-{tier}-{seq}",
            instance_type=name,
            pool=pool,
            tier=tier,
            state="launched",
            launched_at=now,
            seq=seq,
            cause=cause,
        )
        self.instances[inst.instance_id] = inst
        return inst

    async def _publish(self, inst: SimInstance, at: float, correlation_id: str = "") -> None:
        """The node's current state, as an InstanceEvent stamped ``at`` (the time of the change that the
        records, and so the bill, hold)."""
        event = InstanceEvent(
            **envelope(self.bus.source, sent_at=at, correlation_id=correlation_id),
            instance_id=inst.instance_id,
            instance_type=inst.instance_type,
            pool=inst.pool,
            tier=inst.tier,
            state=inst.state,
        )
        await self.bus.publish(self.bus.subjects.fleet_instance(inst.instance_id), event)

    def _fleet_now(self, now: float) -> FleetNow:
        """Every node not terminated, as the fleet reconcile sees it, and what the market allows now."""
        nodes: list[NodeNow] = []
        spot_available: dict[tuple[str, str], int | None] = {}
        for inst in self.instances.values():
            standing = _standing(inst)
            if standing is None:
                continue
            nodes.append(
                NodeNow(
                    node_id=inst.instance_id,
                    slot=(inst.instance_type, inst.pool, inst.tier),
                    launch_order=inst.seq,
                    ready_at=inst.launched_at + self.config.boot_s if inst.state == "launched" else None,
                    standing=standing,
                    leave_at=inst.leave_at if standing == "leaving" else None,
                )
            )
        for name, pool in self.catalog.pools():
            spot_available[(name, pool)] = self.spot_available(name, pool, now)
        return FleetNow(now=now, nodes=nodes, spot_available=spot_available)

    def _in_catalog(self, targets: Mapping[Slot, int], plan_id: str) -> dict[Slot, int]:
        """The plan's spot and on-demand targets for the catalog's types and pools (others are logged)."""
        known: dict[Slot, int] = {}
        for (name, pool, tier), count in targets.items():
            if tier == "reserved":
                continue  # only commitment planning changes reserved nodes
            itype = self.catalog.types.get(name)
            if itype is None or pool not in itype.pools:
                _log.warning("unknown_target", plan_id=plan_id, instance_type=name, pool=pool)
                continue
            known[(name, pool, tier)] = count
        return known

    async def _carry_out(self, decision: Decision, now: float, cause: str) -> str | None:
        """Apply one decision of the fleet reconcile; the worker to stop routing to, for a node released."""
        if isinstance(decision, Launch):
            name, pool, tier = decision.slot
            for _ in range(decision.count):
                inst = self._new(name, pool, tier, now, cause)
                await self._publish(inst, now, cause)
        elif isinstance(decision, Refuse):
            self.launches_refused += decision.count
            name, pool, _tier = decision.slot
            _log.info(
                "launch_refused",
                instance_type=name,
                pool=pool,
                refused=decision.count,
                available=decision.available,
                holding=decision.holding,
            )
        elif isinstance(decision, TakeBack):
            inst = self.instances[decision.node_id]
            inst.leave_at, inst.leave_cause = None, ""
        elif decision.leave_at is not None:  # a Release, make before break
            inst = self.instances[decision.node_id]
            inst.leave_at, inst.leave_cause = decision.leave_at, cause
        else:
            inst = self.instances[decision.node_id]
            if await self._release(inst, now, cause):
                return inst.worker_id
        return None

    async def _boot(self, inst: SimInstance, now: float) -> None:
        """The node is ready: its worker runs and has reported once, then the event goes out."""
        inst.state = "ready"
        inst.ready_at = now
        await self._start_worker(inst)
        await self._publish(inst, now, inst.cause)

    async def _release(self, inst: SimInstance, now: float, cause: str) -> bool:
        """Start draining a node a plan no longer wants; True when it has a worker to stop routing to."""
        inst.state = "draining"
        inst.released_at = now
        inst.drain_cause = cause
        await self._publish(inst, now, cause)
        if inst.instance_id not in self.workers:
            await self._terminate(inst, now, cause)  # still booting: nothing to drain
            return False
        return True

    async def _terminate(self, inst: SimInstance, now: float, cause: str = "") -> None:
        worker = self.workers.pop(inst.instance_id, None)
        if worker is not None:
            worker.kill_at(now)  # a reclaimed node's worker already died at its (earlier) deadline
            await worker.sync()  # publishes the `lost` updates of what was left
            stop = self._worker_stops.pop(inst.instance_id, None)
            if stop is not None:
                stop.set()
        inst.state = "terminated"
        inst.terminated_at = now
        await self._publish(inst, now, cause)

    async def _reclaim(self, inst: SimInstance, now: float, why: str) -> None:
        """A preemption notice, exactly as the node's sidecar would publish it; the node starts draining."""
        short = self._notice_rng.random() < self.config.short_notice_share
        self.short_notices += short
        deadline = now + (self.config.short_notice_s if short else self.config.notice_s)
        inst.notice_deadline = deadline
        notice = await publish_notice(self.bus, inst.instance_id, now, deadline)
        inst.drain_cause = notice.msg_id
        worker = self.workers.get(inst.instance_id)
        if worker is not None:
            worker.kill_at(deadline)
        self.preemptions.append((inst.instance_id, now, deadline))
        _log.info("spot_reclaimed", instance_id=inst.instance_id, why=why, deadline=deadline, short=short)
        if inst.state != "draining":
            inst.state = "draining"
            await self._publish(inst, now, notice.msg_id)

    async def _load(self, inst: SimInstance) -> tuple[int, int, float]:
        """(output tokens still to generate, requests, bytes of KV cache) on the node's worker now; none
        without one."""
        worker = self.workers.get(inst.instance_id)
        if worker is None or worker.stopped:
            return 0, 0, 0.0
        await worker.sync()
        requests = worker.model.inflight()
        remaining = sum(r.expected_remaining_tokens for r in requests)
        return remaining, len(requests), sum(r.kv_bytes for r in requests)

    async def _busiest_first(
        self, nodes: Sequence[SimInstance], tie: Callable[[SimInstance], tuple[int, ...]]
    ) -> list[SimInstance]:
        """``nodes``, the busiest first (see the module's guarantees), ``tie`` ordering equally busy ones."""
        loads = {inst.instance_id: await self._load(inst) for inst in nodes}

        def key(inst: SimInstance) -> tuple[float, ...]:
            return (*(-x for x in loads[inst.instance_id]), *tie(inst))

        return sorted(nodes, key=key)

    async def _stop_routing(self, worker_id: str) -> None:
        command = StopRouting(**self.bus.envelope(), worker_id=worker_id)
        try:
            reply = await self.bus.request(
                self.bus.subjects.router_command("stop_routing"), command, RouterAck, _ROUTER_WAIT_S
            )
        except Exception as err:  # no router, no answer in time, an answer that does not decode
            _log.info("stop_routing_failed", worker_id=worker_id, error=str(err) or type(err).__name__)
            return
        if isinstance(reply, ErrorReply):
            _log.info("stop_routing_failed", worker_id=worker_id, error=reply.error)

    async def _start_worker(self, inst: SimInstance) -> None:
        if self._closed:
            return
        cfg = self.config
        worker = WorkerEmulator(
            self.bus,
            self.clock,
            worker_id=f"w-{inst.instance_id}",
            instance_id=inst.instance_id,
            instance_type=self.catalog.type(inst.instance_type),
            pool=inst.pool,
            tier=inst.tier,
            kv_bytes_per_token=cfg.kv_bytes_per_token,
            same_node_bytes_per_s=cfg.same_node_bytes_per_s,
            cross_node_bytes_per_s=cfg.cross_node_bytes_per_s,
            step_s=cfg.worker_step_s,
            metrics_interval_s=cfg.metrics_interval_s,
            fabric=self.fabric,
        )
        inst.worker_id = worker.worker_id
        stop = asyncio.Event()
        task = asyncio.ensure_future(worker.run(stop))
        self.workers[inst.instance_id] = worker
        self._worker_stops[inst.instance_id] = stop
        self._worker_tasks[inst.instance_id] = task
        task.add_done_callback(functools.partial(self._worker_ended, inst.instance_id))
        ready = asyncio.ensure_future(worker.ready.wait())
        try:
            await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not ready.done():
                ready.cancel()
        if not worker.ready.is_set():
            task.result()  # re-raises the worker's crash
            raise RuntimeError(f"worker {worker.worker_id} stopped while starting")
        await worker.sync()  # its first metrics are out: the agent and the router know of it

    def _worker_ended(self, instance_id: str, task: asyncio.Task[None]) -> None:
        if self._worker_tasks.get(instance_id) is task:
            del self._worker_tasks[instance_id]
        if not task.cancelled() and task.exception() is not None:
            _log.error("worker_crashed", instance_id=instance_id, error=repr(task.exception()))

    # --- the timer's steps ------------------------------------------------------------------------

    async def _end_drains(self, now: float) -> None:
        for inst in sorted(self.instances.values(), key=lambda i: i.seq):
            if inst.state != "draining":
                continue
            if inst.notice_deadline is not None and now >= inst.notice_deadline:
                await self._terminate(inst, now, inst.drain_cause)
            elif inst.released_at is not None:
                worker = self.workers.get(inst.instance_id)
                if worker is None or now >= inst.released_at + self.config.release_grace_s:
                    await self._terminate(inst, now, inst.drain_cause)
                else:
                    await worker.sync()
                    if _idle(worker):
                        await self._terminate(inst, now, inst.drain_cause)

    async def _market(self, now: float) -> None:
        heartbeat = now >= self._next_price_at
        # Quotes first: the agent re-plans on the notices below knowing what the market now allows.
        await self._quotes.publish(now, every_pool=heartbeat)
        if heartbeat:
            for inst in sorted(self.instances.values(), key=lambda i: i.seq):
                if inst.state != "terminated":
                    await self._publish(inst, now)  # a restarted agent learns the fleet
            while self._next_price_at <= now:  # drift-free; missed heartbeats are not bunched
                self._next_price_at += self.config.price_interval_s
        for name, pool in self.catalog.pools():
            available = self._quotes.quoted.get((name, pool))
            if available is None:
                continue
            holders = [
                i
                for i in self.instances.values()
                if i.tier == "spot" and (i.instance_type, i.pool) == (name, pool) and _hold_market(i)
            ]
            excess = len(holders) - available
            if excess > 0:
                for inst in (await self._busiest_first(holders, lambda i: (-i.seq,)))[:excess]:
                    await self._reclaim(inst, now, "market")

    async def _storm(self, now: float) -> None:
        begin_offset = self.config.storm_start_s
        last, self._storm_checked = self._storm_checked, now
        if begin_offset is None or self.started_at is None or self.config.storm_rate_per_hour == 0:
            return
        begin = self.started_at + begin_offset
        end = begin + self.config.storm_duration_s
        dt = min(now, end) - max(last, begin)
        if dt <= 0:
            return
        p = storm_hit_probability(self.config.storm_rate_per_hour, dt)
        candidates = sorted(
            (
                i
                for i in self.instances.values()
                if i.tier == "spot" and i.state in ("launched", "ready") and i.notice_deadline is None
            ),
            key=lambda i: i.seq,
        )
        hits = {i.instance_id for i in candidates if self._rng.random() < p}  # one draw each, always
        if not hits:
            return
        ranked = await self._busiest_first(candidates, lambda i: (i.instance_id not in hits, i.seq))
        for inst in ranked[: len(hits)]:
            self.storm_reclaims += 1
            await self._reclaim(inst, now, "storm")

    async def _boots(self, now: float) -> None:
        for inst in sorted(self.instances.values(), key=lambda i: i.seq):
            if inst.state == "launched" and inst.launched_at + self.config.boot_s <= now + _SLACK:
                await self._boot(inst, now)
