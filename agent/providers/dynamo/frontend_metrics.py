"""A Dynamo frontend's Prometheus text → a snapshot; two snapshots → the demand over the interval.

Pure: no I/O, no asyncio. The caller scrapes ``{frontend}/metrics`` (with
:mod:`agent.providers.httpclient`), calls :func:`parse_frontend_metrics` on the text with the time it read
it, keeps the last good snapshot per frontend, and calls :func:`demand_between` with the previous and the
current snapshots of every frontend.

What is read (Dynamo 1.6.1, measured against the real frontend and mocker on this machine):

- ``dynamo_frontend_requests_started_total{endpoint,model,request_type}``: counted when a request
  arrives. This is the arrival counter. ``dynamo_frontend_requests_total{...,status,error_type}`` is
  counted when a request ends (by ``status``: ``success`` or ``error``); it gives completions and errors.
  A frontend without the started counter falls back to ``requests_total`` (completions lag arrivals by
  one request's duration).
- histograms ``dynamo_frontend_input_sequence_tokens`` (observed for streaming requests only: 12 of 24
  requests in a half-unary capture), ``dynamo_frontend_output_sequence_tokens`` (every request),
  ``dynamo_frontend_time_to_first_token_seconds`` and ``dynamo_frontend_inter_token_latency_seconds``
  (streaming only). Means are the histogram's own ``sum / count`` deltas, never divided by the request
  counter, because the two count different requests.
- gauges ``dynamo_frontend_inflight_requests``, ``dynamo_frontend_queued_requests``,
  ``dynamo_frontend_model_ready``; counter ``dynamo_frontend_model_migration_total``, which has no line at
  all (not even ``# TYPE``) until the first migration: absent reads as 0.
- A request for a model the frontend does not serve is labelled ``model="unknown_model"`` (answered 404):
  it needs no GPU, so it is not demand, unless asked for by name.

Counter resets: a frontend that restarted has counters lower than before. Any of its counters (or
histogram buckets) going down marks the whole frontend as restarted (every counter restarts together), and
its current values are then the increase since the restart, the Prometheus rule for ``increase()``.
Percentiles are interpolated within histogram buckets as Prometheus's ``histogram_quantile`` does.

Every number is checked against a physical range when parsed; a garbled text, a NaN, a negative count or an
absurd value raises :class:`FrontendMetricsError` naming the series, so it never reaches the demand.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Annotated

import msgspec
from prometheus_client.parser import text_string_to_metric_families

UNKNOWN_MODEL = "unknown_model"  # the frontend's model label for a request naming a model it does not serve

REQUESTS_STARTED = "dynamo_frontend_requests_started_total"
REQUESTS_TOTAL = "dynamo_frontend_requests_total"
INFLIGHT = "dynamo_frontend_inflight_requests"
QUEUED = "dynamo_frontend_queued_requests"
MODEL_READY = "dynamo_frontend_model_ready"
MIGRATIONS = "dynamo_frontend_model_migration_total"
INPUT_TOKENS = "dynamo_frontend_input_sequence_tokens"
OUTPUT_TOKENS = "dynamo_frontend_output_sequence_tokens"
TTFT = "dynamo_frontend_time_to_first_token_seconds"
ITL = "dynamo_frontend_inter_token_latency_seconds"

# Physical ranges. A frontend lives for months at most: 1e12 requests is ~30,000 a second for a year.
MAX_REQUESTS = 1e12
MAX_TOKENS_PER_REQUEST = 1e8  # far beyond any context window
MAX_TOKEN_SUM = MAX_REQUESTS * MAX_TOKENS_PER_REQUEST
MAX_LATENCY_SECONDS = 86_400.0  # a bucket bound or a mean past a day is not a latency
MAX_GAUGE_REQUESTS = 1e7  # requests in flight or queued at one frontend
MAX_ARRIVALS_PER_SECOND = 1e6  # one frontend; more is a broken counter, not traffic
MAX_INTERVAL_SECONDS = 86_400.0
MIN_INTERVAL_SECONDS = 1e-3
MAX_FRONTENDS = 1000
MAX_MODELS = 1000  # served by one frontend

_HISTOGRAMS = {
    INPUT_TOKENS: (MAX_TOKENS_PER_REQUEST, MAX_TOKEN_SUM),
    OUTPUT_TOKENS: (MAX_TOKENS_PER_REQUEST, MAX_TOKEN_SUM),
    TTFT: (MAX_LATENCY_SECONDS, MAX_REQUESTS * MAX_LATENCY_SECONDS),
    ITL: (MAX_LATENCY_SECONDS, MAX_REQUESTS * MAX_TOKENS_PER_REQUEST * MAX_LATENCY_SECONDS),
}
_GAUGES = {INFLIGHT: MAX_GAUGE_REQUESTS, QUEUED: MAX_GAUGE_REQUESTS, MODEL_READY: 1.0}
_COUNTERS = {REQUESTS_STARTED: MAX_REQUESTS, REQUESTS_TOTAL: MAX_REQUESTS, MIGRATIONS: MAX_REQUESTS}
_EXPECTED_TYPE = {**dict.fromkeys(_HISTOGRAMS, "histogram"), **dict.fromkeys(_GAUGES, "gauge")}
_EXPECTED_TYPE |= {name.removesuffix("_total"): "counter" for name in _COUNTERS}


class FrontendMetricsError(ValueError):
    """A frontend's metrics that cannot be used: the reason names the series or the field."""


@dataclass(frozen=True, slots=True)
class Histogram:
    """One histogram, summed over the served models: cumulative bucket counts by upper bound."""

    sum: float = 0.0
    count: float = 0.0
    bounds: tuple[float, ...] = ()  # upper bounds, ascending, the last one +Inf
    cumulative: tuple[float, ...] = ()  # observations ≤ each bound

    def minus(self, earlier: Histogram) -> Histogram | None:
        """The observations since ``earlier``; None when anything went down (the frontend restarted)."""
        if self.count < earlier.count or self.sum < earlier.sum:
            return None
        if not earlier.bounds:  # the histogram had no series yet
            return Histogram(self.sum - earlier.sum, self.count - earlier.count, self.bounds, self.cumulative)
        if self.bounds != earlier.bounds:
            return None  # another layout, or no series any more: another process
        cumulative = tuple(a - b for a, b in zip(self.cumulative, earlier.cumulative, strict=True))
        if any(d < 0 for d in cumulative):
            return None
        return Histogram(self.sum - earlier.sum, self.count - earlier.count, self.bounds, cumulative)


@dataclass(frozen=True, slots=True)
class FrontendSnapshot:
    """What one scrape of one frontend said, summed over the served models, at time ``at`` (seconds)."""

    at: float
    requests_started: float | None  # None: no arrival series (none yet, or a frontend without the counter)
    requests_by_status: Mapping[str, float]
    input_tokens: Histogram
    output_tokens: Histogram
    ttft: Histogram
    itl: Histogram
    inflight: float
    queued: float
    models_ready: int  # served models whose model_ready gauge is 1
    migrations: float


Seconds = Annotated[float, msgspec.Meta(ge=0, le=MAX_LATENCY_SECONDS)]
TokensPerRequest = Annotated[float, msgspec.Meta(ge=0, le=MAX_TOKENS_PER_REQUEST)]
Rate = Annotated[float, msgspec.Meta(ge=0, le=MAX_ARRIVALS_PER_SECOND * MAX_FRONTENDS)]
Requests = Annotated[float, msgspec.Meta(ge=0, le=MAX_GAUGE_REQUESTS * MAX_FRONTENDS)]


class FrontendDemand(msgspec.Struct, frozen=True, kw_only=True):
    """The demand all frontends saw over the interval since their previous snapshots.

    ``None`` for a mean or percentile means nothing was observed in the interval (not zero). Frontends
    with no previous snapshot (their first scrape) count in the gauges but not in the rates.
    """

    interval_seconds: Annotated[
        float, msgspec.Meta(ge=0, le=MAX_INTERVAL_SECONDS, description="longest interval measured")
    ]
    arrivals_per_second: Annotated[Rate, msgspec.Meta(description="requests arriving, per second")]
    completions_per_second: Annotated[Rate, msgspec.Meta(description="requests ended with success")]
    errors_per_second: Annotated[Rate, msgspec.Meta(description="requests ended with an error")]
    mean_input_tokens: Annotated[TokensPerRequest | None, msgspec.Meta(description="prompt length")]
    mean_output_tokens: Annotated[TokensPerRequest | None, msgspec.Meta(description="generated tokens")]
    inflight: Annotated[Requests, msgspec.Meta(description="requests in flight now, all frontends")]
    queued: Annotated[Requests, msgspec.Meta(description="requests queued now, all frontends")]
    ttft_p50_seconds: Seconds | None
    ttft_p95_seconds: Seconds | None
    itl_p50_seconds: Seconds | None
    itl_p95_seconds: Seconds | None
    migrations: Annotated[
        float,
        msgspec.Meta(ge=0, le=MAX_REQUESTS * MAX_FRONTENDS, description="requests re-sent to another worker"),
    ]
    frontends: Annotated[int, msgspec.Meta(ge=0, le=MAX_FRONTENDS, description="frontends in the rates")]
    models_ready: Annotated[
        int,
        msgspec.Meta(ge=0, le=MAX_MODELS * MAX_FRONTENDS, description="served models ready, all frontends"),
    ]
    restarted: tuple[str, ...] = ()  # frontends whose counters went down (taken as increase since restart)
    rejected: tuple[tuple[str, str], ...] = ()  # (frontend, reason): left out of the rates


# -- parsing --------------------------------------------------------------------------------------------


def _check(series: str, value: float, upper: float) -> float:
    if math.isnan(value):
        raise FrontendMetricsError(f"{series}: NaN")
    if value < 0:
        raise FrontendMetricsError(f"{series}: negative value {value!r}")
    if value > upper:
        raise FrontendMetricsError(f"{series}: {value!r} is beyond the physical range (≤ {upper:g})")
    return value


def _is_served(labels: Mapping[str, str], models: Collection[str] | None) -> bool:
    model = labels.get("model")
    if model is None:
        return True
    return model in models if models is not None else model != UNKNOWN_MODEL


class _HistogramParts:
    def __init__(self) -> None:
        self.sum = 0.0
        self.count = 0.0
        # per series (labels without le): {bound: cumulative}
        self.buckets: dict[tuple[tuple[str, str], ...], dict[float, float]] = {}

    def build(self, name: str) -> Histogram:
        layouts = {tuple(sorted(b)) for b in self.buckets.values()}
        if len(layouts) > 1:
            raise FrontendMetricsError(f"{name}: series with different bucket bounds")
        if not layouts:
            if self.count:
                raise FrontendMetricsError(f"{name}: a count without buckets")
            return Histogram(self.sum, self.count)
        bounds = layouts.pop()
        if bounds[-1] != math.inf:
            raise FrontendMetricsError(f"{name}: no +Inf bucket")
        for buckets in self.buckets.values():
            if any(later < earlier for earlier, later in pairwise(buckets[le] for le in bounds)):
                raise FrontendMetricsError(f"{name}: bucket counts decrease as the bound grows")
        cumulative = tuple(sum(b[le] for b in self.buckets.values()) for le in bounds)
        return Histogram(self.sum, self.count, bounds, cumulative)


def parse_frontend_metrics(
    text: str, *, at: float, models: Collection[str] | None = None
) -> FrontendSnapshot:
    """One frontend's ``/metrics`` text, read at ``at`` (seconds), for ``models`` (None: every model it
    serves) → a snapshot, or :class:`FrontendMetricsError` with the reason."""
    if not math.isfinite(at):
        raise FrontendMetricsError(f"at: not a finite time: {at!r}")
    started: float | None = None
    by_status: dict[str, float] = {}
    gauges = dict.fromkeys(_GAUGES, 0.0)
    ready = 0
    migrations = 0.0
    parts = {name: _HistogramParts() for name in _HISTOGRAMS}
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as exc:  # the parser raises several kinds on garbled text; all mean "not usable"
        raise FrontendMetricsError(f"not Prometheus text: {type(exc).__name__}: {exc}") from None
    for family in families:
        expected = _EXPECTED_TYPE.get(family.name)
        if expected is None:
            continue
        if family.type != expected:
            raise FrontendMetricsError(f"{family.name}: type {family.type}, expected {expected}")
        for sample in family.samples:
            if not _is_served(sample.labels, models):
                continue
            value = float(sample.value)
            series = f"{sample.name}{{{','.join(f'{k}={v!r}' for k, v in sorted(sample.labels.items()))}}}"
            if sample.name == REQUESTS_STARTED:
                started = (started or 0.0) + _check(series, value, MAX_REQUESTS)
            elif sample.name == REQUESTS_TOTAL:
                status = sample.labels.get("status", "")
                by_status[status] = by_status.get(status, 0.0) + _check(series, value, MAX_REQUESTS)
            elif sample.name == MIGRATIONS:
                migrations += _check(series, value, MAX_REQUESTS)
            elif sample.name in _GAUGES:
                gauges[sample.name] += _check(series, value, _GAUGES[sample.name])
                if sample.name == MODEL_READY:
                    ready += value == 1.0
            elif family.name in parts:
                _add_histogram_sample(
                    parts[family.name], family.name, series, sample.name, sample.labels, value
                )
    for name, total in ((REQUESTS_STARTED, started or 0.0), (REQUESTS_TOTAL, sum(by_status.values()))):
        _check(name, total, MAX_REQUESTS)
    for name, total in gauges.items():
        _check(name, total, MAX_GAUGE_REQUESTS)
    _check(f"{MODEL_READY} (models ready)", ready, MAX_MODELS)
    hist = {name: p.build(name) for name, p in parts.items()}
    return FrontendSnapshot(
        at=at,
        requests_started=started,
        requests_by_status=by_status,
        input_tokens=hist[INPUT_TOKENS],
        output_tokens=hist[OUTPUT_TOKENS],
        ttft=hist[TTFT],
        itl=hist[ITL],
        inflight=gauges[INFLIGHT],
        queued=gauges[QUEUED],
        models_ready=ready,
        migrations=migrations,
    )


def _add_histogram_sample(
    parts: _HistogramParts, name: str, series: str, sample: str, labels: Mapping[str, str], value: float
) -> None:
    bound_max, sum_max = _HISTOGRAMS[name]
    if sample == f"{name}_sum":
        parts.sum += _check(series, value, sum_max)
        _check(f"{name}_sum", parts.sum, sum_max)
    elif sample == f"{name}_count":
        parts.count += _check(series, value, MAX_REQUESTS * MAX_TOKENS_PER_REQUEST)
    elif sample == f"{name}_bucket":
        try:
            le = float(labels["le"])
        except (KeyError, ValueError):
            raise FrontendMetricsError(f"{series}: no numeric 'le' label") from None
        if math.isnan(le) or le < 0 or (le > bound_max and le != math.inf):
            raise FrontendMetricsError(f"{series}: bucket bound {le!r} outside [0, {bound_max:g}]")
        key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        buckets = parts.buckets.setdefault(key, {})
        if le in buckets:
            raise FrontendMetricsError(f"{series}: bucket given twice")
        buckets[le] = _check(series, value, MAX_REQUESTS * MAX_TOKENS_PER_REQUEST)


# -- demand over an interval ----------------------------------------------------------------------------


def quantile(q: float, h: Histogram) -> float | None:
    """Prometheus's ``histogram_quantile``: linear within the bucket holding the q-th observation; the
    highest finite bound when it falls in the +Inf bucket; None without observations."""
    if not h.cumulative or h.cumulative[-1] <= 0:
        return None
    rank = q * h.cumulative[-1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(h.bounds, h.cumulative, strict=True):
        if count >= rank and count > lower_count:
            if bound == math.inf:
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


@dataclass(frozen=True, slots=True)
class _Increase:
    """One frontend's increase over its interval."""

    seconds: float
    arrivals: float
    by_status: Mapping[str, float]
    input_tokens: Histogram
    output_tokens: Histogram
    ttft: Histogram
    itl: Histogram
    migrations: float
    restarted: bool


def _increase(prev: FrontendSnapshot, cur: FrontendSnapshot) -> _Increase:
    seconds = cur.at - prev.at
    if not MIN_INTERVAL_SECONDS <= seconds <= MAX_INTERVAL_SECONDS:
        raise FrontendMetricsError(
            f"interval: {seconds!r} s outside [{MIN_INTERVAL_SECONDS:g}, {MAX_INTERVAL_SECONDS:g}]"
        )
    now = (cur.input_tokens, cur.output_tokens, cur.ttft, cur.itl)
    then = (prev.input_tokens, prev.output_tokens, prev.ttft, prev.itl)
    deltas = [h.minus(p) for h, p in zip(now, then, strict=True)]
    statuses = prev.requests_by_status.items()
    restarted = (
        any(d is None for d in deltas)
        or (cur.requests_started or 0.0) < (prev.requests_started or 0.0)
        or cur.migrations < prev.migrations
        or any(cur.requests_by_status.get(status, 0.0) < value for status, value in statuses)
    )
    base = None if restarted else prev  # after a restart, everything counted so far is the increase
    increases = now if base is None else tuple(d or Histogram() for d in deltas)
    input_tokens, output_tokens, ttft, itl = increases
    by_status = {
        status: value - (base.requests_by_status.get(status, 0.0) if base else 0.0)
        for status, value in cur.requests_by_status.items()
    }
    if cur.requests_started is not None:  # a series not there before had counted nothing
        arrivals = cur.requests_started - ((base.requests_started or 0.0) if base else 0.0)
    else:
        arrivals = sum(by_status.values())  # no arrival counter: completions, a request's duration late
    for what, count in (("arrivals", arrivals), ("completions", sum(by_status.values()))):
        if count / seconds > MAX_ARRIVALS_PER_SECOND:
            raise FrontendMetricsError(f"{what}: {count / seconds:g}/s is beyond one frontend's range")
    for name, hist in ((INPUT_TOKENS, input_tokens), (OUTPUT_TOKENS, output_tokens)):
        if hist.count > 0 and hist.sum / hist.count > MAX_TOKENS_PER_REQUEST:
            raise FrontendMetricsError(f"{name}: a mean of {hist.sum / hist.count:g} tokens a request")
    return _Increase(
        seconds=seconds,
        arrivals=arrivals,
        by_status=by_status,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        ttft=ttft,
        itl=itl,
        migrations=cur.migrations - (base.migrations if base else 0.0),
        restarted=restarted,
    )


def _merged(hists: Iterable[Histogram]) -> Histogram:
    """Histograms of several frontends added up; buckets only where the layouts agree (Dynamo's are fixed
    per metric, so a layout that differs is left out of the percentiles but not of the mean)."""
    total, count = 0.0, 0.0
    bounds: tuple[float, ...] = ()
    cumulative: tuple[float, ...] = ()
    for h in hists:
        total, count = total + h.sum, count + h.count
        if not bounds:
            bounds, cumulative = h.bounds, h.cumulative
        elif h.bounds == bounds:
            cumulative = tuple(a + b for a, b in zip(cumulative, h.cumulative, strict=True))
    return Histogram(total, count, bounds, cumulative)


def _mean(h: Histogram) -> float | None:
    return h.sum / h.count if h.count > 0 else None


def demand_between(
    previous: Mapping[str, FrontendSnapshot], current: Mapping[str, FrontendSnapshot]
) -> FrontendDemand:
    """The demand over the interval between each frontend's previous and current snapshots, all summed.

    Keys are frontends (their URLs). A frontend only in ``current`` counts in the gauges (in flight,
    queued, ready) but gives no rate yet; one only in ``previous`` (its scrape failed) is left out. A
    frontend whose interval or increase is impossible is listed in ``rejected`` and left out of the rates.
    """
    if len(current) > MAX_FRONTENDS:
        raise FrontendMetricsError(f"frontends: {len(current)} > {MAX_FRONTENDS}")
    increases: dict[str, _Increase] = {}
    rejected: list[tuple[str, str]] = []
    for frontend, cur in current.items():
        prev = previous.get(frontend)
        if prev is None:
            continue
        try:
            increases[frontend] = _increase(prev, cur)
        except FrontendMetricsError as exc:
            rejected.append((frontend, str(exc)))
    parts = increases.values()
    ttft = _merged(i.ttft for i in parts)
    itl = _merged(i.itl for i in parts)
    return FrontendDemand(
        interval_seconds=max((i.seconds for i in parts), default=0.0),
        arrivals_per_second=sum((i.arrivals / i.seconds for i in parts), 0.0),
        completions_per_second=sum((i.by_status.get("success", 0.0) / i.seconds for i in parts), 0.0),
        errors_per_second=sum(
            (sum(v for status, v in i.by_status.items() if status != "success") / i.seconds for i in parts),
            0.0,
        ),
        mean_input_tokens=_mean(_merged(i.input_tokens for i in parts)),
        mean_output_tokens=_mean(_merged(i.output_tokens for i in parts)),
        inflight=sum((s.inflight for s in current.values()), 0.0),
        queued=sum((s.queued for s in current.values()), 0.0),
        ttft_p50_seconds=quantile(0.5, ttft),
        ttft_p95_seconds=quantile(0.95, ttft),
        itl_p50_seconds=quantile(0.5, itl),
        itl_p95_seconds=quantile(0.95, itl),
        migrations=sum((i.migrations for i in parts), 0.0),
        frontends=len(increases),
        models_ready=sum(s.models_ready for s in current.values()),
        restarted=tuple(f for f, i in increases.items() if i.restarted),
        rejected=tuple(rejected),
    )
