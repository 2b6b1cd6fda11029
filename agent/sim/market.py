"""A simulated spot market and bill for a fleet that an actuator runs (the Dynamo demo: the agent's local
actuator runs one Dynamo worker per node); it plays the cloud's part and nothing else.

Listens to: ``{ns}.evt.fleet.instance.*`` (InstanceEvent: what the actuator launched, readied, drained and
terminated), and its own timer every ``check_s`` clock seconds.
Publishes:
- ``{ns}.evt.spot.price.{pool}`` (SpotPrice) for every spot (type, pool) of the catalog: at start, every
  ``price_interval_s``, and at once when the market's availability changes (before any reclaim it causes).
- ``{ns}.evt.spot.notice.{instance_id}`` (PreemptionNotice, kind ``terminate``, provider ``sim``, source
  ``sidecar:{instance_id}``): the message a node's sidecar publishes when the cloud reclaims it. What the
  node does next is the agent's: its spot monitor orders the drain, the actuator stops routing to the node
  and kills it at the deadline (on a real cloud the machine dies then whatever the agent does).
- ``{ns}.evt.fleet.instance.{instance_id}`` (InstanceEvent) for the reserved nodes the demo runs itself
  (:meth:`SimMarket.add_reserved`): ``launched`` and ``ready`` at once, repeated with every price
  heartbeat (how a restarted agent learns them), ``terminated`` at :meth:`SimMarket.retire_reserved`.

Rules:
- A spot node holds its pool's market capacity from ``launched`` until ``terminated`` unless reclaimed.
  Where the holders exceed what ``spot_available`` allows, the excess is reclaimed, the busiest first
  (among equally busy nodes, the newest first).
- The storm: in its window, each check draws for every spot node not yet reclaimed that has been ready
  for ``storm_min_uptime_s``, in launch order from ``Random(seed)``, a hit with probability
  ``1 - (1 - rate) ** (dt / 3600)``; as many of them as there were hits are reclaimed, the busiest first
  (then those whose own draw hit, then launch order), as a storm hits the machines running work.
- Busiest: the highest ``load(instance_id)`` (the demo's: the KV context its Dynamo worker holds, from
  its latest forward pass); without ``load`` every node is as busy as any other.
- Each notice is ``short_notice_s`` long with probability ``short_share`` (from the same generator),
  else ``notice_s``: providers give 30 s to 2 min, and a storm does not wait.
- No node is reclaimed twice. :meth:`bill` prices each node from ``launched`` to ``terminated`` (or now)
  at its type's catalog price for its tier.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import structlog
from nats.aio.msg import Msg

from agent.bus import Bus
from agent.core.catalog import TIERS, Catalog, Tier
from agent.runtime.actor import Actor, Listen
from agent.runtime.clock import Clock
from agent.sim.cloud_signals import SpotAvailability, SpotQuotes, publish_notice, storm_hit_probability
from schemas import InstanceEvent, InstanceState, envelope

_SECONDS_PER_HOUR: Final = 3600.0
_log = structlog.get_logger("agent.sim.market")


@dataclass(frozen=True, slots=True)
class MarketConfig:
    notice_s: float = 120.0
    short_notice_s: float = 30.0
    short_share: float = 0.5
    check_s: float = 15.0
    price_interval_s: float = 300.0
    storm_start_s: float | None = None
    """From this many clock seconds after the start ..."""
    storm_duration_s: float = 3600.0
    storm_rate_per_hour: float = 0.3
    storm_min_uptime_s: float = 600.0
    """A storm hits nodes that are running work: ready for at least this long."""
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.storm_min_uptime_s) and self.storm_min_uptime_s >= 0):
            raise ValueError(f"market: storm_min_uptime_s must be ≥ 0, got {self.storm_min_uptime_s!r}")
        for name in ("notice_s", "short_notice_s", "check_s", "price_interval_s", "storm_duration_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"market: {name} must be a finite number > 0, got {value!r}")
        for name in ("short_share", "storm_rate_per_hour"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"market: {name} must be in [0, 1], got {getattr(self, name)!r}")


@dataclass(slots=True)
class MarketNode:
    instance_id: str
    instance_type: str
    pool: str
    tier: Tier
    state: InstanceState
    launched_at: float
    seq: int
    ready_at: float | None = None
    terminated_at: float | None = None
    reclaimed: bool = False


@dataclass(frozen=True, slots=True)
class Preemption:
    instance_id: str
    at: float
    deadline: float
    why: str


class SimMarket(Actor):
    name = "sim_market"

    def __init__(
        self,
        bus: Bus,
        clock: Clock,
        *,
        catalog: Catalog,
        config: MarketConfig,
        spot_available: SpotAvailability,
        load: Callable[[str], float] | None = None,
    ) -> None:
        super().__init__(bus, clock, interval_s=config.check_s)
        self.catalog = catalog
        self.config = config
        self.spot_available = spot_available
        self.load = load
        self.nodes: dict[str, MarketNode] = {}
        self.preemptions: list[Preemption] = []
        self.max_running = 0
        """The most nodes running at once (launched to terminated)."""
        self.started_at: float | None = None
        self._rng = random.Random(config.seed)
        self._seq = 0
        self._quotes = SpotQuotes(bus, catalog, spot_available)
        self._next_price_at = 0.0
        self._storm_checked = 0.0

    # --- queries ----------------------------------------------------------------------------------

    def running(self) -> list[MarketNode]:
        return [n for n in self.nodes.values() if n.state != "terminated"]

    def bill(self, until: float | None = None) -> dict[str, float]:
        """$ by tier (the three keys) and ``total``: each node from launched to terminated (or ``until``)."""
        end_of_bill = self.clock.now() if until is None else until
        by_tier = dict.fromkeys(TIERS, 0.0)
        for node in self.nodes.values():
            end = node.terminated_at if node.terminated_at is not None else end_of_bill
            hours = max(0.0, min(end, end_of_bill) - node.launched_at) / _SECONDS_PER_HOUR
            by_tier[node.tier] += hours * self.catalog.type(node.instance_type).price(node.tier)
        return {**{str(k): v for k, v in by_tier.items()}, "total": sum(by_tier.values())}

    # --- the demo's own reserved nodes ------------------------------------------------------------

    async def add_reserved(self, instance_id: str, instance_type: str, pool: str) -> None:
        now = self.clock.now()
        node = self._record(instance_id, instance_type, pool, "reserved", "ready", now)
        await self._publish(node, "launched", now)
        await self._publish(node, "ready", now)

    async def retire_reserved(self) -> None:
        now = self.clock.now()
        for node in self.running():
            if node.tier == "reserved":
                node.state, node.terminated_at = "terminated", now
                await self._publish(node, "terminated", now)

    # --- actor ------------------------------------------------------------------------------------

    def subscriptions(self) -> Sequence[Listen]:
        return [Listen(self.bus.subjects.fleet_instance_all, InstanceEvent, self.on_instance)]

    async def on_start(self) -> None:
        if self.started_at is not None:
            return
        now = self.clock.now()
        self.started_at = self._storm_checked = now
        await self._quotes.publish(now, every_pool=True)
        self._next_price_at = now + self.config.price_interval_s

    async def on_instance(self, event: InstanceEvent, _raw: Msg) -> None:
        if event.source == self.bus.source:
            return  # our own reserved nodes
        node = self.nodes.get(event.instance_id)
        if node is None:
            node = self._record(
                event.instance_id, event.instance_type, event.pool, event.tier, event.state, event.sent_at
            )
        if node.state == "terminated":
            return
        node.state = event.state
        if event.state == "ready" and node.ready_at is None:
            node.ready_at = event.sent_at
        elif event.state == "terminated":
            node.terminated_at = event.sent_at

    async def on_timer(self) -> None:
        now = self.clock.now()
        heartbeat = now >= self._next_price_at
        await self._quotes.publish(
            now, every_pool=heartbeat
        )  # first: the agent re-plans knowing what is left
        if heartbeat:
            for node in self.running():
                if node.tier == "reserved":
                    await self._publish(node, node.state, now)
            while self._next_price_at <= now:
                self._next_price_at += self.config.price_interval_s
        await self._market(now)
        await self._storm(now)

    # --- rules ------------------------------------------------------------------------------------

    def _record(
        self, instance_id: str, instance_type: str, pool: str, tier: Tier, state: InstanceState, at: float
    ) -> MarketNode:
        self._seq += 1
        node = MarketNode(instance_id, instance_type, pool, tier, state, at, self._seq)
        self.nodes[instance_id] = node
        self.max_running = max(self.max_running, len(self.running()))
        return node

    def _holders(self, name: str, pool: str) -> list[MarketNode]:
        return sorted(
            (
                n
                for n in self.running()
                if n.tier == "spot" and not n.reclaimed and (n.instance_type, n.pool) == (name, pool)
            ),
            key=lambda n: n.seq,
        )

    def _busiest_first(
        self, nodes: Sequence[MarketNode], tie: Callable[[MarketNode], tuple[int, ...]]
    ) -> list[MarketNode]:
        loads = {n.instance_id: self.load(n.instance_id) if self.load is not None else 0.0 for n in nodes}
        return sorted(nodes, key=lambda n: (-loads[n.instance_id], *tie(n)))

    async def _market(self, now: float) -> None:
        for name, pool in self.catalog.pools():
            available = self._quotes.quoted.get((name, pool))
            if available is None:
                continue
            holders = self._holders(name, pool)
            excess = len(holders) - available
            if excess > 0:
                for node in self._busiest_first(holders, lambda n: (-n.seq,))[:excess]:
                    await self._reclaim(node, now, "market")

    async def _storm(self, now: float) -> None:
        cfg, last = self.config, self._storm_checked
        self._storm_checked = now
        if cfg.storm_start_s is None or self.started_at is None or cfg.storm_rate_per_hour == 0:
            return
        begin = self.started_at + cfg.storm_start_s
        dt = min(now, begin + cfg.storm_duration_s) - max(last, begin)
        if dt <= 0:
            return
        p = storm_hit_probability(cfg.storm_rate_per_hour, dt)
        candidates = [
            n
            for n in sorted(self.running(), key=lambda n: n.seq)
            if n.tier == "spot"
            and not n.reclaimed
            and n.state == "ready"
            and n.ready_at is not None
            and now - n.ready_at >= cfg.storm_min_uptime_s
        ]
        hits = {n.instance_id for n in candidates if self._rng.random() < p}
        ranked = self._busiest_first(candidates, lambda n: (n.instance_id not in hits, n.seq))
        for node in ranked[: len(hits)]:
            await self._reclaim(node, now, "storm")

    async def _reclaim(self, node: MarketNode, now: float, why: str) -> None:
        short = self._rng.random() < self.config.short_share
        deadline = now + (self.config.short_notice_s if short else self.config.notice_s)
        node.reclaimed = True
        await publish_notice(self.bus, node.instance_id, now, deadline)
        self.preemptions.append(Preemption(node.instance_id, now, deadline, why))
        _log.info("spot_reclaimed", instance_id=node.instance_id, why=why, notice_s=deadline - now)

    async def _publish(self, node: MarketNode, state: InstanceState, at: float) -> None:
        event = InstanceEvent(
            **envelope(self.bus.source, sent_at=at),
            instance_id=node.instance_id,
            instance_type=node.instance_type,
            pool=node.pool,
            tier=node.tier,
            state=state,
        )
        await self.bus.publish(self.bus.subjects.fleet_instance(node.instance_id), event)
