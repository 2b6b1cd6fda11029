"""What a GPU worker publishes about itself (``{ns}.evt.worker.metrics.{worker_id}``)."""

from __future__ import annotations

from typing import Annotated

from schemas.envelope import Interval, Key, KvBlocks, Message, Requests, Tier, Tokens, doc


class WorkerMetrics(Message, frozen=True, tag="worker.metrics.v1"):
    """One worker's counters over the ``interval_s`` seconds that ended at ``sent_at``.

    Counters are per interval (not cumulative): ``requests_completed`` requests finished in it, with
    ``prompt_tokens`` and ``output_tokens`` tokens in total. ``in_flight`` and ``queued`` are gauges at
    the end of the interval; ``kv_blocks_*`` describe the KV cache then.
    """

    worker_id: Annotated[Key, doc("The worker; also the subject key. Stable across reports.")]
    instance_id: Annotated[Key, doc("The node it runs on (the actuator's `instance_id`).")]
    instance_type: Annotated[Key, doc("The node's type (a catalog type).")]
    pool: Annotated[Key, doc("The node's pool (zone).")]
    tier: Annotated[Tier, doc("The node's tier.")]
    interval_s: Annotated[Interval, doc("Length in seconds of the interval that ended at `sent_at`.")]
    requests_completed: Annotated[Requests, doc("Requests that finished in the interval.")]
    prompt_tokens: Annotated[Tokens, doc("Prompt tokens of those requests, in total.")]
    output_tokens: Annotated[Tokens, doc("Output tokens of those requests, in total.")]
    in_flight: Annotated[Requests, doc("Gauge at `sent_at`: requests being processed.")] = 0
    queued: Annotated[Requests, doc("Gauge at `sent_at`: requests waiting.")] = 0
    kv_blocks_used: Annotated[KvBlocks, doc("Gauge at `sent_at`: KV-cache blocks in use.")] = 0
    kv_blocks_total: Annotated[KvBlocks, doc("KV-cache blocks the worker has.")] = 0
