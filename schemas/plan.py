"""Allocation plans (``{ns}.evt.plan.allocation``) and re-plan requests (``{ns}.cmd.plan.tick``)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.envelope import MAX_LIST, Key, Message, Money, Nodes, NonEmpty, Rps, Seconds, Text, Tier, doc

PlanReason = Literal["tick", "demand", "preemption", "manual", "fleet"]
PlanStatus = Literal["optimal", "relaxed", "fallback"]


class Target(msgspec.Struct, frozen=True, kw_only=True):
    instance_type: Annotated[Key, doc("Catalog type.")]
    pool: Annotated[Key, doc("Pool (zone).")]
    tier: Annotated[Tier, doc("Tier.")]
    count: Annotated[Nodes, doc("Nodes wanted in this (type, pool, tier).")]


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

    plan_id: Annotated[Key, doc("Unique id of this plan.")]
    reason: Annotated[
        PlanReason,
        doc(
            "What triggered it: the timer, demand observed above what the latest plan covered (checked every "
            '`[optimizer] surge_check_seconds` between ticks; `"auto"`: every minute while the demand is a '
            "frontend's arrivals, never with worker reports alone), a `plan.replan.v1`, a fleet change below "
            "plan, a preemption (a terminate/stop `spot.notice.v1`, a rebalance recommendation with "
            "`[spot_monitor] prelaunch_on_rebalance`, or a node whose workers all fell silent). When several "
            "triggers are answered together, the most urgent: preemption > manual > fleet > demand > tick."
        ),
    ]
    trigger_ids: Annotated[
        Annotated[list[NonEmpty], msgspec.Meta(max_length=MAX_LIST)],
        doc(
            "Every trigger this plan answers: `plan.replan.v1`, `fleet.instance.v1` and `spot.notice.v1` "
            "`msg_id`s, timer ticks (`tick-<hex>`), lost nodes (`lost-<instance_id>-<time>`). Each trigger "
            "is planned for once. `correlation_id` is the first of them."
        ),
    ]
    targets: Annotated[
        Annotated[list[Target], msgspec.Meta(max_length=MAX_LIST)], doc("Target node counts (Target).")
    ]
    hourly_cost: Annotated[
        Money,
        doc(
            "Cost of the targets in $/h: reserved at the catalog's reserved price, spot at the fresh quote "
            "(else the catalog's), on-demand at the catalog's price."
        ),
    ]
    status: Annotated[
        PlanStatus,
        doc(
            "`optimal`: least-cost plan within every limit. `relaxed`: the per-tick change limits were "
            "lifted, because demand could not be covered within them or they conflicted with quotas, spot "
            "availability or pool shares. `fallback`: demand cannot be covered within quotas and the spot "
            "market; the plan covers the most it can (`detail` says what is short), or holds the current "
            "fleet if no plan could be solved."
        ),
    ]
    binding: Annotated[
        Annotated[list[Text], msgspec.Meta(max_length=MAX_LIST)],
        doc(
            "Constraints that limit the plan: `cover_now`, `cover_next_hour`, `non_spot_min`, "
            "`non_spot_fraction`, `zone_loss:<zone>`, `pool_share:<type>/<pool>`, `quota:<type>`, "
            "`step_up:<tier>`, `step_down:<tier>`, `spot_available:<type>/<pool>`. For dashboards; do not "
            "act on them."
        ),
    ]
    detail: Annotated[
        Text, doc("Human-readable explanation, including where the demand figure came from. Do not parse.")
    ]
    demand_now_rps: Annotated[
        Rps,
        doc(
            "Demand covered now, in requests/s: the larger of the profile's P75 for now and the observed "
            "current demand."
        ),
    ]
    demand_next_rps: Annotated[
        Rps,
        doc(
            "Demand covered within the hour, in requests/s: the profile's highest next-hour P95, never below "
            "`demand_now_rps`."
        ),
    ]
    capacity_now_rps: Annotated[
        Rps,
        doc(
            "Capacity of the targets for the current token mix, in requests/s (spot counted at `1 − "
            "reclaim_per_hour`)."
        ),
    ]
    capacity_next_rps: Annotated[Rps, doc("The same for the next-hour mix, in requests/s.")]
    solve_seconds: Annotated[Seconds, doc("Optimizer wall time, in seconds.")]


class ReplanRequest(Message, frozen=True, tag="plan.replan.v1"):
    """Ask for a plan now. Sent twice with the same ``msg_id``, it is planned for once."""

    note: Annotated[Text, doc("Free text for the logs (why).")] = ""
