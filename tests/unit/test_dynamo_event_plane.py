"""Dynamo's event plane, read as a specification: its subjects, its envelope, the ForwardPassMetrics and
kv_metrics payloads, and messages that must be refused without a crash.

The samples are real: ``tests/data/dynamo/*.msgpack`` are the bytes of NATS messages that Dynamo 1.6.1's
mocker workers published (``regenerate.py`` there), and ``samples.json`` gives each one's subject and its
decoded form, written by msgspec's untyped decoder, for the typed decoding here to agree with.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.providers.dynamo.event_plane import (
    FORWARD_PASS_METRICS,
    KV_EVENTS,
    KV_METRICS,
    DynamoSubjects,
    EventPlaneError,
    ForwardPassMetrics,
    KvMetrics,
    decode_event,
    worker_key,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "dynamo"
MANIFEST = json.loads((DATA / "samples.json").read_text(encoding="utf-8"))
SAMPLES = [(m, (DATA / m["file"]).read_bytes()) for m in MANIFEST["messages"]]
SUBJECTS = DynamoSubjects(MANIFEST["namespace"], MANIFEST["component"], MANIFEST["endpoint"])


def raw_of(topic: str) -> list[bytes]:
    return [raw for m, raw in SAMPLES if m["decoded"]["topic"] == topic]


def envelope(topic_: str, payload: Any, **fields: Any) -> bytes:
    """An event-plane message as Dynamo frames one: the payload is msgpack inside msgpack."""
    inner = payload if isinstance(payload, bytes) else msgspec.msgpack.encode(payload)
    outer = {"publisher_id": 7, "sequence": 0, "published_at": 1_796_320_558_136, "topic": topic_}
    return msgspec.msgpack.encode({**outer, **fields, "payload": inner})


def real_payload(topic: str) -> dict[str, Any]:
    payload: dict[str, Any] = msgspec.msgpack.decode(msgspec.msgpack.decode(raw_of(topic)[0])["payload"])
    return payload


# -- subjects -------------------------------------------------------------------------------------------


def test_the_subjects_are_those_dynamo_published_on() -> None:
    by_topic = {FORWARD_PASS_METRICS: SUBJECTS.forward_pass_metrics, KV_METRICS: SUBJECTS.kv_metrics}
    by_topic[KV_EVENTS] = SUBJECTS.kv_events
    for message, _ in SAMPLES:
        assert message["subject"] == by_topic[message["decoded"]["topic"]]
    assert SUBJECTS.all_topics == f"namespace.{MANIFEST['namespace']}.component.backend.endpoint.generate.*"


def test_dynamos_default_names_give_its_default_subjects() -> None:
    assert DynamoSubjects().forward_pass_metrics == (
        "namespace.dynamo.component.backend.endpoint.generate.forward-pass-metrics"
    )


@pytest.mark.parametrize("name", ["a.b", "*", ">", "two words", ""])
def test_a_name_that_is_not_one_subject_token_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="namespace"):
        DynamoSubjects(namespace=name)
    with pytest.raises(ValueError, match="endpoint"):
        DynamoSubjects(endpoint=name)


# -- real messages --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("message", "raw"), SAMPLES, ids=[m["file"] for m, _ in SAMPLES])
def test_every_real_message_decodes_to_what_dynamo_sent(message: dict[str, Any], raw: bytes) -> None:
    event = decode_event(raw)
    sent = message["decoded"]
    assert msgspec.structs.asdict(event.envelope) | {"payload": None} == sent | {"payload": None}
    if sent["topic"] == KV_EVENTS:
        assert event.payload is None  # the router's topic: decoded no further
    else:
        assert msgspec.to_builtins(event.payload) == sent["payload"]


def test_forward_pass_metrics_say_what_a_worker_scheduled_and_queued() -> None:
    decoded = [decode_event(raw).payload for raw in raw_of(FORWARD_PASS_METRICS)]
    metrics = [p for p in decoded if isinstance(p, ForwardPassMetrics)]
    assert len(metrics) == len(decoded) > 0
    assert any(m.scheduled_requests.num_prefill_requests > 0 for m in metrics)
    assert any(m.scheduled_requests.num_decode_requests > 0 for m in metrics)
    assert all(m.version == 1 for m in metrics)
    assert all(m.wall_time > 0 for m in metrics if not m.idle)


def test_kv_metrics_report_blocks_in_use_with_nulls_for_what_the_mocker_does_not_count() -> None:
    decoded = [decode_event(raw).payload for raw in raw_of(KV_METRICS)]
    metrics = [p for p in decoded if isinstance(p, KvMetrics)]
    assert len(metrics) == len(decoded) > 0
    assert all(m.kv_used_blocks is not None for m in metrics)
    assert all(m.active_decode_blocks is None and m.active_prefill_tokens is None for m in metrics)


def test_a_workers_two_payloads_name_it_alike_although_one_writes_a_string_and_one_an_integer() -> None:
    fpm = {worker_key(p) for raw in raw_of(FORWARD_PASS_METRICS) if (p := decode_event(raw).payload)}
    kv = {worker_key(p) for raw in raw_of(KV_METRICS) if (p := decode_event(raw).payload)}
    assert fpm & kv
    big = KvMetrics(worker_id=2**64 - 1)
    assert worker_key(big) == worker_key(ForwardPassMetrics(worker_id=str(2**64 - 1)))
    with pytest.raises(EventPlaneError, match="worker_id"):
        worker_key(ForwardPassMetrics(worker_id=str(2**64)))


@pytest.mark.parametrize(("message", "raw"), SAMPLES, ids=[m["file"] for m, _ in SAMPLES])
def test_an_event_carries_its_workers_key_parsed_once_at_decoding(
    message: dict[str, Any], raw: bytes
) -> None:
    event = decode_event(raw)
    assert event.worker == (worker_key(event.payload) if event.payload is not None else None)


def test_an_idle_worker_sends_a_heartbeat_of_zeros() -> None:
    decoded = [decode_event(raw).payload for raw in raw_of(FORWARD_PASS_METRICS)]
    heartbeats = [p for p in decoded if isinstance(p, ForwardPassMetrics) and p.wall_time == 0]
    assert heartbeats
    assert all(h.idle and h.counter_id > 0 for h in heartbeats)


def test_fields_dynamo_may_add_later_are_ignored() -> None:
    payload = real_payload(KV_METRICS) | {"gpu_cache_usage": 0.5}
    event = decode_event(envelope(KV_METRICS, payload, future_field=[1, 2]))
    assert isinstance(event.payload, KvMetrics)


# -- refused --------------------------------------------------------------------------------------------

FPM = real_payload(FORWARD_PASS_METRICS)
SCHEDULED = FPM["scheduled_requests"]


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        pytest.param(raw_of(FORWARD_PASS_METRICS)[0][:-9], ["envelope", "not msgpack"], id="truncated"),
        pytest.param(b"\xc1", ["envelope", "not msgpack"], id="garbage"),
        pytest.param(msgspec.msgpack.encode([1, 2, 3]), ["envelope"], id="not-a-map"),
        pytest.param(envelope(KV_METRICS, {}, publisher_id=-1), ["'publisher_id'"], id="negative-id"),
        pytest.param(envelope(KV_METRICS, {}, published_at=2**62), ["'published_at'"], id="year-146-million"),
        pytest.param(envelope(KV_METRICS, {}, topic=""), ["'topic'"], id="empty-topic"),
        pytest.param(envelope(KV_METRICS, b"\x01"), ["kv_metrics payload", "object"], id="payload-not-a-map"),
        pytest.param(
            envelope(KV_METRICS, b"\xc1"), ["kv_metrics payload", "not msgpack"], id="payload-garbage"
        ),
        pytest.param(
            envelope(FORWARD_PASS_METRICS, FPM | {"version": 2}),
            ["'version'", "only 1"],
            id="unknown-version",
        ),
        pytest.param(
            envelope(FORWARD_PASS_METRICS, FPM | {"wall_time": math.nan}), ["'wall_time'"], id="nan-wall-time"
        ),
        pytest.param(
            envelope(FORWARD_PASS_METRICS, FPM | {"wall_time": 1e9}),
            ["'wall_time'"],
            id="a-30-year-iteration",
        ),
        pytest.param(
            envelope(
                FORWARD_PASS_METRICS, FPM | {"scheduled_requests": SCHEDULED | {"num_decode_requests": -1}}
            ),
            ["'scheduled_requests.num_decode_requests'"],
            id="negative-count",
        ),
        pytest.param(
            envelope(FORWARD_PASS_METRICS, FPM | {"queued_requests": {"sum_prefill_tokens": 10**15}}),
            ["'queued_requests.sum_prefill_tokens'"],
            id="absurd-tokens",
        ),
        pytest.param(
            envelope(FORWARD_PASS_METRICS, {k: v for k, v in FPM.items() if k != "worker_id"}),
            ["'worker_id'"],
            id="no-worker",
        ),
        pytest.param(
            envelope(FORWARD_PASS_METRICS, FPM | {"worker_id": "12 "}),
            ["'worker_id'"],
            id="worker-not-decimal",
        ),
        pytest.param(
            envelope(FORWARD_PASS_METRICS, FPM | {"worker_id": "\u0661\u0662"}),  # Arabic-Indic "12"
            ["'worker_id'"],
            id="worker-in-other-digits",
        ),
        pytest.param(
            envelope(FORWARD_PASS_METRICS, FPM | {"worker_id": str(2**64)}),
            ["forward-pass-metrics payload", "'worker_id'", "unsigned 64-bit"],
            id="worker-beyond-u64",
        ),
        pytest.param(envelope(KV_METRICS, {"worker_id": "12"}), ["'worker_id'"], id="kv-worker-as-string"),
        pytest.param(
            envelope(KV_METRICS, {"worker_id": 1, "kv_used_blocks": -3}), ["'kv_used_blocks'"], id="neg"
        ),
    ],
)
def test_an_unusable_message_is_refused_with_a_reason_naming_the_field(raw: bytes, names: list[str]) -> None:
    with pytest.raises(EventPlaneError) as caught:
        decode_event(raw)
    for name in names:
        assert name in str(caught.value)


# -- never a crash, never a number out of its range -----------------------------------------------------

NUMBER = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 2**63, 2**64 - 1, 10**12, 10**13]),
    st.none(),
)
COUNTS = st.dictionaries(st.sampled_from(sorted(SCHEDULED)), NUMBER, max_size=4)


def within_range(payload: ForwardPassMetrics | KvMetrics) -> bool:
    """Every number inside its declared range: what decoding the builtins again checks."""
    msgspec.convert(msgspec.to_builtins(payload), type(payload))
    return all(
        v is None or (isinstance(v, int | float) and 0 <= v < 2**64 and not math.isnan(v))
        for v in _numbers(msgspec.to_builtins(payload))
    )


def _numbers(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    return [] if isinstance(value, str) else [value]


@given(st.binary(max_size=600))
def test_any_bytes_are_an_event_or_a_refusal(raw: bytes) -> None:
    with contextlib.suppress(EventPlaneError):
        decode_event(raw)


@given(st.integers(min_value=0, max_value=len(raw_of(FORWARD_PASS_METRICS)[0])), st.binary(max_size=8))
def test_a_real_message_cut_or_corrupted_anywhere_is_an_event_or_a_refusal(at: int, junk: bytes) -> None:
    raw = raw_of(FORWARD_PASS_METRICS)[0]
    for broken in (raw[:at], raw[:at] + junk + raw[at + len(junk) :]):
        try:
            event = decode_event(broken)
        except EventPlaneError:
            continue
        if event.payload is not None:
            assert within_range(event.payload)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "version": NUMBER,
            "dp_rank": NUMBER,
            "counter_id": NUMBER,
            "wall_time": NUMBER,
            "scheduled_requests": COUNTS,
            "queued_requests": COUNTS,
        },
    ),
    st.dictionaries(
        st.sampled_from(["dp_rank", "active_decode_blocks", "active_prefill_tokens", "kv_used_blocks"]),
        NUMBER,
    ),
    NUMBER,
)
def test_extreme_values_are_refused_or_decoded_within_their_ranges(
    fpm: dict[str, Any], kv: dict[str, Any], worker: Any
) -> None:
    for topic, payload in (
        (FORWARD_PASS_METRICS, {"worker_id": "4655408461248909933", **fpm}),
        (KV_METRICS, {"worker_id": worker, **kv}),
    ):
        try:
            event = decode_event(envelope(topic, payload))
        except EventPlaneError:
            continue
        assert event.payload is not None
        assert within_range(event.payload)
