"""Wire contracts: every message that crosses NATS, as msgspec Structs (see ``docs/protocol.md``).

``MESSAGE_TYPES`` lists them all; ``cost-agent schemas`` writes their JSON Schemas to
``schemas/jsonschema/``.
"""

from __future__ import annotations

from schemas.cost import CostReport, CostReportRequest, ErrorReply
from schemas.demand import Band, DemandSnapshot
from schemas.envelope import Envelope, Message, envelope, new_msg_id
from schemas.fleet import InstanceEvent, InstanceState
from schemas.plan import AllocationPlan, PlanReason, ReplanRequest, Target
from schemas.spot import SpotPrice
from schemas.worker import WorkerMetrics

MESSAGE_TYPES: tuple[type[Message], ...] = (
    WorkerMetrics,
    SpotPrice,
    InstanceEvent,
    AllocationPlan,
    ReplanRequest,
    DemandSnapshot,
    CostReportRequest,
    CostReport,
    ErrorReply,
)


def tag_of(kind: type[Message]) -> str:
    tag = kind.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


__all__ = [
    "MESSAGE_TYPES",
    "AllocationPlan",
    "Band",
    "CostReport",
    "CostReportRequest",
    "DemandSnapshot",
    "Envelope",
    "ErrorReply",
    "InstanceEvent",
    "InstanceState",
    "Message",
    "PlanReason",
    "ReplanRequest",
    "SpotPrice",
    "Target",
    "WorkerMetrics",
    "envelope",
    "new_msg_id",
    "tag_of",
]
