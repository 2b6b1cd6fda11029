"""Cost reports (``{ns}.evt.cost.report``; request/reply on ``{ns}.req.cost.report``)."""

from __future__ import annotations

from schemas.envelope import Count, Message, NonNegative, Timestamp


class CostReportRequest(Message, frozen=True, tag="cost.report_request.v1"):
    """Ask for the cost report as of now; the reply is a :class:`CostReport` (or an :class:`ErrorReply`)."""


class CostReport(Message, frozen=True, tag="cost.report.v1"):
    """The ledger since the agent started: instance-hours and cost by tier and type at the catalog's
    prices (spot at the latest observed prices), served tokens and requests from worker metrics, and the
    saving against running the same instance-hours on demand. Per-token and per-request costs are null
    until something was served.
    """

    period_start: Timestamp
    period_end: Timestamp
    hours: NonNegative
    total_cost: NonNegative
    avg_hourly_cost: NonNegative
    monthly_cost: NonNegative
    tokens: NonNegative
    requests: NonNegative
    cost_per_mtok: NonNegative | None
    cost_per_request: NonNegative | None
    instance_hours: dict[str, NonNegative]
    instance_hours_by_type: dict[str, dict[str, NonNegative]]
    cost_by_tier: dict[str, NonNegative]
    cost_by_type: dict[str, NonNegative]
    spot_fraction: NonNegative
    ondemand_equivalent_cost: NonNegative
    savings: float
    savings_fraction: float
    intervals: Count


class ErrorReply(Message, frozen=True, tag="error.reply.v1"):
    """The answer to a request that could not be served: what was wrong, naming the field."""

    error: str
