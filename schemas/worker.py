"""What a GPU worker publishes about itself (``{ns}.evt.worker.metrics.{worker_id}``)."""

from __future__ import annotations

from schemas.envelope import Count, Key, Message, Positive, Tier


class WorkerMetrics(Message, frozen=True, tag="worker.metrics.v1"):
    """One worker's counters over the ``interval_s`` seconds that ended at ``sent_at``.

    Counters are per interval (not cumulative): ``requests_completed`` requests finished in it, with
    ``prompt_tokens`` and ``output_tokens`` tokens in total. ``in_flight`` and ``queued`` are gauges at
    the end of the interval; ``kv_blocks_*`` describe the KV cache then.
    """

    worker_id: Key
    instance_id: Key
    instance_type: Key
    pool: Key
    tier: Tier
    interval_s: Positive
    requests_completed: Count
    prompt_tokens: Count
    output_tokens: Count
    in_flight: Count = 0
    queued: Count = 0
    kv_blocks_used: Count = 0
    kv_blocks_total: Count = 0
