"""Demand snapshots (``{ns}.evt.demand.snapshot``), one per closed profiler bin."""

from __future__ import annotations

from typing import Annotated

import msgspec

from schemas.envelope import Count, Interval, Message, Rps, Timestamp, TokenMean, TokensPerS, doc


class Band(msgspec.Struct, frozen=True, kw_only=True):
    """P50/P75/P95 of the request rate (requests per second)."""

    p50_rps: Annotated[Rps, doc("Median request rate, requests/s.")]
    p75_rps: Annotated[Rps, doc("75th percentile, requests/s.")]
    p95_rps: Annotated[Rps, doc("95th percentile, requests/s.")]


class DemandSnapshot(Message, frozen=True, tag="demand.snapshot.v1"):
    """The demand measured in one profiler bin, summed over every worker that reported in it.

    ``forecast`` is the profile's band for the bin's time (from history before and including this bin),
    empty (null) while the profile holds nothing.
    """

    bin_start: Annotated[Timestamp, doc("Start of the bin, UNIX s (a multiple of `bin_seconds`).")]
    bin_seconds: Annotated[Interval, doc("Bin length in seconds (`[profiler] bin_minutes` × 60).")]
    rps: Annotated[Rps, doc("Requests completed in the bin / `bin_seconds`, requests/s.")]
    tokens_per_s: Annotated[TokensPerS, doc("Prompt + output tokens / `bin_seconds`, tokens/s.")]
    prompt_tokens_mean: Annotated[TokenMean, doc("Prompt tokens per request (0 without requests).")]
    output_tokens_mean: Annotated[TokenMean, doc("Output tokens per request (0 without requests).")]
    workers: Annotated[Count, doc("Distinct workers that reported in the bin.")]
    reports: Annotated[Count, doc("Reports counted in the bin (late ones included).")]
    in_flight: Annotated[
        Count, doc("Sum over workers of each one's latest `in_flight` in the bin (requests).")
    ]
    queued: Annotated[Count, doc("The same for `queued` (requests).")]
    forecast: Annotated[
        Band | None,
        doc(
            "The profile's band for the bin's time, from history up to and including this bin; null while "
            "the profile is empty."
        ),
    ] = None
