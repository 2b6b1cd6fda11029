"""Spot preemption: notices from node sidecars (or the simulated cloud), drain orders, migration reports.

Subjects: ``{ns}.evt.spot.notice.{instance_id}`` (PreemptionNotice), ``{ns}.evt.spot.drain.{instance_id}``
(DrainOrder, spot monitor → migration coordinator), ``{ns}.evt.migration.report.{instance_id}``
(MigrationReport).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.envelope import MAX_LIST, Bytes, Key, KvBlocks, Message, Requests, Text, Timestamp, Total, doc

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

    instance_id: Annotated[
        Key,
        doc(
            "The node, as the workers report it in `worker.metrics.v1` and the actuator in "
            "`fleet.instance.v1`; also the subject key."
        ),
    ]
    kind: Annotated[
        NoticeKind,
        doc(
            "`terminate`, `stop`: the node goes at `deadline`. `rebalance`: a recommendation (the node is at "
            "elevated risk), no deadline promised."
        ),
    ]
    deadline: Annotated[
        Timestamp,
        doc(
            "When the node goes (`terminate`, `stop`), UNIX s, **absolute**; for `rebalance`, the time the "
            "sidecar saw it."
        ),
    ]
    provider: Annotated[Provider, doc("Where the notice came from (`sim`: the simulated cloud).")]
    received_at: Annotated[Timestamp, doc("When the sidecar read it from the metadata service, UNIX s.")]


class DrainOrder(Message, frozen=True, tag="spot.drain.v1"):
    """Drain every worker of ``instance_id`` before ``deadline``.

    ``reason``: ``notice`` (a preemption notice; ``correlation_id`` is its ``msg_id``), ``lost`` (the
    node's workers stopped reporting: nothing can be moved, the router requeues their requests from the
    prompt) or ``manual``.
    """

    instance_id: Annotated[Key, doc("The node; also the subject key.")]
    worker_ids: Annotated[
        Annotated[list[Key], msgspec.Meta(max_length=MAX_LIST)],
        doc("The workers to drain (those known on the node; for `lost`, the silent ones). May be empty."),
    ]
    deadline: Annotated[
        Timestamp, doc("The notice's deadline, UNIX s, absolute; for `lost`, the time of the order.")
    ]
    reason: Annotated[
        DrainReason,
        doc(
            "`notice`: a preemption notice (`correlation_id` = its `msg_id`). `lost`: the workers stopped "
            "reporting (`correlation_id` = `lost-<instance_id>-<time>`). `manual`: an operator's."
        ),
    ]


class MigrationCounts(msgspec.Struct, frozen=True, kw_only=True):
    """What became of a drained node's requests, one count per request (``failed`` aside)."""

    finished_in_place: Annotated[Requests, doc("Requests left to finish in place on the node.")] = 0
    kv_moved: Annotated[Requests, doc("Requests moved by `transfer_kv` then `resume`.")] = 0
    reprefilled: Annotated[Requests, doc("Requests cancelled and re-prefilled on another worker.")] = 0
    requeued: Annotated[
        Requests, doc("Requests handed back to the router to serve again (`requeue`, or `worker_lost`).")
    ] = 0
    failed: Annotated[
        Requests,
        doc(
            "Attempts that failed and were then handled another way (a failed transfer, a refused "
            "re-prefill; such a request is also counted once above)."
        ),
    ] = 0
    frontend_migrated: Annotated[
        Requests,
        doc(
            "Requests a Dynamo frontend re-sent to a surviving worker after the node died "
            "(its `dynamo_frontend_model_migration_total`; policy `dynamo-frontend`)."
        ),
    ] = 0


class MigrationReport(Message, frozen=True, tag="migration.report.v1"):
    """What became of every request that was in flight on a drained instance.

    ``requests`` = finished_in_place + kv_moved + reprefilled + requeued + frontend_migrated + lost; ``lost``
    is what the coordinator could not account for (it should be 0: requests it cannot place are requeued).
    ``completed_at`` is when the last action ended; ``deadline`` the notice's deadline.
    """

    instance_id: Annotated[Key, doc("The drained node; also the subject key.")]
    policy: Annotated[Text, doc("The `[migration] policy` that planned it.")]
    reason: Annotated[DrainReason, doc("The drain order's reason.")]
    requests: Annotated[
        Requests,
        doc("Requests that were in flight on the node's workers (for `lost`: that the router requeued)."),
    ]
    counts: Annotated[MigrationCounts, doc("What became of them (MigrationCounts).")]
    lost: Annotated[
        Requests,
        doc(
            "Requests the coordinator could not place: three `requeue` attempts failed (an error reply or no "
            "answer). Should be 0."
        ),
    ]
    bytes_moved: Annotated[
        Bytes, doc("KV cache bytes transferred (sum of the `transfer_kv` acks' `bytes_moved`).")
    ]
    tokens_recomputed: Annotated[
        Total, doc("Prompt + generated tokens of the re-prefilled requests (requeues not counted).")
    ]
    hot_blocks_moved: Annotated[KvBlocks, doc("Prefix blocks copied to a survivor.")]
    notice_at: Annotated[Timestamp, doc("When the drain was ordered (the drain order's `sent_at`), UNIX s.")]
    first_commands_at: Annotated[
        Timestamp,
        doc(
            "When the planned commands started (the latest over the node's workers), UNIX s: "
            "`first_commands_at − notice_at` is the time spent reading state and planning."
        ),
    ]
    completed_at: Annotated[Timestamp, doc("When the last action ended, UNIX s.")]
    deadline: Annotated[Timestamp, doc("The drain order's deadline, UNIX s.")]
    interrupted_by: Annotated[
        Literal["restart", "shutdown"] | None,
        doc(
            "Absent (null) for a drain the coordinator saw through. `shutdown`: the agent stopped (SIGTERM) "
            "before the drain was done, the counts are those so far (a restarted agent finishes it, with "
            "a report of its own, if its deadline has not passed). `restart`: the agent was killed during "
            "the drain and came back after its deadline, the counts are those saved before."
        ),
    ] = None
