"""Spot preemption: notices from node sidecars (or the simulated cloud), drain orders, migration reports.

Subjects: ``{ns}.evt.spot.notice.{instance_id}`` (PreemptionNotice), ``{ns}.evt.spot.drain.{instance_id}``
(DrainOrder, spot monitor → migration coordinator), ``{ns}.evt.migration.report.{instance_id}``
(MigrationReport).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.envelope import Count, Key, Message, NonNegative, Timestamp

NoticeKind = Literal["terminate", "stop", "rebalance"]
Provider = Literal["aws", "gcp", "azure", "sim"]
DrainReason = Literal["notice", "lost", "manual"]


class PreemptionNotice(Message, frozen=True, tag="spot.notice.v1"):
    """The cloud will reclaim ``instance_id`` at ``deadline`` (UNIX seconds, absolute).

    ``kind``: ``terminate`` or ``stop`` (the node goes at the deadline), or ``rebalance`` (a
    recommendation: the node is at elevated risk; no deadline is promised, ``deadline`` is then the time the
    sidecar saw it). ``received_at`` is when the sidecar read it from the metadata service. A notice sent
    again (same instance, same kind) is harmless.
    """

    instance_id: Key
    kind: NoticeKind
    deadline: Timestamp
    provider: Provider
    received_at: Timestamp


class DrainOrder(Message, frozen=True, tag="spot.drain.v1"):
    """Drain every worker of ``instance_id`` before ``deadline``.

    ``reason``: ``notice`` (a preemption notice; ``correlation_id`` is its ``msg_id``), ``lost`` (the
    node's workers stopped reporting: nothing can be moved, the router requeues their requests from the
    prompt) or ``manual``.
    """

    instance_id: Key
    worker_ids: list[Key]
    deadline: Timestamp
    reason: DrainReason


class MigrationCounts(msgspec.Struct, frozen=True, kw_only=True):
    finished_in_place: Count = 0
    kv_moved: Count = 0
    reprefilled: Count = 0
    requeued: Count = 0
    failed: Count = 0
    """Actions that failed and were then handled another way (each such request also counts once above)."""


class MigrationReport(Message, frozen=True, tag="migration.report.v1"):
    """What became of every request that was in flight on a drained instance.

    ``requests`` = finished_in_place + kv_moved + reprefilled + requeued + lost; ``lost`` is what the
    coordinator could not account for (it should be 0: requests it cannot place are requeued).
    ``completed_at`` is when the last action ended; ``deadline`` the notice's deadline.
    """

    instance_id: Key
    policy: str
    reason: DrainReason
    requests: Count
    counts: MigrationCounts
    lost: Count
    bytes_moved: NonNegative
    tokens_recomputed: NonNegative
    hot_blocks_moved: Count
    notice_at: Timestamp
    first_commands_at: Timestamp
    completed_at: Timestamp
    deadline: Timestamp
