"""Ingest rate of Dynamo's ForwardPassMetrics into the DynamoSource actor, against a bare nats-py subscriber
on the same server and stream: the method of ``bench/ingest.py``, whose harness this reuses (the raw-socket
publisher process and its protocol, the sampling, the alternating rounds, the summary and the report).

A real ``nats-server`` (:class:`agent.runtime.nats_server.NatsServer`, default limits) and a publisher in a
separate process (this script with ``--publisher``) writing pre-encoded ``PUB`` frames to a plain socket:
``--workers`` Dynamo workers (default 48) publish ForwardPassMetrics on Dynamo 1.6.1's event-plane subject
``namespace.{ns}.component.backend.endpoint.generate.forward-pass-metrics`` (one subject for every worker,
as Dynamo does; a fresh random Dynamo namespace per run of the bench). Each message is Dynamo's own shape:
the four captured samples in ``tests/data/dynamo/forward-pass-metrics-*.msgpack`` (a prefill, a mixed and
a decode iteration and an idle heartbeat) are decoded with their key order kept and re-encoded (msgpack
map envelope ``{publisher_id, sequence, published_at, topic, payload}`` around msgpack ``payload`` bytes;
re-encoding an unchanged sample gives its bytes back exactly, which the publisher checks) with each
worker's own random 64-bit id (a decimal string, as Dynamo writes it), its own ``publisher_id``, its
``sequence`` and ``counter_id`` counting up, ``published_at`` now, and request, token and queue figures
drawn around the sample's (about 520 bytes a message).

Two consumers, each on its own nats-py connection, never at the same time:

- ``actor``: :class:`agent.actors.dynamo_source.DynamoSource` run through its real ``Actor.run`` with a
  real :class:`agent.bus.Bus` and :class:`agent.runtime.clock.RealClock`: every message decoded and
  validated by ``decode_event`` (envelope, then payload), applied to its
  :class:`~agent.core.dynamo_workers.DynamoWorkers` registry, and counted in ``costagent_messages_handled``.
  Its frontend scrape timer is set to an hour so that it never fires in a run: only the event plane is
  measured (the frontend URL it would read is never contacted).
- ``bare``: ``nc.subscribe(subject, cb=...)`` whose callback only counts.

After one untimed warm-up run of each (20,000 messages), each of ``--rounds`` rounds (default 5) runs both,
alternating which goes first; a consumer's rate is the messages handled between the first and the last
sample (every 2 ms) that saw one, over the time between them (``bench/ingest.py``'s ``observe``). Each
actor run checks its registry: every worker present, each one's scheduled and queued requests equal to
those of its last message, nothing rejected.

Target: the actor ≥ 0.8 of the bare subscriber's rate (medians); ``targets_met`` also needs nothing lost
and every actor run's checks to pass.

Run: ``.venv/bin/python bench/dynamo_ingest.py`` (``--messages N``, ``--rounds R``, ``--workers W``,
``--seed S``, ``--out PATH``); prints one JSON object, progress goes to stderr. About 30 s on 2 cores.
"""

from __future__ import annotations

import argparse
import random
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from ingest import (
    Consumer,
    Events,
    Publisher,
    _connect,
    alternate,
    arguments,
    drive_actor,
    emit,
    on_local_server,
    rejected_total,
    report,
    serve_publisher,
    summarize,
    timed_run,
)

from agent.actors.dynamo_source import EVENT_TAG, DynamoSource
from agent.bus import Bus
from agent.config import DynamoSettings
from agent.core.demand_bins import DemandBins
from agent.providers.dynamo.event_plane import DynamoSubjects
from agent.runtime.clock import RealClock
from agent.runtime.metrics import AgentMetrics
from agent.subjects import Subjects

TARGET_RATIO = 0.8
WARMUP_MESSAGES = 20_000
MAX_WORKERS = 10_000  # DynamoWorkers' default bound: more would evict and fail the registry check
SAMPLES = Path(__file__).resolve().parent.parent / "tests" / "data" / "dynamo"
# Never contacted: the scrape timer is an hour (the settings' maximum) and a run lasts seconds.
UNUSED_FRONTEND = "http://127.0.0.1:9"

# --- the publisher (a separate process) -----------------------------------------------------------------


def load_samples(directory: Path = SAMPLES) -> list[dict[str, Any]]:
    """The captured ForwardPassMetrics messages as envelope maps with their payload decoded, key order as
    Dynamo wrote it; refuses a sample that would not re-encode to its own bytes."""
    samples = []
    for path in sorted(directory.glob("forward-pass-metrics-*.msgpack")):
        raw = path.read_bytes()
        envelope = msgspec.msgpack.decode(raw)
        envelope["payload"] = msgspec.msgpack.decode(envelope["payload"])
        if encode_message(envelope) != raw:
            raise RuntimeError(f"{path.name}: re-encoding does not reproduce Dynamo's bytes")
        samples.append(envelope)
    if not samples:
        raise RuntimeError(f"no forward-pass-metrics-*.msgpack samples in {directory}")
    return samples


def encode_message(envelope: dict[str, Any]) -> bytes:
    """Dynamo's two layers: the payload map to msgpack bytes, then the envelope map around them."""
    return msgspec.msgpack.encode({**envelope, "payload": msgspec.msgpack.encode(envelope["payload"])})


@dataclass(slots=True)
class DynamoWorkerState:
    worker_id: str  # decimal, as ForwardPassMetrics writes it
    publisher_id: int
    sequence: int = 0
    counter_id: int = 0


def vary(section: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A sample's request section with new counts where it had some (an empty one stays empty), each
    request's tokens around the sample's mean."""
    out = dict(section)
    for kind, tokens in (("prefill", "sum_prefill_tokens"), ("decode", "sum_decode_kv_tokens")):
        count_key = f"num_{kind}_requests"
        before = section.get(count_key, 0)
        if before:
            after = rng.randint(1, 4 * before + 4)
            per_request = section[tokens] / before
            out[count_key] = after
            out[tokens] = round(after * per_request * rng.uniform(0.5, 2.0))
    return out


def encode_batch(
    samples: list[dict[str, Any]], workers: list[DynamoWorkerState], count: int, rng: random.Random
) -> tuple[list[bytes], dict[str, list[int]], int]:
    """``count`` messages, round-robin over the workers; each worker's last (scheduled, queued) requests
    and the total bytes."""
    batch: list[bytes] = []
    last: dict[str, list[int]] = {}
    size = 0
    now_ms = int(time.time() * 1000)
    for i in range(count):
        w = workers[i % len(workers)]
        sample = samples[rng.randrange(len(samples))]
        payload = dict(sample["payload"])
        payload["worker_id"] = w.worker_id
        payload["counter_id"] = w.counter_id
        payload["wall_time"] = payload["wall_time"] * rng.uniform(0.5, 2.0)
        scheduled = payload["scheduled_requests"] = vary(payload["scheduled_requests"], rng)
        queued = dict(payload["queued_requests"])
        if payload["wall_time"] > 0 and rng.random() < 0.2:  # a busy worker sometimes has a queue
            queued["num_prefill_requests"] = n = rng.randint(1, 16)
            queued["sum_prefill_tokens"] = n * rng.randint(50, 4000)
        payload["queued_requests"] = queued
        envelope = {
            **sample,
            "publisher_id": w.publisher_id,
            "sequence": w.sequence,
            "published_at": now_ms,
            "payload": payload,
        }
        message = encode_message(envelope)
        batch.append(message)
        w.sequence += 1
        w.counter_id += 1
        last[w.worker_id] = [
            scheduled["num_prefill_requests"] + scheduled["num_decode_requests"],
            queued["num_prefill_requests"] + queued["num_decode_requests"],
        ]
        size += len(message)
    return batch, last, size


def publisher(url: str, ns: str, workers: int, seed: int) -> int:
    rng = random.Random(seed)
    samples = load_samples()
    subject = DynamoSubjects(ns).forward_pass_metrics
    team = [
        DynamoWorkerState(worker_id=str(rng.getrandbits(64)), publisher_id=rng.getrandbits(52))
        for _ in range(workers)
    ]

    def prepare(n: int) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
        batch, last, size = encode_batch(samples, team, n, rng)
        return [(subject, message) for message in batch], {"bytes": size, "last": last}

    return serve_publisher(url, prepare)


# --- the consumers (this process) --------------------------------------------------------------------------


def registry_check(actor: DynamoSource, last: dict[str, list[int]]) -> dict[str, Any]:
    """Every worker in the registry with the load of its last message."""
    entries = {str(worker): entry for (worker, _rank), entry in actor.workers.snapshot().items()}
    wrong = [
        worker
        for worker, (scheduled, queued) in last.items()
        if (entry := entries.get(worker)) is None
        or (entry.scheduled_requests, entry.queued_requests) != (scheduled, queued)
    ]
    return {"workers_in_registry": len(entries), "workers_wrong_or_missing": len(wrong)}


async def run_actor(
    url: str, dynamo: DynamoSubjects, pub: Publisher, prepared: dict[str, Any]
) -> dict[str, Any]:
    events = Events()
    nc = await _connect(url, "bench-dynamo-ingest-actor", events)
    metrics = AgentMetrics()
    subjects = Subjects(f"bench-dynamo-{secrets.token_hex(4)}")
    bus = Bus(nc, subjects, source="bench-dynamo-ingest", clock=RealClock(), metrics=metrics)
    settings = DynamoSettings(
        frontend_urls=[UNUSED_FRONTEND],
        namespace=dynamo.namespace,
        component=dynamo.component,
        endpoint=dynamo.endpoint,
        scrape_interval_seconds=3600.0,
    )
    actor = DynamoSource(
        bus, bus.clock, settings, DemandBins(bin_seconds=60.0, close_delay_s=0.0, stale_after_s=60.0)
    )
    handled = metrics.messages_handled.cell(
        actor.name, subjects.label(dynamo.forward_pass_metrics), EVENT_TAG
    )
    out = await drive_actor(actor, events, lambda: handled[0], pub, prepared["prepared"])
    checks = {
        "handled_counter": handled[0],
        "rejected": rejected_total(metrics),
        **registry_check(actor, prepared["last"]),
    }
    checks["registry_match"] = (
        checks["handled_counter"] == out["window"].received
        and checks["rejected"] == 0
        and checks["workers_in_registry"] == len(prepared["last"])
        and checks["workers_wrong_or_missing"] == 0
    )
    return {**out, "checks": checks}


async def bench(args: argparse.Namespace, url: str, log_file: Path) -> dict[str, Any]:
    dynamo = DynamoSubjects(f"bench{secrets.token_hex(4)}")
    pub = await Publisher.start(url, dynamo.namespace, args.workers, args.seed, script=__file__)

    async def one(consumer: Consumer, n: int) -> dict[str, Any]:
        def actor(prepared: dict[str, Any]) -> Awaitable[dict[str, Any]]:
            return run_actor(url, dynamo, pub, prepared)

        _prepared, result = await timed_run(
            consumer, actor, url, dynamo.forward_pass_metrics, pub, n, log_file
        )
        return result

    warmup, runs = await alternate(pub, one, args.rounds, args.messages, min(WARMUP_MESSAGES, args.messages))
    return {"subject": dynamo.forward_pass_metrics, "warmup": warmup, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, 20261203, f"Dynamo worker ids (1-{MAX_WORKERS})")
    args = parser.parse_args(argv)
    if args.publisher:
        return publisher(args.publisher, args.ns, args.workers, args.seed)
    if args.messages < 1 or args.rounds < 1:
        parser.error("--messages and --rounds must be ≥ 1")
    if not 1 <= args.workers <= MAX_WORKERS:
        parser.error(f"--workers must be 1-{MAX_WORKERS} (the worker registry's bound)")
    started = time.perf_counter()
    measured = on_local_server(bench, args)
    summary = summarize(measured["runs"], check="registry_match")
    ratio = summary["ratio_actor_to_bare"]
    targets = {"ratio_min": TARGET_RATIO, "ratio": ratio, "ratio_margin": round(ratio / TARGET_RATIO, 3)}
    met = ratio >= TARGET_RATIO and summary["lost_total"] == 0 and summary["actor_checks_pass"]
    name = "Dynamo ForwardPassMetrics ingest: DynamoSource actor vs a bare nats-py subscriber"
    emit(report(name, __file__, argv, args, measured, summary, targets, met, started), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
