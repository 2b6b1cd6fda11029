"""Allocation plans (``{ns}.evt.plan.allocation``) and re-plan requests (``{ns}.cmd.plan.tick``)."""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.envelope import Count, Key, Message, NonNegative, Tier

PlanReason = Literal["tick", "demand", "preemption", "manual", "fleet"]
PlanStatus = Literal["optimal", "relaxed", "fallback"]


class Target(msgspec.Struct, frozen=True, kw_only=True):
    instance_type: Key
    pool: Key
    tier: Tier
    count: Count


class AllocationPlan(Message, frozen=True, tag="plan.allocation.v1"):
    """The fleet the agent wants now: every spot and on-demand (type, pool) of the catalog with its target
    count, zeros included, and the reserved nodes as held (the tick never changes them).

    ``reason`` is what triggered the plan (the timer, a preemption, a manual request, a fleet change);
    ``trigger_ids`` are the ids of the triggering messages or timer ticks, each planned for exactly once.
    ``status`` is the optimizer's: ``optimal``; ``relaxed`` (damping limits were lifted to cover demand);
    ``fallback`` (demand cannot be covered within quotas and the market: the plan that covers the most,
    with ``detail`` saying what is short, or the current fleet held). ``binding`` names the constraints
    that limit the plan; ``demand_*`` is what it covers, ``capacity_*`` what it provides (requests/s).
    """

    plan_id: Key
    reason: PlanReason
    trigger_ids: list[str]
    targets: list[Target]
    hourly_cost: NonNegative
    status: PlanStatus
    binding: list[str]
    detail: str
    demand_now_rps: NonNegative
    demand_next_rps: NonNegative
    capacity_now_rps: NonNegative
    capacity_next_rps: NonNegative
    solve_seconds: NonNegative


class ReplanRequest(Message, frozen=True, tag="plan.replan.v1"):
    """Ask for a plan now. Sent twice with the same ``msg_id``, it is planned for once."""

    note: str = ""
