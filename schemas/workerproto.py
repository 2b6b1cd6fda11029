"""The worker protocol: request/reply on ``{ns}.req.worker.{worker_id}.{op}``.

Every operation is idempotent by ``request_id`` (a repeat returns the first answer's outcome), has a
deadline given by the caller (``reply_by``: UNIX seconds; a worker that cannot answer by then replies with
an error at once) and is answered with a typed reply or an ``error.reply.v1``, never silence.

| op | request | reply |
|---|---|---|
| ``status`` | StatusQuery | WorkerStatus |
| ``inflight`` | InflightQuery | InflightList |
| ``transfer_kv`` | TransferKv (to the source) | WorkerAck once the target holds the KV |
| ``resume`` | Resume (to the target, after ``transfer_kv``) | WorkerAck |
| ``reprefill`` | Reprefill (to the target) | WorkerAck once accepted |
| ``cancel`` | Cancel (to the source) | WorkerAck with the generated token count |
| ``hot_blocks`` | HotBlocksQuery (to the source) | HotBlocks |
| ``receive_blocks`` | ReceiveBlocks (to a target) | WorkerAck once copied |
| ``submit`` | Submit (from the router) | WorkerAck |

Workers report request progress to the router on ``{ns}.evt.request.update.{worker_id}``
(RequestUpdate).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.envelope import Count, Key, Message, NonNegative, Positive, Timestamp


class StatusQuery(Message, frozen=True, tag="worker.status_query.v1"):
    pass


class WorkerStatus(Message, frozen=True, tag="worker.status.v1"):
    worker_id: Key
    instance_id: Key
    instance_type: Key
    accepting: bool
    max_batch: Count
    active: Count
    queued: Count
    prefill_tokens_per_s: Positive
    decode_tokens_per_s: Positive
    """Node decode throughput at full batch (tokens/s over all sequences)."""
    cached_blocks: list[str] = msgspec.field(default_factory=list)
    """Prefix block hashes held in the KV cache (most recently used first, bounded)."""


class InflightQuery(Message, frozen=True, tag="worker.inflight_query.v1"):
    pass


class InflightRequest(msgspec.Struct, frozen=True, kw_only=True):
    request_id: Key
    prompt_tokens: Count
    generated_tokens: Count
    expected_remaining_tokens: Count
    kv_bytes: NonNegative
    prefix_blocks: list[str] = msgspec.field(default_factory=list)


class InflightList(Message, frozen=True, tag="worker.inflight.v1"):
    worker_id: Key
    instance_id: Key
    decode_tokens_per_s: Positive
    max_batch: Count
    requests: list[InflightRequest]


class TransferKv(Message, frozen=True, tag="worker.transfer_kv.v1"):
    """Send ``request_id``'s KV cache to ``target_worker_id``; the source stops decoding it."""

    request_id: Key
    target_worker_id: Key
    target_instance_id: Key
    """The target's node: a transfer within one node uses the fast link, across nodes the network."""
    reply_by: Timestamp


class Resume(Message, frozen=True, tag="worker.resume.v1"):
    """Continue ``request_id`` from the KV cache received from ``source_worker_id``."""

    request_id: Key
    source_worker_id: Key
    prompt_tokens: Count
    generated_tokens: Count
    expected_remaining_tokens: Count
    prefix_blocks: list[str] = msgspec.field(default_factory=list)


class Reprefill(Message, frozen=True, tag="worker.reprefill.v1"):
    """Start ``request_id`` here from its prompt plus the tokens generated so far."""

    request_id: Key
    source_worker_id: Key
    prompt_tokens: Count
    generated_tokens: Count
    expected_remaining_tokens: Count
    reply_by: Timestamp
    prefix_blocks: list[str] = msgspec.field(default_factory=list)


class Cancel(Message, frozen=True, tag="worker.cancel.v1"):
    request_id: Key


class HotBlocksQuery(Message, frozen=True, tag="worker.hot_blocks_query.v1"):
    limit: Count = 100


class Block(msgspec.Struct, frozen=True, kw_only=True):
    block_hash: Key
    size_bytes: NonNegative
    hits: Count = 0


class HotBlocks(Message, frozen=True, tag="worker.hot_blocks.v1"):
    worker_id: Key
    blocks: list[Block]


class ReceiveBlocks(Message, frozen=True, tag="worker.receive_blocks.v1"):
    source_worker_id: Key
    blocks: list[Block]
    reply_by: Timestamp


class Submit(Message, frozen=True, tag="worker.submit.v1"):
    """A new request (from the router): ``prompt_tokens`` to prefill, about ``expected_output_tokens`` to
    generate, ``already_generated`` tokens to re-prefill as part of the prompt when requeued."""

    request_id: Key
    prompt_tokens: Count
    expected_output_tokens: Count
    already_generated: Count = 0
    prefix_blocks: list[str] = msgspec.field(default_factory=list)


class WorkerAck(Message, frozen=True, tag="worker.ack.v1"):
    op: Key
    request_id: str = ""
    ok: bool = True
    generated_tokens: Count = 0
    bytes_moved: NonNegative = 0.0
    detail: str = ""


RequestState = Literal["started", "done", "moved_out", "lost"]


class RequestUpdate(Message, frozen=True, tag="request.update.v1"):
    """A request's progress on ``worker_id``: ``started`` (admitted, resumed or re-prefilled here),
    ``done`` (its last token was sent), ``moved_out`` (handed to another worker, or cancelled for a
    re-prefill or requeue elsewhere), ``lost`` (the worker stopped with it unfinished: emulators report
    this; a real router sees the stream break)."""

    request_id: Key
    worker_id: Key
    state: RequestState
    generated_tokens: Count = 0
