"""The backtest: replay a demand trace and spot availability traces through a capacity policy.

Time advances in fixed steps (default 1 minute). Every step goes through these phases (methods of
``_Replay``):

1. ``reclaim``: in a pool whose availability fell below the spot nodes held there, the excess is reclaimed
   (newest first). Each reclaimed node gets a notice and keeps serving until its deadline (``notice_s``
   later; a node still booting never serves), then disappears. Every notice wakes the policy.
2. ``depart``: nodes past their deadline go, and released nodes whose leave time has come. (Nodes whose
   boot finished, ``boot_s`` after launch, serve from then on.)
3. ``act``: the policy acts every ``policy_interval_s``, on every notice, and when it asked to after seeing
   the last step's demand (a surge the agent's profiler reports at once): it returns spot and on-demand
   targets per (type, pool), a (type, pool) it leaves out meaning none. The fleet reconcile
   (:func:`agent.core.reconcile.reconcile`, the rule every actuator applies) decides: take a leaving node
   back before launching, launch (spot only where the market has room; a pool the market does not trade
   has none), release the surplus newest first, a booting node at once and a running one make before
   break (it keeps serving, and costing, until the nodes booting at that moment are up).
4. ``serve_and_pay``: capacity is what serves: reserved, running and draining nodes, each at its type's
   requests/s for the step's token mix at the SLO's utilization target. Demand above it is unserved in
   that step. Every held node (booting, running, draining, leaving) costs its tier's price; reserved ones
   cost every step. The step's arrivals and capacity (tokens/s) are kept for the queue score
   (:mod:`agent.core.queue_slo`), which replays the same capacity as a FIFO queue instead.

The first ``warmup_days`` only feed the policy's observations (profiler, commitment) and are not scored.
When scoring starts (``commit``), the policy commits to its reserved nodes and its first targets are taken
as already running, so no strategy is charged for a cold start.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from agent.core.capacity import SloConfig, rps_per_instance
from agent.core.catalog import TIERS, Catalog, Tier
from agent.core.demand import Demand
from agent.core.optimizer import PoolKey
from agent.core.queue_slo import QueueScore, queue_score
from agent.core.reconcile import (
    HOLDS_MARKET,
    Decision,
    FleetNow,
    Launch,
    NodeNow,
    Release,
    Slot,
    Standing,
    TakeBack,
    reconcile,
)

Reason = Literal["start", "tick", "notice", "demand"]


@dataclass(frozen=True, slots=True)
class SimConfig:
    step_s: float = 60.0
    policy_interval_s: float = 300.0
    notice_s: float = 120.0
    boot_s: float = 360.0
    warmup_days: float = 7.0
    slo: SloConfig = field(default_factory=SloConfig)
    queue_delay_s: float = 60.0
    """The queue score's delay: a token served within this many seconds of its arrival counts."""

    def __post_init__(self) -> None:
        for name in ("step_s", "policy_interval_s", "queue_delay_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("notice_s", "boot_s", "warmup_days"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be ≥ 0")


@dataclass(frozen=True, slots=True)
class Market:
    """Spot availability per step and pool: ``available[step, pool_index]`` for ``pools``."""

    pools: tuple[PoolKey, ...]
    available: np.ndarray

    def index(self) -> dict[PoolKey, int]:
        return {k: i for i, k in enumerate(self.pools)}


@dataclass(frozen=True, slots=True)
class View:
    """What a policy sees when it acts."""

    t: float
    step: int
    reason: Reason
    demand_now: Demand
    reserved: dict[str, int]
    spot: dict[PoolKey, int]
    """Spot nodes held and not reclaimed (booting or running), per pool."""
    spot_ready: dict[PoolKey, int]
    ondemand: dict[PoolKey, int]
    available: dict[PoolKey, int]


@dataclass(frozen=True, slots=True)
class Targets:
    spot: dict[PoolKey, int]
    ondemand: dict[PoolKey, int]


class Policy(Protocol):
    name: str

    def observe(self, t: float, demand: Demand) -> None:
        """Called with every step's actual demand, after the step (warm-up included)."""

    def commit(self, t: float, market: Market) -> dict[str, int]:
        """Reserved nodes per type, decided once when scoring starts."""

    def plan(self, view: View) -> Targets:
        """Spot and on-demand targets per pool."""

    def wants_plan(self, t: float, demand: Demand) -> bool:
        """Asked after every scored step's :meth:`observe`: act at the next step even off the tick?"""


@dataclass(frozen=True, slots=True)
class StepRecord:
    """Per scored step, for plots: demand, capacity by tier, and preemptions."""

    t: float
    demand_rps: float
    capacity_rps: dict[Tier, float]
    served_rps: float
    preempted: int


@dataclass(frozen=True, slots=True)
class BacktestResult:
    name: str
    cost: float
    hours: float
    demand_tokens: float
    served_tokens: float
    shortfall_minutes: float
    preemptions: int
    node_hours: dict[Tier, float]
    reserved: dict[str, int]
    queue: QueueScore
    """The same capacity replayed as a FIFO queue: the share served within ``SimConfig.queue_delay_s``."""
    records: tuple[StepRecord, ...] = ()

    @property
    def slo_attainment(self) -> float:
        return self.served_tokens / self.demand_tokens if self.demand_tokens > 0 else 1.0

    @property
    def monthly_cost(self) -> float:
        return self.cost * 730.0 / self.hours if self.hours else 0.0

    @property
    def cost_per_mtok(self) -> float | None:
        return self.cost / (self.served_tokens / 1e6) if self.served_tokens > 0 else None


def run_backtest(
    catalog: Catalog,
    demand: Sequence[Demand],
    market: Market,
    policy: Policy,
    cfg: SimConfig,
    *,
    start_epoch: float = 0.0,
    keep_records: bool = False,
    progress: Callable[[int], None] | None = None,
) -> BacktestResult:
    """Run ``policy`` over ``demand`` (one value per ``cfg.step_s``) against ``market``."""
    n_steps = len(demand)
    if n_steps == 0:
        raise ValueError("no demand to replay")
    if market.available.shape != (n_steps, len(market.pools)):
        raise ValueError(
            f"market.available has shape {market.available.shape}, expected ({n_steps}, {len(market.pools)})"
        )
    warmup = min(n_steps, round(cfg.warmup_days * 86400 / cfg.step_s))
    interval = max(1, round(cfg.policy_interval_s / cfg.step_s))
    for i in range(warmup):
        policy.observe(start_epoch + i * cfg.step_s, demand[i])

    replay = _Replay(catalog, market, policy, cfg, keep_records)
    last_demand = demand[warmup - 1] if warmup > 0 else demand[0]
    woken = False
    for i in range(warmup, n_steps):
        t = start_epoch + i * cfg.step_s
        if i == warmup:
            replay.commit(t, i)
        preempted = replay.reclaim(t, i)
        replay.depart(t)
        reason = _reason(i - warmup, interval, preempted, woken)
        if reason is not None:
            replay.act(t, i, reason, last_demand)
        replay.serve_and_pay(t, demand[i], preempted)
        policy.observe(t, demand[i])
        woken = policy.wants_plan(t, demand[i])
        last_demand = demand[i]
        if progress is not None:
            progress(i)
    return replay.result(hours=(n_steps - warmup) * cfg.step_s / 3600.0)


def _reason(scored: int, interval: int, preempted: int, woken: bool) -> Reason | None:
    """Why the policy acts at the ``scored``-th scored step, if it does."""
    if scored == 0:
        return "start"
    if scored % interval == 0:
        return "tick"
    if preempted:
        return "notice"
    return "demand" if woken else None


@dataclass(slots=True)
class _Node:
    key: PoolKey
    tier: Tier
    ready_at: float
    seq: int
    """Launch order."""
    deadline: float = math.inf
    """A reclaimed node's: it goes then."""
    serves: bool = True
    """False for a node reclaimed while still booting: it goes at its deadline without ever serving."""
    leave_at: float = math.inf
    """A released node that serves until the nodes launched with it are up (make before break)."""

    @property
    def standing(self) -> Standing:
        """Released nodes are gone at once here, or leaving (make before break): none is ``released``."""
        if self.deadline != math.inf:
            return "reclaimed"
        return "held" if self.leave_at == math.inf else "leaving"

    def now(self, t: float) -> NodeNow:
        """As the fleet reconcile sees it."""
        standing = self.standing
        return NodeNow(
            node_id=str(self.seq),
            slot=(*self.key, self.tier),
            launch_order=self.seq,
            ready_at=self.ready_at if self.ready_at > t else None,
            standing=standing,
            leave_at=self.leave_at if standing == "leaving" else None,
        )


@dataclass(slots=True)
class _Replay:
    """The scored steps' state, one method per phase of a step."""

    catalog: Catalog
    market: Market
    policy: Policy
    cfg: SimConfig
    keep_records: bool
    nodes: list[_Node] = field(default_factory=list)
    reserved: dict[str, int] = field(default_factory=dict)
    reserved_hourly: float = 0.0
    launched: int = 0
    cost: float = 0.0
    demand_tokens: float = 0.0
    served_tokens: float = 0.0
    shortfall_steps: int = 0
    preemptions: int = 0
    node_hours: dict[Tier, float] = field(default_factory=lambda: dict.fromkeys(TIERS, 0.0))
    records: list[StepRecord] = field(default_factory=list)
    arrivals_tps: list[float] = field(default_factory=list)
    capacity_tps: list[float] = field(default_factory=list)
    pool_index: dict[PoolKey, int] = field(init=False)

    def __post_init__(self) -> None:
        self.pool_index = self.market.index()

    def commit(self, t: float, i: int) -> None:
        """The scored start: the policy commits to its reserved nodes, knowing the market's past only."""
        seen = Market(self.market.pools, self.market.available[: max(i, 1)])
        self.reserved = {k: v for k, v in self.policy.commit(t, seen).items() if v > 0}
        self.reserved_hourly = sum(
            self.catalog.types[k].reserved_hourly * v for k, v in self.reserved.items()
        )

    def reclaim(self, t: float, i: int) -> int:
        """Spot held beyond what its pool now allows gets a notice, newest first; how many did."""
        available = self.market.available[i]
        held: dict[PoolKey, list[_Node]] = {}
        for node in self.nodes:
            if node.tier == "spot" and node.standing in HOLDS_MARKET:
                held.setdefault(node.key, []).append(node)
        preempted = 0
        for key, group in held.items():
            excess = len(group) - int(available[self.pool_index[key]])
            if excess > 0:
                for node in sorted(group, key=lambda n: n.ready_at, reverse=True)[:excess]:
                    node.deadline = t + self.cfg.notice_s
                    node.serves = node.ready_at <= t
                    preempted += 1
        self.preemptions += preempted
        return preempted

    def depart(self, t: float) -> None:
        """Nodes past their notice's deadline are gone, and released ones whose leave time has come: the
        time the launches they waited for were due, even if those were reclaimed meanwhile (the policy,
        woken by the notice, may have taken them back)."""
        self.nodes = [n for n in self.nodes if n.deadline > t and n.leave_at > t]

    def act(self, t: float, i: int, reason: Reason, last_demand: Demand) -> None:
        """The policy plans; the fleet reconcile's decisions are applied (at the scored start, the nodes
        launched are taken as already running)."""
        available = {k: int(self.market.available[i][j]) for k, j in self.pool_index.items()}
        active = [n for n in self.nodes if n.standing == "held"]
        view = View(
            t=t,
            step=i,
            reason=reason,
            demand_now=last_demand,
            reserved=dict(self.reserved),
            spot=_count(active, "spot"),
            spot_ready=_count([n for n in active if n.ready_at <= t], "spot"),
            ondemand=_count(active, "ondemand"),
            available=available,
        )
        slots = _slots(self.policy.plan(view), self.nodes)
        # A pool the market does not trade has no room for spot.
        market = {slot[:2]: available.get(slot[:2], 0) for slot in slots if slot[2] == "spot"}
        fleet = FleetNow(now=t, nodes=[n.now(t) for n in self.nodes], spot_available=market)
        boot_s = 0.0 if reason == "start" else self.cfg.boot_s
        self._apply(reconcile(fleet, slots, boot_s=boot_s))

    def _apply(self, decisions: Sequence[Decision]) -> None:
        by_id = {str(n.seq): n for n in self.nodes}
        gone: set[str] = set()
        for decision in decisions:
            if isinstance(decision, TakeBack):
                by_id[decision.node_id].leave_at = math.inf
            elif isinstance(decision, Launch):
                name, pool, tier = decision.slot
                for _ in range(decision.count):
                    self.launched += 1
                    self.nodes.append(_Node((name, pool), tier, decision.ready_at, self.launched))
            elif isinstance(decision, Release):
                if decision.leave_at is None:
                    gone.add(decision.node_id)
                else:
                    by_id[decision.node_id].leave_at = decision.leave_at
        if gone:
            self.nodes = [n for n in self.nodes if str(n.seq) not in gone]

    def serve_and_pay(self, t: float, d: Demand, preempted: int) -> None:
        """Capacity is what serves (reserved, running and draining nodes), demand above it is unserved;
        every node held is paid for, and every reserved one."""
        by_tier = self._capacity(t, d)
        capacity = sum(by_tier.values())
        served = min(d.rps, capacity)
        step_s = self.cfg.step_s
        tokens_per_request = d.prompt_tokens + d.output_tokens
        self.demand_tokens += d.rps * tokens_per_request * step_s
        self.served_tokens += served * tokens_per_request * step_s
        self.arrivals_tps.append(d.rps * tokens_per_request)
        self.capacity_tps.append(capacity * tokens_per_request)
        if d.rps > capacity + 1e-9:
            self.shortfall_steps += 1
        self._pay()
        if self.keep_records:
            self.records.append(StepRecord(t, d.rps, by_tier, served, preempted))

    def _capacity(self, t: float, d: Demand) -> dict[Tier, float]:
        caps = _capacity_per_node(self.catalog, d, self.cfg.slo)
        by_tier: dict[Tier, float] = {"reserved": 0.0, "spot": 0.0, "ondemand": 0.0}
        for name, count in self.reserved.items():
            by_tier["reserved"] += caps[name] * count
        for node in self.nodes:
            if node.ready_at <= t and node.serves:
                by_tier[node.tier] += caps[node.key[0]]
        return by_tier

    def _pay(self) -> None:
        step_h = self.cfg.step_s / 3600.0
        self.cost += self.reserved_hourly * step_h
        self.node_hours["reserved"] += sum(self.reserved.values()) * step_h
        for node in self.nodes:
            self.cost += self.catalog.types[node.key[0]].price(node.tier) * step_h
            self.node_hours[node.tier] += step_h

    def result(self, hours: float) -> BacktestResult:
        return BacktestResult(
            name=self.policy.name,
            cost=self.cost,
            hours=hours,
            demand_tokens=self.demand_tokens,
            served_tokens=self.served_tokens,
            shortfall_minutes=self.shortfall_steps * self.cfg.step_s / 60.0,
            preemptions=self.preemptions,
            node_hours=self.node_hours,
            reserved=self.reserved,
            queue=queue_score(
                np.asarray(self.arrivals_tps),
                np.asarray(self.capacity_tps),
                self.cfg.step_s,
                self.cfg.queue_delay_s,
            ),
            records=tuple(self.records),
        )


def _capacity_per_node(catalog: Catalog, demand: Demand, slo: SloConfig) -> dict[str, float]:
    return {
        name: rps_per_instance(t, demand.prompt_tokens, demand.output_tokens, slo)
        for name, t in catalog.types.items()
    }


def _count(nodes: Sequence[_Node], tier: Tier) -> dict[PoolKey, int]:
    out: dict[PoolKey, int] = {}
    for n in nodes:
        if n.tier == tier:
            out[n.key] = out.get(n.key, 0) + 1
    return out


def _slots(targets: Targets, nodes: Sequence[_Node]) -> dict[Slot, int]:
    """A policy's targets as the fleet reconcile takes them: a (type, pool) a policy leaves out of a tier
    wants none of it there (and a count below zero is none)."""
    tiers: tuple[tuple[Tier, Mapping[PoolKey, int]], ...] = (
        ("spot", targets.spot),
        ("ondemand", targets.ondemand),
    )
    slots: dict[Slot, int] = {
        (name, pool, tier): max(0, int(count))
        for tier, wanted in tiers
        for (name, pool), count in wanted.items()
    }
    for node in nodes:
        slots.setdefault((*node.key, node.tier), 0)
    return slots
