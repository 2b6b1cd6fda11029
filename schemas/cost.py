"""Cost reports (``{ns}.evt.cost.report``; request/reply on ``{ns}.req.cost.report``)."""

from __future__ import annotations

from typing import Annotated, get_args

import msgspec

from schemas.envelope import (
    MAX_MONEY,
    Count,
    Fraction,
    Hours,
    Key,
    Message,
    Money,
    SignedMoney,
    Text,
    Tier,
    Timestamp,
    Total,
    doc,
)

_TIERS: tuple[str, ...] = get_args(Tier)


class CostReportRequest(Message, frozen=True, tag="cost.report_request.v1"):
    """Ask for the cost report as of now; the reply is a :class:`CostReport` (or an :class:`ErrorReply`)."""


class CostReport(Message, frozen=True, tag="cost.report.v1"):
    """The ledger since the agent started: instance-hours and cost by tier and type at the catalog's
    prices (spot at the latest observed prices), served tokens and requests from worker metrics, and the
    saving against running the same instance-hours on demand. Per-token and per-request costs are null
    until something was served.

    It also compares the fleet paid for now with the latest allocation plan, both priced at the same prices
    now (spot at the fresh quote for its pool, else the catalog's): ``plan_gap_hourly`` is what the running
    fleet costs per hour above the plan. In shadow mode, where the agent plans and changes nothing, this is
    what the agent would save (or cost) over the autoscaler that runs the fleet. The plan fields are null
    until a plan has been seen.
    """

    period_start: Annotated[Timestamp, doc("Start of the ledger (the reporter's start), UNIX s.")]
    period_end: Annotated[Timestamp, doc("End of the ledger (now), UNIX s.")]
    hours: Annotated[Hours, doc("Hours covered.")]
    total_cost: Annotated[Money, doc("What the fleet cost, $.")]
    avg_hourly_cost: Annotated[Money, doc("`total_cost / hours`, $/h.")]
    monthly_cost: Annotated[Money, doc("`avg_hourly_cost` × 730 h, $.")]
    tokens: Annotated[Total, doc("Prompt + output tokens served (from worker metrics).")]
    requests: Annotated[Total, doc("Requests served.")]
    cost_per_mtok: Annotated[Money | None, doc("$ per 1M tokens; null until a token was served.")]
    cost_per_request: Annotated[Money | None, doc("$ per request; null until a request was served.")]
    instance_hours: Annotated[
        dict[Key, Hours],
        doc("Node-hours by tier: always the three keys `reserved`, `spot`, `ondemand`."),
    ]
    instance_hours_by_type: Annotated[
        dict[Key, dict[Key, Hours]], doc("Node-hours by type, then tier, for the types that were held.")
    ]
    cost_by_tier: Annotated[dict[Key, Money], doc("$ by tier: always the three keys.")]
    cost_by_type: Annotated[dict[Key, Money], doc("$ by type, for the types that were held.")]
    spot_fraction: Annotated[Fraction, doc("Spot node-hours / all node-hours (0 when none).")]
    ondemand_equivalent_cost: Annotated[
        Money, doc("The same node-hours, type by type, at on-demand prices, $.")
    ]
    savings: Annotated[
        SignedMoney,
        doc("`ondemand_equivalent_cost − total_cost`, $ (negative if spot was dearer than on-demand)."),
    ]
    savings_fraction: Annotated[
        Annotated[float, msgspec.Meta(ge=-MAX_MONEY, le=1)],
        doc("`savings / ondemand_equivalent_cost` (0 when that is 0)."),
    ]
    intervals: Annotated[Count, doc("Accrual steps in the ledger (diagnostic).")]
    fleet_hourly_cost: Annotated[
        Money,
        doc(
            "$/h of the nodes paid for now (launched, ready or draining), each at its type's price for its "
            "tier, spot at the fresh quote for its pool (else the catalog's)."
        ),
    ] = 0.0
    fleet_nodes: Annotated[
        dict[Key, Count],
        doc("Nodes paid for now, by tier: always the three keys `reserved`, `spot`, `ondemand`."),
    ] = msgspec.field(default_factory=lambda: dict.fromkeys(_TIERS, 0))
    plan_id: Annotated[
        Key | None, doc("`plan_id` of the newest allocation plan seen (by `sent_at`); null before any plan.")
    ] = None
    plan_hourly_cost: Annotated[
        Money | None,
        doc(
            "$/h of that plan's targets (reserved included, as the plan lists them) at the same prices as "
            "`fleet_hourly_cost`; null before any plan. It differs from the plan's own `hourly_cost` only "
            "where a spot quote changed (or went stale) since the plan was made."
        ),
    ] = None
    plan_nodes: Annotated[
        dict[Key, Count],
        doc("That plan's target nodes, by tier: always the three keys (zeros before any plan)."),
    ] = msgspec.field(default_factory=lambda: dict.fromkeys(_TIERS, 0))
    plan_gap_hourly: Annotated[
        SignedMoney | None,
        doc(
            "`fleet_hourly_cost − plan_hourly_cost`, $/h: positive when the running fleet costs more than "
            "the plan (nodes draining, launches not made yet, or, in shadow mode, another autoscaler's "
            "choice); null before any plan."
        ),
    ] = None


class ErrorReply(Message, frozen=True, tag="error.reply.v1"):
    """The answer to a request that could not be served: what was wrong, naming the field."""

    error: Annotated[
        Text,
        doc('`"<expected type>: <field path>: <reason>"`, or `"<expected type>: not JSON: <detail>"`.'),
    ]
