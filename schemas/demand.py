"""Demand snapshots (``{ns}.evt.demand.snapshot``), one per closed profiler bin."""

from __future__ import annotations

import msgspec

from schemas.envelope import Count, Message, NonNegative, Positive, Timestamp


class Band(msgspec.Struct, frozen=True, kw_only=True):
    """P50/P75/P95 of the request rate (requests per second)."""

    p50_rps: NonNegative
    p75_rps: NonNegative
    p95_rps: NonNegative


class DemandSnapshot(Message, frozen=True, tag="demand.snapshot.v1"):
    """The demand measured in one profiler bin, summed over every worker that reported in it.

    ``forecast`` is the profile's band for the bin's time (from history before and including this bin),
    empty (null) while the profile holds nothing.
    """

    bin_start: Timestamp
    bin_seconds: Positive
    rps: NonNegative
    tokens_per_s: NonNegative
    prompt_tokens_mean: NonNegative
    output_tokens_mean: NonNegative
    workers: Count
    reports: Count
    in_flight: Count
    queued: Count
    forecast: Band | None = None
