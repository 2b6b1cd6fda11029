"""The backtest: replay a demand trace and spot availability traces through a capacity policy.

Time advances in fixed steps (default 1 minute). Every step:

1. The spot market: in a pool whose availability fell below the spot nodes held there, the excess is
   reclaimed (newest first). Each reclaimed node gets a notice and keeps serving until its deadline
   (``notice_s`` later; a node still booting never serves), then disappears. Every notice wakes the policy.
2. Nodes whose boot finished (``boot_s`` after launch) start serving; nodes past their deadline go.
3. The policy acts every ``policy_interval_s``, on every notice, and when it asked to after seeing the
   last step's demand (a surge the agent's profiler reports at once): it returns spot and on-demand targets
   per (type, pool). Launches start booting (spot only where the market has room); releases take booting
   nodes first, then running ones. A running node is released make-before-break: until the nodes booting
   at that moment are up it keeps serving (and costing), as an actuator replacing nodes would do.
4. Capacity is what serves: reserved, running and draining nodes, each at its type's requests/s for the
   step's token mix at the SLO's utilization target. Demand above it is unserved in that step.
5. Cost: every held node (booting, running, draining) at its tier's price; reserved for every step.

The first ``warmup_days`` only feed the policy's observations (profiler, commitment) and are not scored.
When scoring starts, the policy commits to its reserved nodes and its first targets are taken as already
running, so no strategy is charged for a cold start.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from agent.core.capacity import SloConfig, rps_per_instance
from agent.core.catalog import Catalog, Tier
from agent.core.demand import Demand
from agent.core.optimizer import PoolKey

Reason = Literal["start", "tick", "notice", "demand"]


@dataclass(frozen=True, slots=True)
class SimConfig:
    step_s: float = 60.0
    policy_interval_s: float = 300.0
    notice_s: float = 120.0
    boot_s: float = 360.0
    warmup_days: float = 7.0
    slo: SloConfig = field(default_factory=SloConfig)

    def __post_init__(self) -> None:
        for name in ("step_s", "policy_interval_s"):
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


@dataclass(slots=True)
class _Node:
    key: PoolKey
    tier: Tier
    ready_at: float
    deadline: float = math.inf
    serves: bool = True
    """False for a node reclaimed while still booting: it goes at its deadline without ever serving."""
    leaving: bool = False
    """Released, but kept serving until the nodes launched with it are up (make before break)."""
    leave_at: float = math.inf


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


def _capacity_per_node(catalog: Catalog, demand: Demand, slo: SloConfig) -> dict[str, float]:
    return {
        name: rps_per_instance(t, demand.prompt_tokens, demand.output_tokens, slo)
        for name, t in catalog.types.items()
    }


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
    step_h = cfg.step_s / 3600.0
    warmup = min(n_steps, round(cfg.warmup_days * 86400 / cfg.step_s))
    interval = max(1, round(cfg.policy_interval_s / cfg.step_s))
    pool_index = market.index()
    for i in range(warmup):
        policy.observe(start_epoch + i * cfg.step_s, demand[i])

    reserved: dict[str, int] = {}
    nodes: list[_Node] = []
    cost = 0.0
    demand_tokens = served_tokens = shortfall_steps = 0.0
    preemptions = 0
    node_hours: dict[Tier, float] = {"reserved": 0.0, "spot": 0.0, "ondemand": 0.0}
    records: list[StepRecord] = []
    reserved_hourly = 0.0
    last_demand = demand[warmup - 1] if warmup > 0 else demand[0]
    woken = False

    for i in range(warmup, n_steps):
        t = start_epoch + i * cfg.step_s
        avail = market.available[i]
        reason: Reason | None = "start" if i == warmup else ("tick" if (i - warmup) % interval == 0 else None)
        if i == warmup:
            seen = Market(market.pools, market.available[: max(i, 1)])  # the past only
            reserved = {k: v for k, v in policy.commit(t, seen).items() if v > 0}
            reserved_hourly = sum(catalog.types[k].reserved_hourly * v for k, v in reserved.items())

        # 1. Reclaims: spot held beyond what the pool now allows.
        preempted_now = 0
        held: dict[PoolKey, list[_Node]] = {}
        for node in nodes:
            if node.tier == "spot" and node.deadline == math.inf:
                held.setdefault(node.key, []).append(node)
        for key, group in held.items():
            excess = len(group) - int(avail[pool_index[key]])
            if excess > 0:
                for node in sorted(group, key=lambda n: n.ready_at, reverse=True)[:excess]:
                    node.deadline = t + cfg.notice_s
                    node.serves = node.ready_at <= t
                    preempted_now += 1
        preemptions += preempted_now
        if preempted_now and reason is None:
            reason = "notice"
        if woken and reason is None:
            reason = "demand"

        # 2. Nodes past their deadline are gone; released nodes go once nothing is booting.
        nodes = [n for n in nodes if n.deadline > t]
        # Released nodes stay until the launches they wait for were due, even if those were reclaimed
        # meanwhile (the policy, woken by the notice, may then take them back).
        nodes = [n for n in nodes if not (n.leaving and n.leave_at <= t)]

        # 3. The policy.
        if reason is not None:
            active = [n for n in nodes if n.deadline == math.inf and not n.leaving]
            view = View(
                t=t,
                step=i,
                reason=reason,
                demand_now=last_demand,
                reserved=dict(reserved),
                spot=_count(active, "spot"),
                spot_ready=_count([n for n in active if n.ready_at <= t], "spot"),
                ondemand=_count(active, "ondemand"),
                available={k: int(avail[j]) for k, j in pool_index.items()},
            )
            targets = policy.plan(view)
            nodes = _apply(nodes, targets, t, cfg, avail, pool_index, instant=(reason == "start"))

        # 4. Serve.
        d = demand[i]
        caps = _capacity_per_node(catalog, d, cfg.slo)
        by_tier: dict[Tier, float] = {"reserved": 0.0, "spot": 0.0, "ondemand": 0.0}
        for name, count in reserved.items():
            by_tier["reserved"] += caps[name] * count
        for node in nodes:
            if node.ready_at <= t and node.serves:
                by_tier[node.tier] += caps[node.key[0]]
        capacity = sum(by_tier.values())
        served = min(d.rps, capacity)
        tokens_per_request = d.prompt_tokens + d.output_tokens
        demand_tokens += d.rps * tokens_per_request * cfg.step_s
        served_tokens += served * tokens_per_request * cfg.step_s
        if d.rps > capacity + 1e-9:
            shortfall_steps += 1

        # 5. Pay.
        cost += reserved_hourly * step_h
        node_hours["reserved"] += sum(reserved.values()) * step_h
        for node in nodes:
            itype = catalog.types[node.key[0]]
            cost += itype.price(node.tier) * step_h
            node_hours[node.tier] += step_h
        if keep_records:
            records.append(StepRecord(t, d.rps, by_tier, served, preempted_now))
        policy.observe(t, d)
        woken = policy.wants_plan(t, d)
        last_demand = d
        if progress is not None:
            progress(i)

    return BacktestResult(
        name=policy.name,
        cost=cost,
        hours=(n_steps - warmup) * step_h,
        demand_tokens=demand_tokens,
        served_tokens=served_tokens,
        shortfall_minutes=shortfall_steps * cfg.step_s / 60.0,
        preemptions=preemptions,
        node_hours=node_hours,
        reserved=reserved,
        records=tuple(records),
    )


def _count(nodes: Sequence[_Node], tier: Tier) -> dict[PoolKey, int]:
    out: dict[PoolKey, int] = {}
    for n in nodes:
        if n.tier == tier:
            out[n.key] = out.get(n.key, 0) + 1
    return out


def _apply(
    nodes: list[_Node],
    targets: Targets,
    t: float,
    cfg: SimConfig,
    avail: np.ndarray,
    pool_index: dict[PoolKey, int],
    *,
    instant: bool,
) -> list[_Node]:
    """Launch and release nodes to meet the targets. ``instant``: the scored start, nodes already up."""
    # Draining nodes are the market's, not the policy's; leaving ones may be taken back.
    keep: list[_Node] = [n for n in nodes if n.deadline != math.inf]
    active = [n for n in nodes if n.deadline == math.inf]
    ready_at = t if instant else t + cfg.boot_s
    plans: tuple[tuple[Tier, dict[PoolKey, int]], ...] = (
        ("spot", targets.spot),
        ("ondemand", targets.ondemand),
    )
    releasing: list[_Node] = []
    for tier, wanted in plans:
        mine = [n for n in active if n.tier == tier]
        for key in {n.key for n in mine} | set(wanted):
            staying = [n for n in mine if n.key == key and not n.leaving]
            leaving = [n for n in mine if n.key == key and n.leaving]
            want = max(0, int(wanted.get(key, 0)))
            while len(staying) < want and leaving:  # take back a node on its way out before launching
                node = leaving.pop()
                node.leaving = False
                staying.append(node)
            if want < len(staying):
                # Booting nodes go first and at once (newest first); then running ones, make before break.
                staying.sort(key=lambda n: n.ready_at, reverse=True)
                excess = staying[: len(staying) - want]
                staying = staying[len(staying) - want :]
                releasing.extend(n for n in excess if n.ready_at <= t)
            elif want > len(staying):
                extra = want - len(staying)
                if tier == "spot":
                    held = len(staying) + len(leaving)
                    room = int(avail[pool_index[key]]) - held if key in pool_index else 0
                    extra = max(0, min(extra, room))
                staying = staying + [_Node(key, tier, ready_at) for _ in range(extra)]
            keep.extend(staying)
            keep.extend(leaving)
    booting = [n.ready_at for n in keep if n.deadline == math.inf and not n.leaving and n.ready_at > t]
    if booting:
        # Until the nodes now booting are up, at the latest; not while later launches keep booting.
        for node in releasing:
            node.leaving = True
            node.leave_at = max(booting)
        keep.extend(releasing)
    return keep
