"""Ingest rate of Dynamo's ForwardPassMetrics into the DynamoSource actor, against a bare nats-py subscriber
on the same server and stream (the method of ``bench/ingest.py``, whose publisher and sampling this reuses).

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
import asyncio
import gc
import json
import random
import secrets
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec
from ingest import (
    Events,
    Publisher,
    RawPublisher,
    Window,
    _connect,
    _reply,
    _slow_consumer_lines,
    _versions,
    frames,
    observe,
)

from agent.actors.dynamo_source import EVENT_TAG, DynamoSource
from agent.bus import Bus
from agent.config import DynamoSettings
from agent.core.demand_bins import DemandBins
from agent.providers.dynamo.event_plane import DynamoSubjects
from agent.runtime.clock import RealClock
from agent.runtime.logs import configure_logging
from agent.runtime.metrics import AgentMetrics
from agent.runtime.nats_server import NatsServer
from agent.subjects import Subjects

TARGET_RATIO = 0.8
WARMUP_MESSAGES = 20_000
MAX_WORKERS = 10_000  # DynamoWorkers' default bound: more would evict and fail the registry check
SAMPLES = Path(__file__).resolve().parent.parent / "tests" / "data" / "dynamo"
# Never contacted: the scrape timer is an hour (the settings' maximum) and a run lasts seconds.
UNUSED_FRONTEND = "http://127.0.0.1:9"

Consumer = Literal["actor", "bare"]


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
    """Serve ``prepare N`` / ``go`` / ``quit`` lines from stdin, one JSON line of answer each."""
    rng = random.Random(seed)
    samples = load_samples()
    subject = DynamoSubjects(ns).forward_pass_metrics
    team = [
        DynamoWorkerState(worker_id=str(rng.getrandbits(64)), publisher_id=rng.getrandbits(52))
        for _ in range(workers)
    ]
    conn = RawPublisher(url)
    chunks: list[bytes] = []
    count = 0
    try:
        for line in sys.stdin:
            words = line.split()
            if not words or words[0] == "quit":
                break
            if words[0] == "prepare":
                batch, last, size = encode_batch(samples, team, int(words[1]), rng)
                chunks, count = frames([(subject, m) for m in batch]), len(batch)
                _reply({"prepared": count, "bytes": size, "last": last})
            elif words[0] == "go":
                started = time.monotonic()
                for chunk in chunks:
                    conn.sock.sendall(chunk)
                conn.flush()
                _reply({"published": count, "seconds": time.monotonic() - started, "started": started})
                chunks, count = [], 0
    finally:
        conn.close()
    return 0


# --- the consumers (this process) --------------------------------------------------------------------------


async def start_publisher(url: str, ns: str, workers: int, seed: int) -> Publisher:
    args = [__file__, "--publisher", url, "--ns", ns, "--workers", str(workers), "--seed", str(seed)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    return Publisher(proc)


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
    stop = asyncio.Event()
    task = asyncio.ensure_future(actor.run(stop))
    ready = asyncio.ensure_future(actor.ready.wait())
    await asyncio.wait({task, ready}, timeout=10.0, return_when=asyncio.FIRST_COMPLETED)
    if not actor.ready.is_set():
        ready.cancel()
        if task.done():
            task.result()  # the actor's own error
        raise RuntimeError("DynamoSource did not get ready")
    go = asyncio.ensure_future(pub.ask("go"))
    window = await observe(lambda: handled[0], prepared["prepared"], go)
    published = await go
    disconnects = events.disconnects
    # Drain-first shutdown (CONVENTIONS.md): stop event, drain, await the actor, cancel only after grace.
    stop.set()
    if not nc.is_closed:
        await nc.drain()
    done, _ = await asyncio.wait({task}, timeout=5.0)
    if not done:
        task.cancel()
        raise RuntimeError("DynamoSource did not stop within 5 s of drain")
    task.result()
    rejected = sum(
        s.value
        for family in metrics.messages_rejected.collect()
        for s in family.samples
        if s.name.endswith("_total")
    )
    checks = {
        "handled_counter": handled[0],
        "rejected": int(rejected),
        **registry_check(actor, prepared["last"]),
    }
    checks["registry_match"] = (
        checks["handled_counter"] == window.received
        and checks["rejected"] == 0
        and checks["workers_in_registry"] == len(prepared["last"])
        and checks["workers_wrong_or_missing"] == 0
    )
    return {
        "published": published,
        "window": window,
        "events": events,
        "disconnects": disconnects,
        "checks": checks,
    }


async def run_bare(
    url: str, dynamo: DynamoSubjects, pub: Publisher, prepared: dict[str, Any]
) -> dict[str, Any]:
    events = Events()
    nc = await _connect(url, "bench-dynamo-ingest-bare", events)
    received = 0

    async def cb(_msg: Any) -> None:
        nonlocal received
        received += 1

    await nc.subscribe(dynamo.forward_pass_metrics, cb=cb)
    await nc.flush()
    go = asyncio.ensure_future(pub.ask("go"))
    window = await observe(lambda: received, prepared["prepared"], go)
    published = await go
    disconnects = events.disconnects
    if not nc.is_closed:
        await nc.drain()
    return {"published": published, "window": window, "events": events, "disconnects": disconnects}


async def measure(
    consumer: Consumer, url: str, dynamo: DynamoSubjects, pub: Publisher, n: int, log_file: Path
) -> dict[str, Any]:
    prepared = await pub.ask(f"prepare {n}")
    slow_before = _slow_consumer_lines(log_file)
    gc.collect()
    out = await (run_actor if consumer == "actor" else run_bare)(url, dynamo, pub, prepared)
    window: Window = out["window"]
    published = out["published"]
    return {
        "consumer": consumer,
        "messages": n,
        "payload_bytes_mean": round(prepared["bytes"] / n, 1),
        "received": window.received,
        "lost": published["published"] - window.received,
        "rate_per_s": round(window.rate),
        "seconds": round(window.seconds, 4),
        "cpu_us_per_msg": round(1e6 * window.cpu_seconds / max(window.last_count - window.first_count, 1), 2),
        "publisher_rate_per_s": round(published["published"] / published["seconds"]),
        # The publisher finished first: the consumer had messages waiting until its end.
        "publisher_done_first": published["started"] + published["seconds"] < window.last_at,
        "slow_consumer_server_log": _slow_consumer_lines(log_file) - slow_before,
        "client_errors": out["events"].errors[:5],
        "disconnects_before_drain": out["disconnects"],
        **({"checks": out["checks"]} if "checks" in out else {}),
    }


async def bench(args: argparse.Namespace, url: str, log_file: Path) -> dict[str, Any]:
    dynamo = DynamoSubjects(f"bench{secrets.token_hex(4)}")
    pub = await start_publisher(url, dynamo.namespace, args.workers, args.seed)
    runs: list[dict[str, Any]] = []
    try:
        warmup = [
            await measure(consumer, url, dynamo, pub, min(WARMUP_MESSAGES, args.messages), log_file)
            for consumer in ("actor", "bare")
        ]
        for r in range(args.rounds):
            order: tuple[Consumer, Consumer] = ("actor", "bare") if r % 2 == 0 else ("bare", "actor")
            for consumer in order:
                result = await measure(consumer, url, dynamo, pub, args.messages, log_file)
                runs.append({"round": r + 1, **result})
                print(
                    f"round {r + 1} {consumer}: {result['rate_per_s']:,}/s, lost {result['lost']}, "
                    f"publisher {result['publisher_rate_per_s']:,}/s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        code = await pub.stop()
    if code:
        raise RuntimeError(f"publisher exited with {code}")
    return {"subject": dynamo.forward_pass_metrics, "warmup": warmup, "runs": runs}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def of(consumer: Consumer, key: str) -> list[Any]:
        return [run[key] for run in runs if run["consumer"] == consumer]

    rates = {c: of(c, "rate_per_s") for c in ("actor", "bare")}
    cpu = {c: statistics.median(of(c, "cpu_us_per_msg")) for c in ("actor", "bare")}
    medians = {c: statistics.median(rates[c]) for c in ("actor", "bare")}
    by_round: dict[int, dict[str, int]] = {}
    for run in runs:
        by_round.setdefault(run["round"], {})[run["consumer"]] = run["rate_per_s"]
    return {
        **{
            c: {
                "median_rate_per_s": round(medians[c]),
                "rates_per_s": rates[c],
                "median_cpu_us_per_msg": cpu[c],
            }
            for c in ("actor", "bare")
        },
        "ratio_actor_to_bare": round(medians["actor"] / medians["bare"], 3) if medians["bare"] else 0.0,
        "ratio_per_round": [round(r["actor"] / r["bare"], 3) for _, r in sorted(by_round.items())],
        # The same ratio from CPU time per message: less sensitive to what else the 2 cores run.
        "cpu_ratio_bare_to_actor": round(cpu["bare"] / cpu["actor"], 3) if cpu["actor"] else 0.0,
        "lost_total": sum(run["lost"] for run in runs),
        "slow_consumer_events": sum(run["slow_consumer_server_log"] for run in runs),
        "disconnects": sum(run["disconnects_before_drain"] for run in runs),
        "actor_checks_pass": all(
            run["checks"]["registry_match"] for run in runs if run["consumer"] == "actor"
        ),
        "publisher_done_first_in_every_run": all(run["publisher_done_first"] for run in runs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=150_000, help="messages per run")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (each runs both consumers)")
    parser.add_argument("--workers", type=int, default=48, help=f"Dynamo worker ids (1-{MAX_WORKERS})")
    parser.add_argument("--seed", type=int, default=20261203, help="seed of the publisher's figures")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    parser.add_argument("--publisher", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--ns", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.publisher:
        return publisher(args.publisher, args.ns, args.workers, args.seed)
    if args.messages < 1 or args.rounds < 1:
        parser.error("--messages and --rounds must be ≥ 1")
    if not 1 <= args.workers <= MAX_WORKERS:
        parser.error(f"--workers must be 1-{MAX_WORKERS} (the worker registry's bound)")
    configure_logging(stream=sys.stderr, level="warning")
    started = time.perf_counter()
    with NatsServer() as server:
        measured = asyncio.run(bench(args, server.url, server.log_file))
    summary = summarize(measured["runs"])
    ratio = summary["ratio_actor_to_bare"]
    report = {
        "benchmark": "Dynamo ForwardPassMetrics ingest: DynamoSource actor vs a bare nats-py subscriber",
        "command": " ".join(
            [".venv/bin/python bench/dynamo_ingest.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "subject": measured["subject"],
        "messages_per_run": args.messages,
        "rounds": args.rounds,
        "workers": args.workers,
        "machine": _versions(),
        "summary": summary,
        "targets": {
            "ratio_min": TARGET_RATIO,
            "ratio": ratio,
            "ratio_margin": round(ratio / TARGET_RATIO, 3),
        },
        "targets_met": ratio >= TARGET_RATIO and summary["lost_total"] == 0 and summary["actor_checks_pass"],
        "runs": measured["runs"],
        "warmup": measured["warmup"],
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
