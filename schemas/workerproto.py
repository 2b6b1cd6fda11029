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

from typing import Annotated, Literal

import msgspec

from schemas.envelope import (
    MAX_LIST,
    Bytes,
    Key,
    Message,
    PositiveTokensPerS,
    Requests,
    Text,
    Timestamp,
    Tokens,
    doc,
)

BlockHash = Annotated[str, msgspec.Meta(max_length=128)]
BlockHashes = Annotated[list[BlockHash], msgspec.Meta(max_length=MAX_LIST)]

_PREFIX_BLOCKS = "Its prompt's prefix blocks (block hashes), in order."


class StatusQuery(Message, frozen=True, tag="worker.status_query.v1"):
    """Op ``status``: can this worker take requests, and how fast is it."""


class WorkerStatus(Message, frozen=True, tag="worker.status.v1"):
    """A worker's answer to ``status``."""

    worker_id: Annotated[Key, doc("This worker.")]
    instance_id: Annotated[Key, doc("Its node.")]
    instance_type: Annotated[Key, doc("The node's type (a catalog type).")]
    accepting: Annotated[bool, doc("False: do not send it requests (it is draining, or shutting down).")]
    max_batch: Annotated[Requests, doc("Sequences it decodes at once at most.")]
    active: Annotated[Requests, doc("Sequences running now.")]
    queued: Annotated[
        Requests, doc("Requests waiting for a slot. Free slots = `max_batch − active − queued`.")
    ]
    prefill_tokens_per_s: Annotated[PositiveTokensPerS, doc("Prefill throughput of the worker, tokens/s.")]
    decode_tokens_per_s: Annotated[
        PositiveTokensPerS,
        doc(
            "Decode throughput at full batch, tokens/s over all sequences (one sequence gets `/ max_batch`)."
        ),
    ]
    cached_blocks: Annotated[
        BlockHashes,
        doc(
            "Prefix blocks (block hashes) held in its KV cache, most recently used first; bounded, so that "
            "the reply stays well under the NATS payload limit (1 MB by default)."
        ),
    ] = msgspec.field(default_factory=list)


class InflightQuery(Message, frozen=True, tag="worker.inflight_query.v1"):
    """Op ``inflight``: every request on the worker now, running or queued."""


class InflightRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One request on a worker, in an InflightList."""

    request_id: Annotated[Key, doc("The router's request id.")]
    prompt_tokens: Annotated[Tokens, doc("Prompt length, tokens.")]
    generated_tokens: Annotated[Tokens, doc("Output tokens generated so far.")]
    expected_remaining_tokens: Annotated[
        Tokens, doc("Output tokens still expected (from `max_tokens`, or the engine's estimate).")
    ]
    kv_bytes: Annotated[Bytes, doc("Size of its KV cache now, bytes (0 while queued).")]
    prefix_blocks: Annotated[BlockHashes, doc(_PREFIX_BLOCKS)] = msgspec.field(default_factory=list)


class InflightList(Message, frozen=True, tag="worker.inflight.v1"):
    """A worker's answer to ``inflight``."""

    worker_id: Annotated[Key, doc("This worker.")]
    instance_id: Annotated[Key, doc("Its node.")]
    decode_tokens_per_s: Annotated[PositiveTokensPerS, doc("As in WorkerStatus, tokens/s.")]
    max_batch: Annotated[Requests, doc("As in WorkerStatus.")]
    requests: Annotated[
        Annotated[list[InflightRequest], msgspec.Meta(max_length=MAX_LIST)],
        doc("Every request here (InflightRequest; an empty list when idle)."),
    ]


class TransferKv(Message, frozen=True, tag="worker.transfer_kv.v1"):
    """Send ``request_id``'s KV cache to ``target_worker_id``; the source stops decoding it."""

    request_id: Annotated[Key, doc("The request.")]
    target_worker_id: Annotated[Key, doc("Where to send the KV cache.")]
    target_instance_id: Annotated[
        Key, doc("The target's node: within one node the fast link, across nodes the network.")
    ]
    reply_by: Annotated[
        Timestamp, doc("UNIX s: the target must hold the cache by then; refuse at once if it cannot.")
    ]


class Resume(Message, frozen=True, tag="worker.resume.v1"):
    """Continue ``request_id`` from the KV cache received from ``source_worker_id``."""

    request_id: Annotated[Key, doc("The request.")]
    source_worker_id: Annotated[Key, doc("Where the KV cache came from.")]
    prompt_tokens: Annotated[Tokens, doc("Prompt length, tokens.")]
    generated_tokens: Annotated[Tokens, doc("Output tokens generated so far (the transfer ack's).")]
    expected_remaining_tokens: Annotated[Tokens, doc("Output tokens still expected.")]
    prefix_blocks: Annotated[
        BlockHashes, doc("Its prompt's prefix blocks (block hashes; they join the target's prefix cache).")
    ] = msgspec.field(default_factory=list)


class Reprefill(Message, frozen=True, tag="worker.reprefill.v1"):
    """Start ``request_id`` here from its prompt plus the tokens generated so far."""

    request_id: Annotated[Key, doc("The request.")]
    source_worker_id: Annotated[Key, doc("The worker it was taken from.")]
    prompt_tokens: Annotated[Tokens, doc("Prompt length, tokens.")]
    generated_tokens: Annotated[
        Tokens, doc("Output tokens already generated (re-prefilled here; the router has the token ids).")
    ]
    expected_remaining_tokens: Annotated[Tokens, doc("Output tokens still expected.")]
    reply_by: Annotated[Timestamp, doc("Answer by then, UNIX s.")]
    prefix_blocks: Annotated[
        BlockHashes, doc("Its prompt's prefix blocks (block hashes: what may be cached here).")
    ] = msgspec.field(default_factory=list)


class Cancel(Message, frozen=True, tag="worker.cancel.v1"):
    """Op ``cancel``: stop ``request_id`` here and free its slot."""

    request_id: Annotated[Key, doc("The request.")]


class HotBlocksQuery(Message, frozen=True, tag="worker.hot_blocks_query.v1"):
    """Op ``hot_blocks``: the worker's most used prefix blocks, most hits first."""

    limit: Annotated[
        Annotated[int, msgspec.Meta(ge=0, le=MAX_LIST)],
        doc("Blocks wanted at most (`[migration] hot_blocks`)."),
    ] = 100


class Block(msgspec.Struct, frozen=True, kw_only=True):
    """One prefix block of a worker's KV cache."""

    block_hash: Annotated[Key, doc("The block's hash.")]
    size_bytes: Annotated[Bytes, doc("Its KV cache size in bytes (`block_tokens` × KV bytes per token).")]
    hits: Annotated[Requests, doc("Requests that found it in their cached prefix.")] = 0


class HotBlocks(Message, frozen=True, tag="worker.hot_blocks.v1"):
    """A worker's answer to ``hot_blocks``."""

    worker_id: Annotated[Key, doc("This worker.")]
    blocks: Annotated[
        Annotated[list[Block], msgspec.Meta(max_length=MAX_LIST)],
        doc("At most `limit` blocks (Block), most hits first."),
    ]


class ReceiveBlocks(Message, frozen=True, tag="worker.receive_blocks.v1"):
    """Op ``receive_blocks``: copy these prefix blocks from ``source_worker_id`` into the prefix cache."""

    source_worker_id: Annotated[Key, doc("Where to copy them from.")]
    blocks: Annotated[
        Annotated[list[Block], msgspec.Meta(max_length=MAX_LIST)],
        doc("The blocks (Block, from the source's `hot_blocks`)."),
    ]
    reply_by: Annotated[Timestamp, doc("Copied by then (the source's deadline), UNIX s, or refuse at once.")]


class Submit(Message, frozen=True, tag="worker.submit.v1"):
    """A new request (from the router): ``prompt_tokens`` to prefill, about ``expected_output_tokens`` to
    generate, ``already_generated`` tokens to re-prefill as part of the prompt when requeued."""

    request_id: Annotated[Key, doc("The router's request id.")]
    prompt_tokens: Annotated[Tokens, doc("Prompt length, tokens.")]
    expected_output_tokens: Annotated[Tokens, doc("Output tokens expected in all.")]
    already_generated: Annotated[
        Tokens,
        doc(
            "Output tokens generated before a requeue: prefilled as part of the prompt, not generated again."
        ),
    ] = 0
    prefix_blocks: Annotated[BlockHashes, doc(_PREFIX_BLOCKS)] = msgspec.field(default_factory=list)


class WorkerAck(Message, frozen=True, tag="worker.ack.v1"):
    """A worker's reply to ``transfer_kv``, ``resume``, ``reprefill``, ``cancel``, ``receive_blocks`` and
    ``submit``; ``correlation_id`` is the request's ``msg_id``."""

    op: Annotated[Key, doc("The op answered.")]
    request_id: Annotated[
        Annotated[str, msgspec.Meta(max_length=128)], doc("The request (empty for `receive_blocks`).")
    ] = ""
    ok: Annotated[
        bool, doc("Done (or already done: a repeat); false: understood but not carried out, see `detail`.")
    ] = True
    generated_tokens: Annotated[
        Tokens, doc("`transfer_kv`, `cancel`: output tokens the request had generated here.")
    ] = 0
    bytes_moved: Annotated[Bytes, doc("`transfer_kv`, `receive_blocks`: bytes sent.")] = 0.0
    detail: Annotated[Text, doc("Free text for the logs.")] = ""


RequestState = Literal["started", "done", "moved_out", "lost"]


class RequestUpdate(Message, frozen=True, tag="request.update.v1"):
    """A request's progress on ``worker_id``, for the router."""

    request_id: Annotated[Key, doc("The request.")]
    worker_id: Annotated[Key, doc("This worker; also the subject key.")]
    state: Annotated[
        RequestState,
        doc(
            "`started`: admitted, resumed or re-prefilled here. `done`: its last token was sent. "
            "`moved_out`: handed to another worker (`transfer_kv` ended), or cancelled for a re-prefill or "
            "requeue elsewhere. `lost`: the worker stopped with it unfinished (emulators report this; a real "
            "router sees the stream break)."
        ),
    ]
    generated_tokens: Annotated[Tokens, doc("Output tokens generated so far.")] = 0
