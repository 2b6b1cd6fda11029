"""Ingest rate of the DemandProfiler actor, against a bare nats-py subscriber on the same server and stream.

A real ``nats-server`` (:class:`agent.runtime.nats_server.NatsServer`, default limits, fresh random
namespace) and a publisher in a separate process (this script with ``--publisher``): ``--workers`` GPU
workers (default 48, over the ``gcp-2026-07`` catalog's types and zones, a mix of tiers) report
:class:`schemas.WorkerMetrics` on ``{ns}.evt.worker.metrics.{worker_id}`` (subjects from
:class:`agent.subjects.Subjects`), JSON-encoded as a worker sends them (fresh ``msg_id``, ``sent_at`` now,
5-second counters with realistic request, token, queue and KV-cache figures; about 490 bytes). Before each
run the publisher encodes ``--messages`` of them (default 150,000) into ``PUB`` frames; on ``go`` it writes
them to its socket as fast as the server takes them, then PINGs and waits for the PONG (the server has read
every message) and reports. It speaks the NATS protocol on a plain socket rather than through nats-py, so
that its own per-message Python cost does not take the core the server and the consumer need (2 cores);
the server's flow control (it stalls a fast producer while a subscriber's backlog is large) keeps the
consumer under its limit of pending bytes, and slow-consumer reports are counted, not assumed away.

Two consumers, each on its own nats-py connection, never at the same time:

- ``actor``: :class:`agent.actors.profiler.DemandProfilerActor` run through its real ``Actor.run`` with a
  real :class:`agent.bus.Bus` and :class:`agent.runtime.clock.RealClock` (bins and profiler from the default
  ``ProfilerSettings``): every message decoded and validated, added to its demand bin and counted in
  ``costagent_messages_handled``.
- ``bare``: ``nc.subscribe(subject, cb=...)`` whose callback only counts.

After one untimed warm-up run of each (20,000 messages), each of ``--rounds`` rounds (default 5) runs both,
one after the other, alternating which goes first (``actor, bare``, then ``bare, actor``, ...). A
consumer's count (the handled counter, or the bare callback's count) is sampled every 2 ms; its rate is the
messages handled between the first sample that saw one and the sample that saw the last, divided by the
time between the two (the consumer process's CPU time over the same span gives CPU µs per message). A run
ends when every published message was handled, or when nothing arrived for 3 s after the publisher finished
(the difference is then reported as lost). Each actor run checks its demand bins (every report recorded,
request totals equal to what was published), rejected messages (none expected) and the late-report count;
every run counts slow-consumer lines in the server log, client errors and disconnects. Shutdown is
drain-first (stop event, ``nc.drain()``, then the actor's task).

Figures: per-run rates, medians over the rounds, actor ÷ bare (of the medians, and per round), the same
ratio from CPU time per message, messages lost, whether the publisher finished before each consumer (so
the consumer always had messages waiting and its rate is a capacity), the machine and versions.
Targets: the actor ≥ 50,000 messages/s and ≥ 0.6 of the bare subscriber's rate (medians); ``targets_met``
also needs nothing lost and every actor run's checks to pass.

``bench/dynamo_ingest.py`` measures Dynamo's ForwardPassMetrics the same way, with this file's harness
(``serve_publisher``, ``drive_actor``, ``timed_run``, ``alternate``, ``summarize``, ``report``).

Run: ``.venv/bin/python bench/ingest.py`` (``--messages N``, ``--rounds R``, ``--workers W``, ``--seed S``,
``--out PATH`` to also write the JSON to a file); prints one JSON object, progress goes to stderr. About
20 s on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import json
import os
import platform
import random
import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
import nats
from nats.aio.client import Client as NATS

from agent.actors.profiler import DemandProfilerActor
from agent.bus import Bus, settle
from agent.config import ProfilerSettings, resolve_catalog
from agent.core.demand_bins import DemandBins
from agent.runtime.actor import Actor
from agent.runtime.clock import RealClock
from agent.runtime.logs import configure_logging
from agent.runtime.metrics import AgentMetrics
from agent.runtime.nats_server import NatsServer, find_nats_server
from agent.subjects import Subjects
from schemas import WorkerMetrics, new_msg_id, tag_of

TARGET_RATE = 50_000.0
TARGET_RATIO = 0.6
WARMUP_MESSAGES = 20_000
POLL_S = 0.002
IDLE_S = 3.0  # nothing handled for this long after the publisher finished: the rest is lost
RUN_TIMEOUT_S = 60.0
CATALOG = "gcp-2026-07"
TIERS: tuple[Literal["reserved", "spot", "ondemand"], ...] = ("reserved", "spot", "spot", "ondemand")

Consumer = Literal["actor", "bare"]


# --- the publisher (a separate process) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Worker:
    worker_id: str
    instance_id: str
    instance_type: str
    pool: str
    tier: Literal["reserved", "spot", "ondemand"]
    subject: str
    kv_blocks_total: int


def fleet(subjects: Subjects, count: int, rng: random.Random) -> list[Worker]:
    pools = resolve_catalog(CATALOG).pools()
    workers = []
    for i in range(count):
        itype, pool = pools[i % len(pools)]
        worker_id = f"{itype}-{pool}-w{i:03d}"
        workers.append(
            Worker(
                worker_id=worker_id,
                instance_id=f"gke-serve-{pool}-{rng.getrandbits(32):08x}",
                instance_type=itype,
                pool=pool,
                tier=TIERS[i % len(TIERS)],
                subject=subjects.worker_metrics(worker_id),
                kv_blocks_total=rng.choice((32_768, 65_536)),
            )
        )
    return workers


def encode_batch(
    workers: list[Worker], count: int, rng: random.Random
) -> tuple[list[tuple[str, bytes]], dict[str, int]]:
    """``count`` reports, round-robin over the workers, each a 5-second interval ending now."""
    encoder = msgspec.json.Encoder()
    batch: list[tuple[str, bytes]] = []
    requests = prompt = output = size = 0
    now = time.time()
    for i in range(count):
        w = workers[i % len(workers)]
        done = rng.randint(5, 60)
        m = WorkerMetrics(
            msg_id=new_msg_id(),
            sent_at=now,
            source=w.worker_id,
            worker_id=w.worker_id,
            instance_id=w.instance_id,
            instance_type=w.instance_type,
            pool=w.pool,
            tier=w.tier,
            interval_s=5.0,
            requests_completed=done,
            prompt_tokens=done * rng.randint(300, 3000),
            output_tokens=done * rng.randint(80, 900),
            in_flight=rng.randint(0, 96),
            queued=rng.randint(0, 12),
            kv_blocks_used=rng.randint(0, w.kv_blocks_total),
            kv_blocks_total=w.kv_blocks_total,
        )
        payload = encoder.encode(m)
        batch.append((w.subject, payload))
        requests += done
        prompt += m.prompt_tokens
        output += m.output_tokens
        size += len(payload)
    return batch, {"requests": requests, "prompt_tokens": prompt, "output_tokens": output, "bytes": size}


def _reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class RawPublisher:
    """A NATS client that only publishes: pre-built ``PUB`` frames written in large chunks to a socket.

    Python's per-message cost of a client library would otherwise take a core that the server and the
    consumer under test need (the machine has 2). ``flush`` is a PING answered by PONG: the server has
    then read every message before it.
    """

    def __init__(self, url: str) -> None:
        parsed = urlsplit(url)
        self.sock = socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 4222))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""
        info = self._line()
        if not info.startswith(b"INFO "):
            raise RuntimeError(f"not a NATS server: {info[:80]!r}")
        options = {"verbose": False, "pedantic": False, "name": "bench-ingest-publisher", "protocol": 1}
        self.sock.sendall(b"CONNECT " + json.dumps(options).encode() + b"\r\n")
        self.flush()

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("server closed the publisher's connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def flush(self) -> None:
        self.sock.sendall(b"PING\r\n")
        while True:
            line = self._line()
            if line == b"PONG":
                return
            if line == b"PING":
                self.sock.sendall(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                raise RuntimeError(f"server: {line.decode(errors='replace')}")

    def close(self) -> None:
        self.sock.close()


def frames(batch: list[tuple[str, bytes]], chunk_bytes: int = 1 << 20) -> list[bytes]:
    """The batch as ``PUB`` frames joined into chunks of about ``chunk_bytes``."""
    chunks: list[bytes] = []
    parts: list[bytes] = []
    size = 0
    for subject, payload in batch:
        parts.append(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload))
        size += len(parts[-1])
        if size >= chunk_bytes:
            chunks.append(b"".join(parts))
            parts, size = [], 0
    if parts:
        chunks.append(b"".join(parts))
    return chunks


def publisher(url: str, ns: str, workers: int, seed: int) -> int:
    rng = random.Random(seed)
    team = fleet(Subjects(ns), workers, rng)
    return serve_publisher(url, lambda n: encode_batch(team, n, rng))


def serve_publisher(
    url: str, prepare: Callable[[int], tuple[list[tuple[str, bytes]], dict[str, Any]]]
) -> int:
    """Serve ``prepare N`` / ``go`` / ``quit`` lines from stdin, one JSON line of answer each: ``prepare``
    gives N (subject, payload) messages and what to add to its answer."""
    conn = RawPublisher(url)
    chunks: list[bytes] = []
    count = 0
    try:
        for line in sys.stdin:
            words = line.split()
            if not words or words[0] == "quit":
                break
            if words[0] == "prepare":
                batch, totals = prepare(int(words[1]))
                chunks, count = frames(batch), len(batch)
                _reply({"prepared": count, **totals})
            elif words[0] == "go":
                started = time.monotonic()
                for chunk in chunks:
                    conn.sock.sendall(chunk)
                conn.flush()
                seconds = time.monotonic() - started
                _reply({"published": count, "seconds": seconds, "started": started})
                chunks, count = [], 0
    finally:
        conn.close()
    return 0


# --- the consumers (this process) --------------------------------------------------------------------------


class Publisher:
    """The publisher process, driven over its stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        if proc.stdin is None or proc.stdout is None:
            raise RuntimeError("publisher started without pipes")
        self.proc = proc
        self.stdin = proc.stdin
        self.stdout = proc.stdout

    @classmethod
    async def start(cls, url: str, ns: str, workers: int, seed: int, script: str = __file__) -> Publisher:
        """``script --publisher`` (this one's, or another bench's that serves the same protocol)."""
        args = [script, "--publisher", url, "--ns", ns, "--workers", str(workers), "--seed", str(seed)]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        return cls(proc)

    async def ask(self, line: str) -> dict[str, Any]:
        self.stdin.write(line.encode() + b"\n")
        await self.stdin.drain()
        answer = await self.stdout.readline()
        if not answer:
            raise RuntimeError(f"publisher exited (code {await self.proc.wait()})")
        reply: dict[str, Any] = json.loads(answer)
        return reply

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.stdin.write(b"quit\n")
            await self.stdin.drain()
            self.stdin.close()
            # asyncio.wait, not wait_for (CONVENTIONS.md: wait_for can swallow a cancellation on 3.11).
            exited = asyncio.ensure_future(self.proc.wait())
            await asyncio.wait({exited}, timeout=10.0)
            if not exited.done():
                self.proc.kill()
                await exited
        return self.proc.returncode or 0


@dataclass(slots=True)
class Events:
    """What the consumer connection reported while it ran."""

    errors: list[str] = field(default_factory=list)
    disconnects: int = 0

    async def on_error(self, err: Exception) -> None:
        self.errors.append(f"{type(err).__name__}: {err}")

    async def on_disconnect(self) -> None:
        self.disconnects += 1


@dataclass(frozen=True, slots=True)
class Window:
    received: int
    first_count: int
    last_count: int
    seconds: float
    cpu_seconds: float  # of this process (the consumer) between the same two samples
    last_at: float  # time.monotonic() of the last sample that saw a new message

    @property
    def rate(self) -> float:
        return (self.last_count - self.first_count) / self.seconds if self.seconds > 0 else 0.0


async def observe(count: Callable[[], float], expected: int, go: asyncio.Future[dict[str, Any]]) -> Window:
    """Sample ``count`` every POLL_S while the publisher runs, until ``expected`` or nothing more comes."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    base = int(count())
    last = 0
    first_t = last_t = last_change = began
    first_cpu = last_cpu = 0.0
    first_c = 0
    while True:
        await asyncio.sleep(POLL_S)
        now = loop.time()
        seen = int(count()) - base
        if seen != last:
            if last == 0:
                first_t, first_c, first_cpu = now, seen, time.process_time()
            last_t, last, last_change, last_cpu = now, seen, now, time.process_time()
        if seen >= expected or now - began > RUN_TIMEOUT_S:
            break
        if go.done() and now - last_change > IDLE_S:
            break
    return Window(
        received=last,
        first_count=first_c,
        last_count=last,
        seconds=last_t - first_t,
        cpu_seconds=last_cpu - first_cpu,
        last_at=last_t,
    )


async def _connect(url: str, name: str, events: Events) -> NATS:
    return await nats.connect(
        url,
        name=name,
        allow_reconnect=False,
        error_cb=events.on_error,
        disconnected_cb=events.on_disconnect,
    )


async def run_actor(url: str, subjects: Subjects, pub: Publisher, n: int) -> dict[str, Any]:
    events = Events()
    nc = await _connect(url, "bench-ingest-actor", events)
    clock = RealClock()
    metrics = AgentMetrics()
    bus = Bus(nc, subjects, source="bench-ingest", clock=clock, metrics=metrics)
    settings = ProfilerSettings()
    bins = DemandBins(
        bin_seconds=settings.bin_minutes * 60.0,
        close_delay_s=settings.close_delay_seconds,
        stale_after_s=settings.stale_after_seconds,
    )
    actor = DemandProfilerActor(bus, clock, settings.build(), bins)
    labels = {
        "actor": actor.name,
        "subject": subjects.label(subjects.worker_metrics_all),
        "type": tag_of(WorkerMetrics),
    }
    registry = metrics.registry

    def handled() -> float:  # about 6 µs, every 2 ms
        return registry.get_sample_value("costagent_messages_handled_total", labels) or 0.0

    out = await drive_actor(actor, events, handled, pub, n)
    workers_seen = bins.workers
    closed = bins.close_due(clock.now() + 10 * 86_400.0)  # every open bin, to read what was recorded
    out["checks"] = {
        "handled_counter": int(handled()),
        "rejected": rejected_total(metrics),
        "late_reports": int(registry.get_sample_value("costagent_profiler_late_reports_total") or 0),
        "bin_reports": sum(c.reports for c in closed),
        "bin_requests": int(sum(c.requests for c in closed)),
        "workers_seen": workers_seen,
    }
    return out


async def drive_actor(
    actor: Actor, events: Events, handled: Callable[[], float], pub: Publisher, n: int
) -> dict[str, Any]:
    """Run ``actor`` on its bus until the publisher's ``n`` messages are handled (or stop coming), sampling
    ``handled``; then stop it drain-first (CONVENTIONS.md: stop event, drain, await it, cancel only after
    a grace period)."""
    nc = actor.bus.nc
    stop = asyncio.Event()
    task = asyncio.ensure_future(actor.run(stop))
    ready = asyncio.ensure_future(actor.ready.wait())
    await asyncio.wait({task, ready}, timeout=10.0, return_when=asyncio.FIRST_COMPLETED)
    if not actor.ready.is_set():
        ready.cancel()
        if task.done():
            task.result()  # the actor's own error
        raise RuntimeError(f"{actor.name} actor did not get ready")
    go = asyncio.ensure_future(pub.ask("go"))
    window = await observe(handled, n, go)
    published = await go
    disconnects = events.disconnects
    stop.set()
    if not nc.is_closed:
        await nc.drain()
    done, _ = await asyncio.wait({task}, timeout=5.0)
    if not done:
        task.cancel()
        raise RuntimeError(f"{actor.name} actor did not stop within 5 s of drain")
    task.result()
    return {"published": published, "window": window, "errors": events.errors, "disconnects": disconnects}


def rejected_total(metrics: AgentMetrics) -> int:
    """Messages the bus dropped, every reason."""
    return int(
        sum(
            s.value
            for family in metrics.messages_rejected.collect()
            for s in family.samples
            if s.name.endswith("_total")
        )
    )


async def run_bare(url: str, subject: str, pub: Publisher, n: int) -> dict[str, Any]:
    """A subscriber to ``subject`` that only counts, on a connection of its own."""
    events = Events()
    nc = await _connect(url, "bench-ingest-bare", events)
    received = 0

    async def cb(_msg: Any) -> None:
        nonlocal received
        received += 1

    await nc.subscribe(subject, cb=cb)
    await settle(nc)
    go = asyncio.ensure_future(pub.ask("go"))
    window = await observe(lambda: received, n, go)
    published = await go
    disconnects = events.disconnects
    if not nc.is_closed:
        await nc.drain()
    return {
        "published": published,
        "window": window,
        "errors": events.errors,
        "disconnects": disconnects,
        "checks": {},
    }


def _slow_consumer_lines(log_file: Path) -> int:
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if "slow consumer" in line.lower())


async def measure(
    consumer: Consumer, url: str, subjects: Subjects, pub: Publisher, n: int, log_file: Path
) -> dict[str, Any]:
    prepared, result = await timed_run(
        consumer,
        lambda _: run_actor(url, subjects, pub, n),
        url,
        subjects.worker_metrics_all,
        pub,
        n,
        log_file,
    )
    if consumer == "actor":
        checks = result["checks"]
        checks["bins_match"] = (
            checks["handled_counter"] == result["received"] == checks["bin_reports"]
            and checks["rejected"] == 0
            and (result["received"] < n or checks["bin_requests"] == prepared["requests"])
        )
    return result


async def timed_run(
    consumer: Consumer,
    run_actor: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
    url: str,
    subject: str,
    pub: Publisher,
    n: int,
    log_file: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The publisher prepares ``n`` messages on ``subject``; the consumer takes them in (the actor through
    ``run_actor``, given the publisher's answer; the bare subscriber on ``subject``). Its figures, with
    the server's slow-consumer reports over the run. Returns (prepared, result)."""
    prepared = await pub.ask(f"prepare {n}")
    slow_before = _slow_consumer_lines(log_file)
    gc.collect()
    out = await (run_actor(prepared) if consumer == "actor" else run_bare(url, subject, pub, n))
    window: Window = out["window"]
    published = out["published"]
    checks: dict[str, Any] = out.get("checks", {})
    publisher_done = published["started"] + published["seconds"]
    return prepared, {
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
        "publisher_done_first": publisher_done < window.last_at,
        "slow_consumer_server_log": _slow_consumer_lines(log_file) - slow_before,
        "client_errors": out["errors"][:5],
        "disconnects_before_drain": out["disconnects"],
        **({"checks": checks} if checks else {}),
    }


def _versions() -> dict[str, object]:
    affinity = getattr(os, "sched_getaffinity", None)
    server = subprocess.run(
        [str(find_nats_server()), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(affinity(0)) if affinity else None,
        "nats_py": importlib.metadata.version("nats-py"),
        "msgspec": importlib.metadata.version("msgspec"),
        "prometheus_client": importlib.metadata.version("prometheus-client"),
        "nats_server": server,
    }


async def bench(args: argparse.Namespace, url: str, log_file: Path) -> dict[str, Any]:
    subjects = Subjects(f"bench-ingest-{secrets.token_hex(4)}")
    pub = await Publisher.start(url, subjects.ns, args.workers, args.seed)

    async def one(consumer: Consumer, n: int) -> dict[str, Any]:
        return await measure(consumer, url, subjects, pub, n, log_file)

    warmup, runs = await alternate(pub, one, args.rounds, args.messages, WARMUP_MESSAGES)
    return {"namespace": subjects.ns, "warmup": warmup, "runs": runs}


async def alternate(
    pub: Publisher,
    measure: Callable[[Consumer, int], Awaitable[dict[str, Any]]],
    rounds: int,
    messages: int,
    warmup_messages: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """An untimed warm-up run of each consumer, then ``rounds`` rounds of both, alternating which goes
    first; the publisher is stopped at the end. Returns (warm-up runs, runs)."""
    runs: list[dict[str, Any]] = []
    try:
        warmup = [await measure(consumer, warmup_messages) for consumer in ("actor", "bare")]
        for r in range(rounds):
            order: tuple[Consumer, Consumer] = ("actor", "bare") if r % 2 == 0 else ("bare", "actor")
            for consumer in order:
                result = await measure(consumer, messages)
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
    return warmup, runs


def summarize(runs: list[dict[str, Any]], check: str = "bins_match") -> dict[str, Any]:
    """Medians and ratios over the rounds; ``check`` names the actor runs' pass/fail check."""
    rates: dict[str, list[int]] = {"actor": [], "bare": []}
    cpu: dict[str, list[float]] = {"actor": [], "bare": []}
    by_round: dict[int, dict[str, int]] = {}
    for run in runs:
        rates[run["consumer"]].append(run["rate_per_s"])
        cpu[run["consumer"]].append(run["cpu_us_per_msg"])
        by_round.setdefault(run["round"], {})[run["consumer"]] = run["rate_per_s"]
    actor = statistics.median(rates["actor"])
    bare = statistics.median(rates["bare"])
    actor_cpu = statistics.median(cpu["actor"])
    bare_cpu = statistics.median(cpu["bare"])
    return {
        "actor": {
            "median_rate_per_s": round(actor),
            "rates_per_s": rates["actor"],
            "median_cpu_us_per_msg": actor_cpu,
        },
        "bare": {
            "median_rate_per_s": round(bare),
            "rates_per_s": rates["bare"],
            "median_cpu_us_per_msg": bare_cpu,
        },
        "ratio_actor_to_bare": round(actor / bare, 3) if bare else 0.0,
        "ratio_per_round": [round(r["actor"] / r["bare"], 3) for _, r in sorted(by_round.items())],
        # The same ratio from CPU time per message: less sensitive to what else the 2 cores run.
        "cpu_ratio_bare_to_actor": round(bare_cpu / actor_cpu, 3) if actor_cpu else 0.0,
        "lost_total": sum(run["lost"] for run in runs),
        "slow_consumer_events": sum(run["slow_consumer_server_log"] for run in runs),
        "disconnects": sum(run["disconnects_before_drain"] for run in runs),
        "actor_checks_pass": all(run["checks"][check] for run in runs if run["consumer"] == "actor"),
        "publisher_done_first_in_every_run": all(run["publisher_done_first"] for run in runs),
    }


def arguments(doc: str | None, seed: int, workers_help: str) -> argparse.ArgumentParser:
    """The options of an ingest bench (and the hidden ones of its publisher process)."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=150_000, help="messages per run")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (each runs both consumers)")
    parser.add_argument("--workers", type=int, default=48, help=workers_help)
    parser.add_argument("--seed", type=int, default=seed, help="seed of the publisher's figures")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    parser.add_argument("--publisher", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--ns", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, 20260730, "distinct worker ids (subjects)")
    args = parser.parse_args(argv)
    if args.publisher:
        return publisher(args.publisher, args.ns, args.workers, args.seed)
    if args.messages < 1 or args.rounds < 1 or args.workers < 1:
        parser.error("--messages, --rounds and --workers must be ≥ 1")
    started = time.perf_counter()
    measured = on_local_server(bench, args)
    summary = summarize(measured["runs"])
    actor_rate = summary["actor"]["median_rate_per_s"]
    ratio = summary["ratio_actor_to_bare"]
    targets = {
        "actor_rate_min_per_s": TARGET_RATE,
        "actor_rate_per_s": actor_rate,
        "actor_rate_margin": round(actor_rate / TARGET_RATE, 3),
        "ratio_min": TARGET_RATIO,
        "ratio": ratio,
        "ratio_margin": round(ratio / TARGET_RATIO, 3),
    }
    met = (
        actor_rate >= TARGET_RATE
        and ratio >= TARGET_RATIO
        and summary["lost_total"] == 0
        and summary["actor_checks_pass"]
    )
    name = "worker-metrics ingest: DemandProfilerActor vs a bare nats-py subscriber"
    emit(report(name, __file__, argv, args, measured, summary, targets, met, started), args.out)
    return 0


def report(
    benchmark: str,
    script: str,
    argv: list[str] | None,
    args: argparse.Namespace,
    measured: dict[str, Any],
    summary: dict[str, Any],
    targets: dict[str, Any],
    met: bool,
    started: float,
) -> dict[str, Any]:
    """The JSON report of an ingest bench; what ``bench`` measured besides its runs goes after the
    command."""
    return {
        "benchmark": benchmark,
        "command": " ".join(
            [f".venv/bin/python bench/{Path(script).name}", *(sys.argv[1:] if argv is None else argv)]
        ),
        **{k: v for k, v in measured.items() if k not in ("runs", "warmup")},
        "messages_per_run": args.messages,
        "rounds": args.rounds,
        "workers": args.workers,
        "machine": _versions(),
        "summary": summary,
        "targets": targets,
        "targets_met": met,
        "runs": measured["runs"],
        "warmup": measured["warmup"],
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def on_local_server(
    bench: Callable[[argparse.Namespace, str, Path], Awaitable[dict[str, Any]]], args: argparse.Namespace
) -> dict[str, Any]:
    """``bench(args, url, server log)`` on a fresh local nats-server; the agent logs warnings to stderr."""
    configure_logging(stream=sys.stderr, level="warning")
    with NatsServer() as server:
        return asyncio.run(bench(args, server.url, server.log_file))


def emit(report: dict[str, Any], out: Path | None) -> None:
    """The report as JSON on stdout, and in ``out`` too when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
