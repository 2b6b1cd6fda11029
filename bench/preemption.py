"""Spot preemption end to end over NATS: notice → first commands, and what becomes of every request.

Each run is a fresh world (its own namespace) on one local nats-server, assembled like
``tests/actors/test_preemption.py``: the real agent (``agent.service.build_agent``, all five actors),
emulated GPU workers (``agent.sim.worker``) and an emulated router (``agent.sim.router``) on a scaled
clock. A spot node ``node-spot`` is given N requests through the router (64 and 256 on one h100_8x
worker; 1,024 on four h100_8x workers of 256 each — the DrainOrder covers every worker of the instance)
while the clock runs at 1× (the emulators take up to a real second to admit 1,024: at 20× the first would
be 20 clock seconds older than the last); from then on it runs at ``--speed`` (20× by default: a 120 s
notice lasts 6 real seconds). The survivors join, each on a node of its own: ``ample`` (max(1, N/256)
h100_8x and one a100_8x, on-demand, empty: a free slot for every request) or ``limited`` (one a100-class
worker with N/4 slots: an a100_8x's per-sequence decode rate and prefill rate). After ``WARMUP_S`` clock
seconds (prompts prefilled, decoding under way) the simulated cloud publishes a terminate notice (120 s
or 30 s) and the spot workers are set to die at its deadline, losing whatever is still on them. The
emulators step every 10 real ms; workers report metrics every real second (20 clock seconds at 20×) and
the router waits 5 real seconds for a worker's answer: at the test's 5 clock seconds and 1 s, a busy
process (1,024 requests) had the agent take a worker for lost (3 missed reports: 0.75 real s at 20×) and
the router mark workers unresponsive. ``spurious_drains`` counts drains ordered for a worker taken for lost.

Requests: prompts and prefix blocks from ``make_requests`` of ``bench/preemption_plans.py`` (lognormal
around 900 tokens, 70% behind one of six shared system prompts, 16-token blocks); total outputs lognormal
around 900 tokens, kept within 500-1,600, so that every request is still in flight at the notice and
the tokens left span both sides of what a 30 s notice lets finish in place (25 s × 31.25 tokens/s ≈
780). The same requests (``--seed``) for every policy of a scenario.

Per scenario and policy — ``deadline`` (the default) against the seed's ``migrate_top_n`` and
``let_short_finish`` — requests in flight at the notice (router; and as the agent read them), what the
MigrationReport says became of them (finished in place / KV-moved / re-prefilled / requeued, and failed
actions retried another way), **lost as the router counts them** (``RouterEmulator.summary()["lost"]``
once every request has ended; ``not_ended`` counts any that never did), tokens recomputed, bytes moved,
completion (the report's last action) in clock seconds before the deadline, when the last request ended,
the optimizer's solve time on the notice, and notice → all first commands. When requests still wait for a
slot at the deadline (a ``limited`` fleet), a replacement (max(1, N/256) h100_8x) joins then, as the
optimizer woken by the notice would order: it only shortens the wait for the last requests to end;
nothing can be lost or saved after the deadline.

Latency: notice → all first commands in real milliseconds = (``first_commands_at`` of the report − clock
time the notice was published) / speed × 1000 (the clock is ``time.time()`` scaled: sub-millisecond).
Measured directly too, out of process: a sniffer (this script with ``--sniff``) notes ``perf_counter``
(CLOCK_MONOTONIC, the same clock in every process) when each spot worker receives its first command
after the notice (``cancel`` or ``transfer_kv`` begins a move; a plan without one goes straight to
``hot_blocks``), and when the coordinator's ``stop_routing`` — its first act — went by
(``drain_started_wire_ms``). Each grid run gives one sample per scenario and policy (``--grid-repeats``
for more); the headline scenario (30 s notice, ample survivors, ``deadline`` policy: the most moves to plan
at each size) runs ``--repeats`` more times per size, sizes interleaved, stopped once its report is in.

Targets: notice → first commands p99 ≤ 50 ms at 256 requests; 0 lost (router) for the ``deadline``
policy in every scenario. On 2 noisy cores: medians and p99 over repeats, compared within one run.

Run: ``.venv/bin/python bench/preemption.py`` (about 3 minutes; ``--quick``: 30 s notice with ample
survivors only and 5 repeats, about a minute; ``--all`` adds the 120 s notice with limited survivors;
``--repeats N``, ``--grid-repeats N``, ``--seed S``, ``--speed X``, ``--out PATH`` to also write the JSON
to a file). Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import math
import os
import platform
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgspec
import nats
import numpy as np
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from preemption_plans import make_requests

from agent.bus import Bus, settle
from agent.config import BusSettings, MigrationSettings, Settings, resolve_catalog
from agent.core.catalog import InstanceType
from agent.core.drain import POLICIES, DrainPolicy
from agent.runtime.metrics import AgentMetrics
from agent.runtime.nats_server import NatsServer
from agent.service import Agent, build_agent
from agent.sim.router import RouterEmulator
from agent.sim.worker import WorkerEmulator
from agent.subjects import Subjects
from schemas import MigrationReport, PreemptionNotice, envelope

SCRIPT = str(Path(__file__).resolve())
SEED_CATALOG = resolve_catalog("seed")
START = 1_767_225_600.0  # 2026-01-01 00:00 UTC
GB = 1e9
SIZES = (64, 256, 1024)
# (notice, survivors) per size in the full grid; --quick runs the 30 s notice with ample survivors only.
GRID = ((120.0, "ample"), (30.0, "ample"), (30.0, "limited"))
ALL_GRID = ((120.0, "ample"), (120.0, "limited"), (30.0, "ample"), (30.0, "limited"))  # --all
WORKER_BATCH = 256  # one h100_8x worker holds 256 sequences: 1,024 requests need four on the node
WARMUP_S = 8.0  # clock seconds at --speed between the admissions (at 1×) and the notice: prefill, decode
OUTPUT_TOKENS = (900.0, 0.4, 500, 1_600)  # lognormal median, sigma, min, max
SAME_NODE_BYTES_PER_S = 100 * GB
CROSS_NODE_GBYTES_PER_S = 3.125  # 25 Gbit/s, the agent's default; the emulated links match it
LATENCY_TARGET_MS = 50.0
LATENCY_TARGET_AT = 256
HEADLINE = (30.0, "ample", "deadline")  # the scenario of the extra latency runs
# Real seconds of the emulators' periods, whatever the speed (at 20×: the test's 0.2 s step, 0.5 s retry
# and 5 s metrics interval, in clock seconds).
STEP_REAL_S = 0.01
RETRY_REAL_S = 0.025
METRICS_REAL_S = 1.0  # 20 clock seconds at 20×: the agent declares a worker lost after 3 missed reports,
# 3 real seconds; at the test's 5 clock seconds a busy event loop (1,024 requests) trips it in 0.75 s.
SUBMIT_TIMEOUT_S = 5.0  # the router's wait for a worker's answer (real seconds; the emulator's default 1 s
# marks workers unresponsive while the process is busy)
ADMIT_BATCH = 32  # admissions in flight at once (1,024 at once kept the loop busy past those timeouts)
FIRST_COMMAND_OPS = frozenset({"cancel", "transfer_kv", "hot_blocks"})
"""What the coordinator sends a drained worker once its plan is made: a move begins with ``cancel``
(re-prefill, requeue) or ``transfer_kv``; a plan with no move goes straight to ``hot_blocks``."""


class LogTally:
    """A structlog processor that counts the agent's and emulators' warnings and errors, then drops them."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.shown: set[str] = set()

    def __call__(self, _logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        key = f"{method}:{event.get('event')}"
        self.counts[key] += 1
        if key not in self.shown:  # the first of each kind, for the reader of stderr
            self.shown.add(key)
            print(f"  first {key}: {dict(event)}"[:400], file=sys.stderr, flush=True)
        raise structlog.DropEvent

    def take(self) -> dict[str, int]:
        counts, self.counts = dict(self.counts), Counter()
        return counts


LOGS = LogTally()


@dataclass(frozen=True, slots=True)
class Scenario:
    requests: int
    notice_s: float
    capacity: str

    @property
    def name(self) -> str:
        return f"{self.requests}req/{self.notice_s:.0f}s/{self.capacity}"

    @property
    def spot_workers(self) -> int:
        return max(1, math.ceil(self.requests / WORKER_BATCH))


@dataclass(frozen=True, slots=True)
class Req:
    request_id: str
    prompt_tokens: int
    output_tokens: int
    prefix_blocks: tuple[str, ...]


def make_load(seed: int, n: int) -> list[Req]:
    rng = np.random.default_rng([seed, n])
    base = make_requests(rng, n)  # prompts and prefix blocks; its outputs are too short to be in flight
    median, sigma, lo, hi = OUTPUT_TOKENS
    outputs = np.clip(np.rint(rng.lognormal(math.log(median), sigma, n)), lo, hi).astype(int)
    return [
        Req(r.request_id, r.prompt_tokens, int(out), r.prefix_blocks)
        for r, out in zip(base, outputs, strict=True)
    ]


def limited_type(slots: int) -> InstanceType:
    """An a100_8x with only ``slots`` sequences free for this pool: same per-sequence decode rate and
    prefill rate."""
    a100 = SEED_CATALOG.type("a100_8x")
    per_seq = a100.decode_tokens_per_s / a100.max_batch
    return replace(a100, max_batch=slots, decode_tokens_per_s=per_seq * slots)


async def until(condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.005) -> bool:
    """Wait until ``condition()`` holds (True), or ``timeout_s`` real seconds (False)."""
    end = time.perf_counter() + timeout_s
    while not condition():
        if time.perf_counter() > end:
            return False
        await asyncio.sleep(poll_s)
    return True


class Sniffer:
    """A separate process (this script with ``--sniff URL``) that notes, with ``time.perf_counter`` — the
    system-wide monotonic clock on Linux, comparable between processes — the first command each spot
    worker of each namespace receives. Out of the bench's event loop, so its figure is when the command
    reached the wire (plus a local NATS hop), not when a busy loop got round to reading it."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], float] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self, url: str) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            SCRIPT,
            "--sniff",
            url,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        ready = await self._proc.stdout.readline()
        if ready.strip() != b"ready":
            raise RuntimeError(f"sniffer did not start: {ready!r}")
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            ns, worker, _op, at = line.decode().split()
            self.seen[(ns, worker)] = float(at)

    async def first_commands(self, ns: str, workers: list[str], timeout_s: float) -> float | None:
        """perf_counter when the last of ``workers`` had its first command, or None if one had none."""
        if not await until(lambda: all((ns, w) in self.seen for w in workers), timeout_s, 0.01):
            return None
        return max(self.seen[(ns, w)] for w in workers)

    async def stop(self) -> None:
        if self._proc is None:
            return
        assert self._proc.stdin is not None
        self._proc.stdin.close()  # the sniffer drains its connection and exits
        waiter = asyncio.ensure_future(self._proc.wait())
        done, _ = await asyncio.wait({waiter}, timeout=5)
        if not done:
            self._proc.kill()
            await waiter
        if self._reader is not None:
            await asyncio.wait({self._reader}, timeout=1)


def sniff(url: str) -> int:
    """``--sniff URL``: once a namespace's spot notice has gone by, print ``ns worker op perf_counter`` for
    the first command to each of its spot workers (ignoring what went to them before the notice)."""

    async def go() -> None:
        nc = await nats.connect(url)
        noticed: set[str] = set()
        seen: set[tuple[str, str]] = set()

        async def on_notice(msg: Msg) -> None:
            noticed.add(msg.subject.split(".", 1)[0])

        async def on_stop_routing(msg: Msg) -> None:  # the coordinator's first act of a drain
            at = time.perf_counter()
            ns = msg.subject.split(".", 1)[0]
            if ns in noticed and (ns, "stop_routing") not in seen:
                seen.add((ns, "stop_routing"))
                sys.stdout.write(f"{ns} stop_routing stop_routing {at:.6f}\n")
                sys.stdout.flush()

        async def on_command(msg: Msg) -> None:
            at = time.perf_counter()
            ns, _req, _worker, worker_id, op = msg.subject.split(".")
            if ns in noticed and worker_id.startswith("spot-") and (ns, worker_id) not in seen:
                seen.add((ns, worker_id))
                sys.stdout.write(f"{ns} {worker_id} {op} {at:.6f}\n")
                sys.stdout.flush()

        await nc.subscribe("*.evt.spot.notice.*", cb=on_notice)
        await nc.subscribe("*.cmd.router.stop_routing", cb=on_stop_routing)
        for op in sorted(FIRST_COMMAND_OPS):
            await nc.subscribe(f"*.req.worker.*.{op}", cb=on_command)
        await settle(nc)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the bench is done
        await nc.drain()

    asyncio.run(go())
    return 0


class WarpClock:
    """``ScaledClock``'s time, whose speed is set once more before the notice (:meth:`warp`).

    A world runs at 1× while its requests are admitted — the emulators' admission takes about a real
    second at 1,024 requests, which at 20× would age the first ones by 20 clock seconds, and the notice
    would find some done and the rest in very different states — then at ``--speed`` from the warm-up on:
    the notice, the drain and what follows all see one constant speed, as with ``ScaledClock``."""

    def __init__(self, speed: float, start: float) -> None:
        self.speed = speed
        self._start = start
        self._anchor = time.time()
        self._warped = asyncio.Event()

    def now(self) -> float:
        return self._start + (time.time() - self._anchor) * self.speed

    def real_seconds(self, clock_seconds: float) -> float:
        return clock_seconds / self.speed

    def warp(self, speed: float) -> None:
        """From now on, ``speed`` clock seconds per real second; waiters wake and wait again."""
        real = time.time()
        self._start += (real - self._anchor) * self.speed
        self._anchor = real
        self.speed = speed
        warped, self._warped = self._warped, asyncio.Event()
        warped.set()

    async def wait_until(self, deadline: float, stop: asyncio.Event) -> bool:
        while not stop.is_set():
            remaining = deadline - self.now()
            if remaining <= 0:
                return False
            waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._warped.wait())}
            try:
                await asyncio.wait(waits, timeout=remaining / self.speed, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waits:
                    if not waiter.done():
                        waiter.cancel()
        return True


@dataclass
class World:
    """One agent, one router, workers, on one namespace and one scaled clock."""

    agent: Agent
    bus: Bus
    clock: WarpClock
    router: RouterEmulator
    speed: float
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    workers: dict[str, WorkerEmulator] = field(default_factory=dict)

    @classmethod
    async def open(cls, url: str, policy: DrainPolicy, speed: float) -> World:
        """A world whose clock runs at 1× until :meth:`WarpClock.warp` sets it to ``speed``; the
        emulators' periods are set for ``speed``."""
        ns = f"bench{uuid.uuid4().hex[:12]}"
        clock = WarpClock(1.0, START)
        settings = Settings(
            bus=BusSettings(namespace=ns),
            migration=MigrationSettings(policy=policy, cross_node_gbytes_per_s=CROSS_NODE_GBYTES_PER_S),
        )
        agent_nc = await nats.connect(url)
        agent = build_agent(agent_nc, settings, SEED_CATALOG, clock)
        await agent.start()
        sim_nc = await nats.connect(url)
        bus = Bus(sim_nc, Subjects(ns), source="sim", clock=clock, metrics=AgentMetrics())
        router = RouterEmulator(
            bus, clock, dispatch_retry_s=RETRY_REAL_S * speed, submit_timeout_s=SUBMIT_TIMEOUT_S
        )
        world = cls(agent, bus, clock, router, speed)
        world.tasks.append(asyncio.ensure_future(router.run(world.stop)))
        if not await until(router.ready.is_set, 10):
            raise RuntimeError("router emulator did not start")
        return world

    @property
    def ns(self) -> str:
        return self.bus.subjects.ns

    @property
    def nc(self) -> NATS:
        return self.bus.nc

    async def start_worker(
        self, worker_id: str, instance_id: str, itype: InstanceType, tier: str
    ) -> WorkerEmulator:
        worker = WorkerEmulator(
            self.bus,
            self.clock,
            worker_id=worker_id,
            instance_id=instance_id,
            instance_type=itype,
            pool="default",
            tier=tier,  # type: ignore[arg-type]
            same_node_bytes_per_s=SAME_NODE_BYTES_PER_S,
            cross_node_bytes_per_s=CROSS_NODE_GBYTES_PER_S * GB,
            step_s=STEP_REAL_S * self.speed,
            metrics_interval_s=METRICS_REAL_S * self.speed,
        )
        self.workers[worker_id] = worker
        self.tasks.append(asyncio.ensure_future(worker.run(self.stop)))
        if not await until(worker.ready.is_set, 10):
            raise RuntimeError(f"worker {worker_id} did not start")
        await worker.sync()  # its first metrics: the agent and the router learn of it
        return worker

    async def admit(self, load: list[Req]) -> None:
        for k in range(0, len(load), ADMIT_BATCH):
            await asyncio.gather(
                *(
                    self.router.admit(r.request_id, r.prompt_tokens, r.output_tokens, r.prefix_blocks)
                    for r in load[k : k + ADMIT_BATCH]
                )
            )

    def dispatched(self) -> bool:
        s = self.router.summary()
        return s["waiting"] == 0 and s["dispatching"] == 0

    def known_to_agent(self, instances: set[str]) -> bool:
        registry = self.agent.spot_monitor.registry
        return all(registry.life(i) == "active" for i in instances)

    async def notice(self, instance_id: str, in_s: float) -> tuple[float, float, float]:
        """Publish a terminate notice; the instance's workers die at its deadline.
        Returns (clock time of the notice, its perf_counter, deadline)."""
        now = self.clock.now()
        deadline = now + in_s
        for worker in self.workers.values():
            if worker.instance_id == instance_id:
                worker.kill_at(deadline)
        notice = PreemptionNotice(
            **envelope("sim-cloud", sent_at=now),
            instance_id=instance_id,
            kind="terminate",
            deadline=deadline,
            provider="sim",
            received_at=now,
        )
        data = msgspec.json.encode(notice)
        at = time.perf_counter()
        await self.nc.publish(self.bus.subjects.spot_notice(instance_id), data)
        return now, at, deadline

    async def close(self) -> None:
        self.stop.set()
        await self.agent.stop()  # stop event, drain, grace period
        await self.nc.drain()
        _, pending = await asyncio.wait(self.tasks, timeout=5)
        for task in pending:
            task.cancel()


def solve_seconds(world: World) -> float:
    """The optimizer's solve time so far (the notice wakes it, in the spot monitor's handler)."""
    value = world.agent.bus.metrics.registry.get_sample_value("costagent_optimizer_solve_seconds_sum")
    return value or 0.0


@dataclass
class Run:
    scenario: Scenario
    policy: DrainPolicy
    figures: dict[str, Any]
    latency_ms: float | None
    wire_ms: float | None
    ok: bool


@dataclass(frozen=True, slots=True)
class Env:
    url: str
    speed: float
    sniffer: Sniffer


async def run_once(env: Env, scenario: Scenario, policy: DrainPolicy, load: list[Req], *, serve: bool) -> Run:
    """One world, one notice. ``serve`` (a grid run): wait until every request has ended; else (a latency
    run) stop once the report is in."""
    wall = time.perf_counter()
    LOGS.take()
    world = await World.open(env.url, policy, env.speed)
    try:
        return await _drive(env, world, scenario, policy, load, serve, wall)
    finally:
        await world.close()


async def _drive(
    env: Env, world: World, scenario: Scenario, policy: DrainPolicy, load: list[Req], serve: bool, wall: float
) -> Run:
    n = scenario.requests
    speed = world.speed
    h100 = SEED_CATALOG.type("h100_8x")
    spot_ids = [f"spot-{k}" for k in range(scenario.spot_workers)]
    for wid in spot_ids:
        await world.start_worker(wid, "node-spot", h100, "spot")
    await world.admit(load)
    if not await until(world.dispatched, 20):
        raise RuntimeError(f"{scenario.name}: requests not dispatched: {world.router.summary()}")
    world.clock.warp(speed)
    admitted = world.clock.now()
    instances = {"node-spot"}
    if scenario.capacity == "ample":
        for k in range(max(1, n // WORKER_BATCH)):
            await world.start_worker(f"od-h100-{k}", f"node-od-h100-{k}", h100, "ondemand")
            instances.add(f"node-od-h100-{k}")
        await world.start_worker("od-a100-0", "node-od-a100-0", SEED_CATALOG.type("a100_8x"), "ondemand")
        instances.add("node-od-a100-0")
    else:
        await world.start_worker("od-part-0", "node-od-part-0", limited_type(n // 4), "ondemand")
        instances.add("node-od-part-0")
    if not await until(lambda: world.known_to_agent(instances), 10):
        raise RuntimeError(f"{scenario.name}: the agent does not know every instance")
    reports = await world.nc.subscribe(world.bus.subjects.migration_report("node-spot"))
    await settle(world.nc)
    await world.clock.wait_until(admitted + WARMUP_S, world.stop)
    before = world.router.summary()
    if before["in_flight"] < n:
        progress(f"  {scenario.name}: only {before['in_flight']} of {n} requests in flight at the notice")
    setup_s = time.perf_counter() - wall

    solved_before = solve_seconds(world)
    notice_clock, notice_perf, deadline = await world.notice("node-spot", scenario.notice_s)
    msg = await reports.next_msg(timeout=scenario.notice_s / speed + 30)
    report_perf = time.perf_counter()
    report = msgspec.json.decode(msg.data, type=MigrationReport)
    latency_ms = (report.first_commands_at - notice_clock) / speed * 1e3
    first_wire = await env.sniffer.first_commands(world.ns, spot_ids, 2.0)
    wire_ms = None if first_wire is None else (first_wire - notice_perf) * 1e3
    started_wire = env.sniffer.seen.get((world.ns, "stop_routing"))
    figures: dict[str, Any] = {
        "in_flight_at_notice": before["in_flight"],
        "agent_saw": report.requests,
        "finished_in_place": report.counts.finished_in_place,
        "kv_moved": report.counts.kv_moved,
        "reprefilled": report.counts.reprefilled,
        "requeued": report.counts.requeued,
        "failed_actions": report.counts.failed,
        "lost_agent": report.lost,
        "tokens_recomputed": round(report.tokens_recomputed),
        "gbytes_moved": round(report.bytes_moved / GB, 3),
        "hot_blocks_moved": report.hot_blocks_moved,
        "drain_order_ms": round((report.notice_at - notice_clock) / speed * 1e3, 3),
        "drain_started_wire_ms": None
        if started_wire is None
        else round((started_wire - notice_perf) * 1e3, 3),
        "first_commands_ms": round(latency_ms, 3),
        "first_commands_wire_ms": None if wire_ms is None else round(wire_ms, 3),
        "completed_before_deadline_s": round(deadline - report.completed_at, 3),
        "report_after_notice_s": round(report.completed_at - notice_clock, 2),
        "report_wall_ms": round((report_perf - notice_perf) * 1e3, 1),
    }
    ok = True
    if serve:
        ok = await _serve_all(world, scenario, deadline, figures)
        last_end = max((r.finished_at or 0.0) for r in world.router.requests.values())
        figures["last_request_end_after_notice_s"] = round(last_end - notice_clock, 2)
    figures["optimizer_solve_ms"] = round((solve_seconds(world) - solved_before) * 1e3, 3)
    figures["spurious_drains"] = world.agent.spot_monitor.drains - 1  # a worker taken for lost
    figures["setup_wall_s"] = round(setup_s, 2)
    figures["wall_s"] = round(time.perf_counter() - wall, 2)
    figures["log_warnings"] = LOGS.take()
    return Run(scenario, policy, figures, latency_ms, wire_ms, ok)


async def _serve_all(world: World, scenario: Scenario, deadline: float, figures: dict[str, Any]) -> bool:
    """Wait for every request to end; once the deadline has passed, a replacement joins if some wait."""
    speed = world.speed
    spot = [w for w in world.workers.values() if w.instance_id == "node-spot"]
    budget_s = scenario.notice_s / speed + 30
    if not await until(lambda: world.router.all_done() or world.clock.now() >= deadline, budget_s, 0.01):
        raise RuntimeError(f"{scenario.name}: the clock did not reach the deadline")
    replaced = False
    if not world.router.all_done():
        # The node is gone: its losses are final (``lost`` updates at its death). Let them reach the router.
        await until(lambda: all(w.stopped for w in spot), 5, 0.01)
        await asyncio.sleep(0.05)
        if world.router.summary()["waiting"] > 0:
            h100 = SEED_CATALOG.type("h100_8x")
            for k in range(max(1, scenario.requests // WORKER_BATCH)):
                await world.start_worker(f"od-new-{k}", f"node-od-new-{k}", h100, "ondemand")
            replaced = True
    ended = await until(world.router.all_done, 40, 0.01)
    summary = world.router.summary()
    figures.update(
        {
            "lost": summary["lost"],
            "completed": summary["completed"],
            "not_ended": summary["in_flight"],
            "router_requeued": summary["requeued"],
            "spot_workers_lost": sum(w.lost for w in spot),
            "replacement_joined": replaced,
        }
    )
    if not ended:
        figures["stuck"] = {k: summary[k] for k in ("waiting", "dispatching", "running", "in_transit")}
    return ended and summary["lost"] == 0


def percentiles(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"n": 0}
    p50, p99 = np.percentile(samples, [50, 99])
    return {
        "n": len(samples),
        "median": round(float(p50), 2),
        "p99": round(float(p99), 2),
        "max": round(max(samples), 2),
    }


def grid_of(args: argparse.Namespace) -> list[Scenario]:
    if args.quick:
        return [Scenario(n, 30.0, "ample") for n in SIZES]
    return [Scenario(n, s, c) for n in SIZES for s, c in (ALL_GRID if args.all else GRID)]


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def bench(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    loads = {n: make_load(args.seed, n) for n in SIZES}
    progress("warm-up run (not recorded)")
    await run_once(env, Scenario(64, 30.0, "ample"), "deadline", loads[64], serve=False)

    runs: list[Run] = []
    for g in range(args.grid_repeats):
        for scenario in grid_of(args):
            for policy in POLICIES:
                gc.collect()
                run = await run_once(env, scenario, policy, loads[scenario.requests], serve=True)
                f = run.figures
                progress(
                    f"[{g + 1}/{args.grid_repeats}] {scenario.name:<18} {policy:<16} lost {f['lost']} "
                    f"requeued {f['requeued']:>3} first commands {f['first_commands_ms']:6.1f} ms "
                    f"(wire {f['first_commands_wire_ms']}) {f['wall_s']} s"
                )
                runs.append(run)

    # The headline scenario again, sizes interleaved (a drift in the machine's noise hits all alike).
    notice_s, capacity, policy = HEADLINE
    extra: dict[int, list[Run]] = {n: [] for n in SIZES}
    for k in range(args.repeats):
        for n in SIZES:
            gc.collect()
            extra[n].append(
                await run_once(env, Scenario(n, notice_s, capacity), policy, loads[n], serve=False)
            )
        medians = ", ".join(f"{n}: {np.median([r.latency_ms for r in extra[n]]):.1f}" for n in SIZES)
        progress(f"latency repeat {k + 1}/{args.repeats}: median first commands (ms) {medians}")
    return {"runs": runs, "extra": extra}


NOTES = (
    "lost: the router emulator's count once every request has ended (not_ended: never did); lost_agent: "
    "the coordinator's own count; spot_workers_lost: what the dying spot workers held",
    "first_commands_ms: (report first_commands_at - notice clock time) / speed; *_wire_ms: perf_counter "
    "from publishing the notice to the first command (or stop_routing) seen by a sniffer process",
    "scenario figures are medians over grid repeats (losses summed); latency n counts every sample",
    "clock: 1x while requests are admitted, --speed from the warm-up on; a replacement joins at the "
    "deadline only if requests still wait for a slot; worker metrics every 1 real s and router submit "
    "timeout 5 real s, so that a busy process is not taken for dead workers",
)
_SUMMED = ("lost", "not_ended", "lost_agent", "spot_workers_lost", "spurious_drains")
_KEPT = (
    "in_flight_at_notice",
    "agent_saw",
    "finished_in_place",
    "kv_moved",
    "reprefilled",
    "requeued",
    "failed_actions",
    "router_requeued",
    "tokens_recomputed",
    "gbytes_moved",
    "hot_blocks_moved",
    "completed_before_deadline_s",
    "report_after_notice_s",
    "report_wall_ms",
    "last_request_end_after_notice_s",
    "optimizer_solve_ms",
    "wall_s",
)


def entry_of(runs: list[Run], headline: list[Run]) -> dict[str, Any]:
    """One (scenario, policy): losses summed over its runs, other figures their median; the latency over
    its runs and, for the headline scenario, the extra latency runs."""
    out: dict[str, Any] = {"runs": len(runs)}
    for key in _SUMMED:
        out[key] = sum(int(r.figures[key]) for r in runs)
    for key in _KEPT:
        values = [r.figures[key] for r in runs]
        value = float(np.median(values))
        out[key] = round(value) if all(isinstance(v, int) for v in values) else round(value, 3)
    samples = runs + headline
    out["first_commands_ms"] = percentiles([r.latency_ms for r in samples if r.latency_ms is not None])
    out["first_commands_wire_ms"] = percentiles([r.wire_ms for r in samples if r.wire_ms is not None])
    out["drain_order_ms"] = percentiles([r.figures["drain_order_ms"] for r in samples])
    started = [r.figures["drain_started_wire_ms"] for r in samples]
    out["drain_started_wire_ms"] = percentiles([v for v in started if v is not None])
    out["replacement_joined"] = sum(1 for r in runs if r.figures["replacement_joined"])
    logs: Counter[str] = Counter()
    for r in runs:
        logs.update(r.figures["log_warnings"])
    out["log_warnings"] = dict(sorted(logs.items()))
    n = runs[0].scenario.requests
    latency_ok = n != LATENCY_TARGET_AT or out["first_commands_ms"]["p99"] <= LATENCY_TARGET_MS
    out["targets_met"] = out["lost"] == 0 and out["not_ended"] == 0 and latency_ok
    return out


def assemble(measured: dict[str, Any], args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    runs: list[Run] = measured["runs"]
    extra: dict[int, list[Run]] = measured["extra"]
    scenarios: dict[str, dict[str, Any]] = {}
    for scenario in dict.fromkeys(r.scenario for r in runs):
        policies = {}
        for policy in POLICIES:
            mine = [r for r in runs if r.scenario == scenario and r.policy == policy]
            headline = (scenario.notice_s, scenario.capacity, policy) == HEADLINE
            policies[policy] = entry_of(mine, extra[scenario.requests] if headline else [])
        scenarios[scenario.name] = {
            "requests": scenario.requests,
            "notice_s": scenario.notice_s,
            "survivors": scenario.capacity,
            "spot_workers": scenario.spot_workers,
            "policies": policies,
        }
    latency = {}
    for n in SIZES:
        name = Scenario(n, HEADLINE[0], HEADLINE[1]).name
        entry = scenarios[name]["policies"][HEADLINE[2]]
        latency[str(n)] = {
            "scenario": f"{name}, policy {HEADLINE[2]}",
            "first_commands_ms": entry["first_commands_ms"],
            "first_commands_wire_ms": entry["first_commands_wire_ms"],
            "drain_order_ms": entry["drain_order_ms"],
            "drain_started_wire_ms": entry["drain_started_wire_ms"],
            "optimizer_solve_ms_median": entry["optimizer_solve_ms"],
        }
    at = latency[str(LATENCY_TARGET_AT)]
    p99 = at["first_commands_ms"]["p99"]
    deadline_entries = {name: sc["policies"]["deadline"] for name, sc in scenarios.items()}
    lost_deadline = sum(e["lost"] for e in deadline_entries.values())
    unended_deadline = sum(e["not_ended"] for e in deadline_entries.values())
    targets = {
        "first_commands_p99_ms_at_256": p99,
        "first_commands_p99_ms_limit": LATENCY_TARGET_MS,
        "first_commands_headroom": round(LATENCY_TARGET_MS / p99, 2),
        "first_commands_wire_p99_ms_at_256": at["first_commands_wire_ms"].get("p99"),
        "latency_met": p99 <= LATENCY_TARGET_MS,
        "deadline_policy_lost": lost_deadline,
        "deadline_policy_not_ended": unended_deadline,
        "deadline_policy_scenarios": len(deadline_entries),
        "lost_met": lost_deadline == 0 and unended_deadline == 0,
        "spurious_drains": sum(r.figures["spurious_drains"] for r in runs)
        + sum(r.figures["spurious_drains"] for rs in extra.values() for r in rs),
    }
    totals = {
        policy: {
            key: sum(sc["policies"][policy][key] for sc in scenarios.values())
            for key in ("lost", "not_ended", "requeued", "failed_actions", "tokens_recomputed")
        }
        | {
            "scenarios_with_loss": sum(1 for sc in scenarios.values() if sc["policies"][policy]["lost"] > 0),
            "gbytes_moved": round(
                sum(sc["policies"][policy]["gbytes_moved"] for sc in scenarios.values()), 3
            ),
        }
        for policy in POLICIES
    }
    return {
        "benchmark": "spot preemption end to end over NATS: agent + emulated GPU workers and router",
        "command": " ".join(
            [".venv/bin/python bench/preemption.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "seed": args.seed,
        "speed": args.speed,
        "repeats": args.repeats,
        "grid_repeats": args.grid_repeats,
        "quick": args.quick,
        "all": args.all,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "world": {
            "spot_node": "h100_8x workers of 256 sequences: 1 for 64 and 256 requests, 4 for 1,024",
            "survivors": {
                "ample": "max(1, N/256) h100_8x + 1 a100_8x, on-demand, empty",
                "limited": "1 a100-class worker with N/4 slots, on-demand, empty",
            },
            "cross_node_gbytes_per_s": CROSS_NODE_GBYTES_PER_S,
            "warmup_clock_s": WARMUP_S,
            "output_tokens": {
                "lognormal_median": OUTPUT_TOKENS[0],
                "min": OUTPUT_TOKENS[2],
                "max": OUTPUT_TOKENS[3],
            },
            "replacement": "max(1, N/256) h100_8x at the deadline if requests still wait for a slot",
        },
        "notes": NOTES,
        "targets": targets,
        "targets_met": targets["latency_met"] and targets["lost_met"],
        "latency": latency,
        "totals_by_policy": totals,
        "scenarios": scenarios,
    }


async def main_async(args: argparse.Namespace, url: str) -> dict[str, Any]:
    sniffer = Sniffer()
    await sniffer.start(url)
    try:
        return await bench(Env(url, args.speed, sniffer), args)
    finally:
        await sniffer.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="30 s notice, ample survivors only; 5 repeats")
    parser.add_argument(
        "--repeats",
        type=int,
        help="latency runs of the headline scenario per size (default 10; 5 with --quick)",
    )
    parser.add_argument("--grid-repeats", type=int, default=1, help="runs of each scenario and policy")
    parser.add_argument("--all", action="store_true", help="also the 120 s notice with limited survivors")
    parser.add_argument("--seed", type=int, default=20260730, help="seed of the generated requests")
    parser.add_argument("--speed", type=float, default=20.0, help="clock seconds per real second")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    parser.add_argument("--sniff", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sniff:
        return sniff(args.sniff)
    if args.repeats is None:
        args.repeats = 5 if args.quick else 10
    if args.repeats < 0 or args.grid_repeats < 1 or not args.speed > 0:
        parser.error("--repeats must be ≥ 0, --grid-repeats ≥ 1 and --speed > 0")
    structlog.configure(
        processors=[LOGS], wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING)
    )
    started = time.perf_counter()
    with NatsServer() as server:
        measured = asyncio.run(main_async(args, server.url))
    report = assemble(measured, args, argv)
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    text = msgspec.json.format(msgspec.json.encode(report), indent=2).decode() + "\n"
    sys.stdout.write(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
