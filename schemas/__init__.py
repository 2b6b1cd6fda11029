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
from schemas.preemption import DrainOrder, MigrationCounts, MigrationReport, PreemptionNotice
from schemas.router import Requeue, RouterAck, StopRouting, WorkerLost
from schemas.spot import SpotPrice
from schemas.worker import WorkerMetrics
from schemas.workerproto import (
    Block,
    Cancel,
    HotBlocks,
    HotBlocksQuery,
    InflightList,
    InflightQuery,
    InflightRequest,
    ReceiveBlocks,
    Reprefill,
    RequestUpdate,
    Resume,
    StatusQuery,
    Submit,
    TransferKv,
    WorkerAck,
    WorkerStatus,
)

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
    PreemptionNotice,
    DrainOrder,
    MigrationReport,
    StopRouting,
    Requeue,
    WorkerLost,
    RouterAck,
    StatusQuery,
    WorkerStatus,
    InflightQuery,
    InflightList,
    TransferKv,
    Resume,
    Reprefill,
    Cancel,
    HotBlocksQuery,
    HotBlocks,
    ReceiveBlocks,
    Submit,
    WorkerAck,
    RequestUpdate,
)


def tag_of(kind: type[Message]) -> str:
    tag = kind.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


__all__ = [
    "MESSAGE_TYPES",
    "AllocationPlan",
    "Band",
    "Block",
    "Cancel",
    "CostReport",
    "CostReportRequest",
    "DemandSnapshot",
    "DrainOrder",
    "Envelope",
    "ErrorReply",
    "HotBlocks",
    "HotBlocksQuery",
    "InflightList",
    "InflightQuery",
    "InflightRequest",
    "InstanceEvent",
    "InstanceState",
    "Message",
    "MigrationCounts",
    "MigrationReport",
    "PlanReason",
    "PreemptionNotice",
    "ReceiveBlocks",
    "ReplanRequest",
    "Reprefill",
    "RequestUpdate",
    "Requeue",
    "Resume",
    "RouterAck",
    "SpotPrice",
    "StatusQuery",
    "StopRouting",
    "Submit",
    "Target",
    "TransferKv",
    "WorkerAck",
    "WorkerLost",
    "WorkerMetrics",
    "WorkerStatus",
    "envelope",
    "new_msg_id",
    "tag_of",
]
