"""Dynamo's event plane on NATS: its subjects, its msgpack envelope, and the two payloads the agent reads.

Pure: no I/O. Written against Dynamo 1.6.1 as measured on this machine (``DYN_EVENT_PLANE=nats``).

Subjects. These are Dynamo's, not the agent's: :mod:`agent.subjects` builds every subject of the agent's
own protocol, and :class:`DynamoSubjects` here builds the few foreign ones the agent listens to, so that no
Dynamo subject string is written anywhere else. A worker serving ``{namespace}/{component}/{endpoint}``
publishes on ``namespace.{namespace}.component.{component}.endpoint.{endpoint}.{topic}`` with topics
``forward-pass-metrics`` (one per scheduler iteration while busy, plus an idle heartbeat), ``kv_metrics``
(KV blocks in use, on change) and ``kv-events`` (block stored/removed: the router's, not read here).

Envelope. Every message is a msgpack map ``{publisher_id, sequence, published_at, topic, payload}``:
``published_at`` in milliseconds since the epoch, ``payload`` msgpack bytes again. Each publisher (one per
worker and topic: a worker's two topics have different ``publisher_id``) numbers its messages from 0.

Payloads. ForwardPassMetrics (version 1; the field names and meanings of Dynamo's
``dynamo/common/forward_pass_metrics.py``, re-declared here, not imported) and kv_metrics ``{worker_id,
dp_rank, active_decode_blocks, active_prefill_tokens, kv_used_blocks}``. Note that Dynamo writes the same
worker's id as a decimal *string* in ForwardPassMetrics and as an unsigned 64-bit *integer* in kv_metrics
(measured: ``"13976126110125517951"`` and ``13976126110125517951``); :func:`worker_key` makes them one key.

Every number has a physical range; anything else is refused by :func:`decode_event` with an
:class:`EventPlaneError` naming the field. Unknown fields are ignored (Dynamo may add some); a topic the
agent does not read decodes to its envelope with ``payload=None``.

Speed. A busy worker publishes a ForwardPassMetrics per scheduler iteration, so a fleet sends tens of
thousands a second and their decoding is most of what the agent adds to nats-py's own cost per message
(``bench/dynamo_ingest.py``). Hence: the Structs are ``gc=False`` (they hold only numbers, strings and
each other, so they cannot form a cycle, and leaving them untracked spares the collector); the worker id's
digits are checked with string methods rather than by a ``Meta(pattern=...)`` regular expression (which
cost a quarter of the payload's decoding), and each id's parse is remembered; :func:`decode_event` gives
the worker's key with the event, so that the handler parses nothing.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Annotated, Final

import msgspec

from agent.core.dynamo_workers import WorkerKey
from agent.core.validation import split_error

FORWARD_PASS_METRICS: Final = "forward-pass-metrics"
KV_METRICS: Final = "kv_metrics"
KV_EVENTS: Final = "kv-events"
FPM_VERSION: Final = 1

DYNAMO_NAME_PATTERN: Final = r"^[A-Za-z0-9_-]+$"  # one subject token: no '.', '*', '>' or spaces
_NAME = re.compile(DYNAMO_NAME_PATTERN)

U64_MAX: Final = 2**64 - 1
MAX_EPOCH_MS: Final = 7_258_118_400_000  # 2200-01-01: a later publish time is a broken clock
MAX_DP_RANK: Final = 65_535
MAX_REQUESTS: Final = 10_000_000  # requests one scheduler holds
MAX_TOKENS: Final = 10**12  # tokens one scheduler holds (10M requests × 100k tokens)
MAX_VARIANCE: Final = 1e16  # of lengths up to 1e8 tokens
MAX_ITERATION_SECONDS: Final = 3600.0  # one forward pass
MAX_BLOCKS: Final = 10**10  # KV blocks of one worker

# msgspec bounds only fit int64, but Dynamo's ids use the whole uint64 range; msgpack itself has no larger
# integer, so ge=0 is the whole range check.
U64 = Annotated[int, msgspec.Meta(ge=0)]
Requests = Annotated[int, msgspec.Meta(ge=0, le=MAX_REQUESTS)]
Tokens = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS)]
Variance = Annotated[float, msgspec.Meta(ge=0, le=MAX_VARIANCE)]
Blocks = Annotated[int, msgspec.Meta(ge=0, le=MAX_BLOCKS)]
DpRank = Annotated[int, msgspec.Meta(ge=0, le=MAX_DP_RANK)]


class EventPlaneError(ValueError):
    """An event-plane message that cannot be used: the reason names the field."""


@dataclass(frozen=True, slots=True)
class DynamoSubjects:
    """The event-plane subjects of one Dynamo endpoint (defaults: Dynamo's, ``dynamo.backend.generate``)."""

    namespace: str = "dynamo"
    component: str = "backend"
    endpoint: str = "generate"

    def __post_init__(self) -> None:
        for field, value in (
            ("namespace", self.namespace),
            ("component", self.component),
            ("endpoint", self.endpoint),
        ):
            if not _NAME.fullmatch(value):
                raise ValueError(f"Dynamo {field} {value!r}: one subject token of [A-Za-z0-9_-]")

    @property
    def prefix(self) -> str:
        return f"namespace.{self.namespace}.component.{self.component}.endpoint.{self.endpoint}"

    def topic(self, topic: str) -> str:
        if not _NAME.fullmatch(topic):
            raise ValueError(f"Dynamo topic {topic!r}: one subject token of [A-Za-z0-9_-]")
        return f"{self.prefix}.{topic}"

    @property
    def forward_pass_metrics(self) -> str:
        return self.topic(FORWARD_PASS_METRICS)

    @property
    def kv_metrics(self) -> str:
        return self.topic(KV_METRICS)

    @property
    def kv_events(self) -> str:
        return self.topic(KV_EVENTS)

    @property
    def all_topics(self) -> str:
        """Every topic of the endpoint, one subscription."""
        return f"{self.prefix}.*"


class EventEnvelope(msgspec.Struct, frozen=True, gc=False):
    """The event plane's wrapper around every payload."""

    publisher_id: U64
    sequence: U64  # per publisher, from 0
    published_at: Annotated[int, msgspec.Meta(ge=0, le=MAX_EPOCH_MS)]  # milliseconds since the epoch
    topic: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    payload: Annotated[bytes, msgspec.Meta(max_length=1 << 24)]  # msgpack again


class ScheduledRequests(msgspec.Struct, frozen=True, gc=False):
    """Requests scheduled and executed in one iteration."""

    num_prefill_requests: Requests = 0  # new requests and chunked-prefill continuations
    sum_prefill_tokens: Tokens = 0  # tokens computed for prefill now (not prefix-cached, not earlier chunks)
    var_prefill_length: Variance = 0.0  # population variance of the whole prompt lengths
    sum_prefill_kv_tokens: Tokens = 0  # KV tokens read, not computed (prefix hits, earlier chunks)
    num_decode_requests: Requests = 0  # requests generating output tokens
    sum_decode_kv_tokens: Tokens = 0  # KV context of the decoding requests (prompt + generated so far)
    var_decode_kv_tokens: Variance = 0.0  # population variance of those contexts


class QueuedRequests(msgspec.Struct, frozen=True, gc=False):
    """Requests waiting in the queue, not scheduled this iteration (raw totals: prefix hits unknown yet)."""

    num_prefill_requests: Requests = 0  # waiting to start
    sum_prefill_tokens: Tokens = 0  # their prompt tokens
    var_prefill_length: Variance = 0.0
    num_decode_requests: Requests = 0  # preempted: were decoding, evicted back to the queue (KV pressure)
    sum_decode_kv_tokens: Tokens = 0  # their KV context
    var_decode_kv_tokens: Variance = 0.0


class ForwardPassMetrics(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One scheduler iteration of one worker (DP rank); all zeros and ``wall_time`` 0: the idle heartbeat."""

    version: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = FPM_VERSION  # checked by decode_event
    # The runtime's connection id, in decimal (1-20 ASCII digits, at most 2**64 - 1: checked when
    # decode_event or worker_key parses it). Dynamo defaults it to "" (test fixtures); a message that names
    # no worker is of no use here, so it is required.
    worker_id: Annotated[str, msgspec.Meta(max_length=20)]
    dp_rank: DpRank = 0
    counter_id: U64 = 0  # per (worker_id, dp_rank), increasing
    wall_time: Annotated[float, msgspec.Meta(ge=0, le=MAX_ITERATION_SECONDS)] = (
        0.0  # seconds, schedule→output
    )
    scheduled_requests: ScheduledRequests = ScheduledRequests()
    queued_requests: QueuedRequests = QueuedRequests()

    @property
    def idle(self) -> bool:
        return (
            self.wall_time == 0.0
            and self.scheduled_requests == ScheduledRequests()
            and self.queued_requests == QueuedRequests()
        )


class KvMetrics(msgspec.Struct, frozen=True, gc=False):
    """A worker's KV cache use; Dynamo sends null for what the engine does not report (the mocker: the
    two ``active_*`` fields)."""

    worker_id: U64
    dp_rank: DpRank | None = 0
    active_decode_blocks: Blocks | None = None
    active_prefill_tokens: Tokens | None = None
    kv_used_blocks: Blocks | None = None


class DynamoEvent(msgspec.Struct, frozen=True, gc=False):
    """A decoded event-plane message: its envelope, its payload and the worker's key (both None for a topic
    not read here). A Struct, not a frozen dataclass: it is built once per message, in a third of the time.
    """

    envelope: EventEnvelope
    payload: ForwardPassMetrics | KvMetrics | None
    worker: WorkerKey | None = None


# Decoders are built once: msgspec compiles each type's decoding on first use.
_ENVELOPE = msgspec.msgpack.Decoder(EventEnvelope)
_FPM = msgspec.msgpack.Decoder(ForwardPassMetrics)
_KV = msgspec.msgpack.Decoder(KvMetrics)
_KNOWN_IDS: Final = 4096  # worker ids whose parse is remembered (a fleet has far fewer)


def _refuse(where: str, exc: msgspec.DecodeError) -> EventPlaneError:
    if isinstance(exc, msgspec.ValidationError):
        field, reason = split_error(exc)
        return EventPlaneError(
            f"{where}: field {field!r}: {reason}" if field != "?" else f"{where}: {reason}"
        )
    return EventPlaneError(f"{where}: not msgpack: {exc}")


def decode_event(data: bytes) -> DynamoEvent:
    """The bytes of one event-plane NATS message → its envelope, payload and worker key, or
    :class:`EventPlaneError`."""
    try:
        envelope = _ENVELOPE.decode(data)
    except msgspec.DecodeError as exc:
        raise _refuse("envelope", exc) from None
    topic = envelope.topic
    try:
        if topic == FORWARD_PASS_METRICS:
            fpm = _FPM.decode(envelope.payload)
        elif topic == KV_METRICS:
            kv = _KV.decode(envelope.payload)
            return DynamoEvent(envelope, kv, (kv.worker_id, kv.dp_rank or 0))
        else:
            return DynamoEvent(envelope, None)
    except msgspec.DecodeError as exc:
        raise _refuse(f"{topic} payload", exc) from None
    if fpm.version != FPM_VERSION:
        raise EventPlaneError(
            f"{topic} payload: field 'version': {fpm.version}, only {FPM_VERSION} is understood"
        )
    try:
        return DynamoEvent(envelope, fpm, (_decimal_u64(fpm.worker_id), fpm.dp_rank))
    except EventPlaneError as err:
        raise EventPlaneError(f"{topic} payload: {err}") from None


def worker_key(payload: ForwardPassMetrics | KvMetrics) -> WorkerKey:
    """(worker id, DP rank) as one key for both payloads (ForwardPassMetrics writes the id as a string,
    which must be 1-20 ASCII digits for at most 2**64 - 1)."""
    if isinstance(payload, KvMetrics):
        return payload.worker_id, payload.dp_rank or 0
    return _decimal_u64(payload.worker_id), payload.dp_rank


@functools.lru_cache(maxsize=_KNOWN_IDS)
def _decimal_u64(digits: str) -> int:
    # Cached: every forward pass of a worker repeats its id, and the lookup costs a fifth of the parse.
    # isascii too: str.isdigit accepts other scripts' digits (and superscripts), which int() would read.
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 20 or (worker := int(digits)) > U64_MAX:
        raise EventPlaneError(f"field 'worker_id': {digits!r} is not an unsigned 64-bit id in decimal")
    return worker
