"""``cost-agent demo --engine dynamo``: the agent running a real NVIDIA Dynamo deployment on one machine.

What runs, every part a real process or a real protocol:
- an embedded nats-server (JetStream on, as Dynamo's event plane was measured with);
- Dynamo 1.6.1's own OpenAI frontend (``python -m dynamo.frontend``, request migration on:
  ``--migration-limit 3``), file discovery, the NATS event plane;
- the agent as its own process (``cost-agent run``) with ``[dynamo]`` pointing at that frontend (the demand:
  arrivals at the front door) and ``[actuator] mode = "local"``: each node of its plans is one Dynamo mocker
  worker process (``python -m dynamo.mocker``) that it starts, drains (SIGTERM) and, at a notice's
  deadline, kills (SIGKILL);
- in this process: the reserved baseline's workers (a commitment exists before the agent), the spot market
  and the bill (:class:`~agent.sim.market.SimMarket`: prices and availability from a real availability
  trace, notices of 30 s and 2 min, a reclaim storm), and the traffic: a real demand trace replayed as
  OpenAI streaming chat completions to the frontend, each counted by the client (ok or failed).

Scale. Simulated time runs ``speed`` times faster than real time. The trace's requests are replayed at
1/``scale_down`` of their rate and with 1/``token_scale`` of their tokens, on a catalog whose batch and
throughput are scaled alike, so that the agent plans as many nodes as at full size; each streamed token
stands for ``token_scale``. The mocker is sped up so that a streamed token takes ``token_scale × decode_ms``
simulated milliseconds: a long generation outlives a 30 s notice, as on a real GPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import msgspec
import nats
import numpy as np
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from agent.actuators.local import LocalActuator
from agent.actuators.processes import listening_ports
from agent.actuators.settings import LocalSettings
from agent.bus import Bus
from agent.core.capacity import rps_per_instance
from agent.core.catalog import Catalog
from agent.demo import (
    DEFAULT_SPOT,
    DEFAULT_TRACE,
    AgentProcess,
    DemoError,
    DemoOptions,
    Scenario,
    build_scenario,
    catalog_toml,
    lognormal_length,
    output_length,
    step_index,
)
from agent.providers.dynamo.event_plane import (
    DynamoSubjects,
    EventPlaneError,
    ForwardPassMetrics,
    decode_event,
)
from agent.providers.httpclient import HttpClient
from agent.runtime.clock import RealClock, ScaledClock
from agent.runtime.metrics import AgentMetrics
from agent.runtime.nats_server import NatsServer
from agent.sim.dynamo_local import (
    COMPONENT,
    ENDPOINT,
    VOCABULARY_WORDS,
    LocalDynamo,
    chat_request,
    metric,
    stream_chat,
    write_tiny_model,
)
from agent.sim.market import MarketConfig, SimMarket
from agent.subjects import Subjects
from schemas import AllocationPlan, CostReport, CostReportRequest, ErrorReply, MigrationReport

# The mocker's own decode step here: ~5.8 ms a token at --speedup-ratio 1 (measured on this machine with
# the tiny model, 1 to 64 streams: batching is nearly free).
MOCKER_DECODE_MS: Final = 5.8
_MIGRATIONS: Final = "dynamo_frontend_model_migration_total"
_TEMPLATE_TOKENS: Final = 4  # the chat template's tokens around a user message


@dataclass(frozen=True, slots=True)
class DynamoDemoOptions:
    trace: str = DEFAULT_TRACE
    spot: str = DEFAULT_SPOT
    speed: float = 60.0
    """Simulated seconds per real second."""
    duration_h: float = 3.0
    peak_nodes: int = 4
    scale_down: int = 64
    token_scale: int = 8
    decode_ms: float = 30.0
    """Simulated decode time of a token (a 70B-class model under load on one node)."""
    notice_s: float = 120.0
    short_notice_s: float = 30.0
    short_notice_share: float = 0.5
    boot_s: float = 120.0
    storm_at_h: float | None = None
    """Start of a one-hour reclaim storm; default: a third into the run."""
    storm_rate_per_hour: float = 0.8
    storm_hours: float = 2.0
    long_share: float = 0.1
    long_tokens: int = 4000
    kill_agent_at_h: float | None = None
    """SIGKILL the agent process at this simulated hour and start it again: its workers serve on, it adopts
    them and plans again."""
    seed: int = 7
    json_path: str | None = None
    plot_path: str | None = "demo-dynamo.png"
    keep: bool = False
    """Keep the working directory (Dynamo's and the workers' logs) after the run."""

    def __post_init__(self) -> None:
        checks = [
            ("--speed", self.speed, 1 <= self.speed <= 240, "between 1 and 240"),
            ("--duration", self.duration_h, 0 < self.duration_h <= 48, "in (0, 48] hours"),
            ("--peak-nodes", self.peak_nodes, 1 <= self.peak_nodes <= 12, "between 1 and 12 on this machine"),
            ("--scale-down", self.scale_down, 1 <= self.scale_down <= 4096, "between 1 and 4096"),
            ("--token-scale", self.token_scale, 1 <= self.token_scale <= 64, "between 1 and 64"),
            ("--decode-ms", self.decode_ms, 1 <= self.decode_ms <= 1000, "between 1 and 1000"),
            ("--notice", self.notice_s, 5 <= self.notice_s <= 3600, "between 5 and 3600 s"),
            ("--short-notice", self.short_notice_s, 5 <= self.short_notice_s <= 3600, "between 5 and 3600 s"),
            ("--short-share", self.short_notice_share, 0 <= self.short_notice_share <= 1, "in [0, 1]"),
            ("--storm-rate", self.storm_rate_per_hour, 0 <= self.storm_rate_per_hour <= 1, "in [0, 1]"),
            ("--storm-hours", self.storm_hours, 0 < self.storm_hours <= 48, "in (0, 48]"),
            ("--long-share", self.long_share, 0 <= self.long_share < 1, "in [0, 1)"),
            ("--long-tokens", self.long_tokens, 1 <= self.long_tokens <= 100_000, "between 1 and 100000"),
        ]
        if self.kill_agent_at_h is not None and not 0 < self.kill_agent_at_h < self.duration_h:
            raise DemoError(
                f"--kill-agent-at {self.kill_agent_at_h!r}: must be inside the run (0, --duration)"
            )
        if self.storm_at_h is not None and not 0 <= self.storm_at_h < self.duration_h:
            raise DemoError(f"--storm-at {self.storm_at_h!r}: must be inside the run [0, --duration)")
        for flag, value, ok, rule in checks:
            if not (isinstance(value, int | float) and math.isfinite(value) and ok):
                raise DemoError(f"{flag} {value!r}: must be {rule}")

    @property
    def mocker_speedup(self) -> float:
        """The mocker's ``--speedup-ratio``: its prefill of 1/``token_scale`` of the tokens takes as much
        simulated time as the whole prompt's would."""
        return self.speed / self.token_scale

    @property
    def decode_speedup(self) -> float:
        """The mocker's ``--decode-speedup-ratio``: a streamed token takes ``token_scale × decode_ms``
        simulated milliseconds."""
        real_ms = self.token_scale * self.decode_ms / self.speed
        return MOCKER_DECODE_MS / real_ms / self.mocker_speedup


def token_scaled(catalog: Catalog, token_scale: int) -> Catalog:
    """The catalog with 1/``token_scale`` of the throughput: requests carry that much fewer tokens."""
    types = {
        name: dataclasses.replace(
            t,
            prefill_tokens_per_s=t.prefill_tokens_per_s / token_scale,
            decode_tokens_per_s=t.decode_tokens_per_s / token_scale,
        )
        for name, t in catalog.types.items()
    }
    return dataclasses.replace(catalog, name=f"{catalog.name}-dynamo", types=types)


@dataclass(slots=True)
class ClientCount:
    """What the traffic's own client saw."""

    sent: int = 0
    ok: int = 0
    failed: int = 0
    long: int = 0
    tokens_streamed: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def in_flight(self) -> int:
        return self.sent - self.ok - self.failed


class StreamingTraffic:
    """Poisson arrivals at the trace's rate (scaled down); lengths lognormal around the trace's means (scaled
    by ``token_scale``), ``long_share`` of them long generations of ``long_tokens`` ± 50%; each request an
    OpenAI streaming chat completion to the frontend."""

    def __init__(
        self,
        scenario: Scenario,
        opts: DynamoDemoOptions,
        session: aiohttp.ClientSession,
        url: str,
    ) -> None:
        self.scenario, self.opts, self.session, self.url = scenario, opts, session, url
        self.rng = random.Random(opts.seed)
        self.count = ClientCount()
        self.sent_at: list[float] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def demand_at(self, t: float) -> tuple[float, float, float]:
        """(rps, prompt tokens, output tokens) of the trace at clock time ``t``, the rate scaled down."""
        d = self.scenario.setup.demand[step_index(self.scenario.setup, t)]
        return d.rps / self.opts.scale_down, d.prompt_tokens, d.output_tokens

    async def run(self, stop: asyncio.Event, until: float, tick_s: float = 5.0) -> None:
        clock = self.scenario.clock
        t = clock.now()
        np_rng = np.random.default_rng(self.opts.seed)
        while t < until and not await clock.wait_until(t + tick_s, stop):
            rps, prompt, output = self.demand_at(t)
            for _ in range(int(np_rng.poisson(rps * tick_s))):
                k, o = self.opts.token_scale, self.opts
                words = max(1, round(lognormal_length(self.rng, prompt) / k) - _TEMPLATE_TOKENS)
                length, long = output_length(self.rng, output, o.long_share, o.long_tokens)
                self.count.long += long
                tokens = max(1, round(length / k))
                task = asyncio.ensure_future(self._one(words, tokens))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            t += tick_s

    async def _one(self, words: int, tokens: int) -> None:
        self.count.sent += 1
        self.sent_at.append(self.scenario.clock.now())
        request = chat_request(words, tokens, first_word=self.rng.randrange(VOCABULARY_WORDS))
        try:
            result = await stream_chat(self.session, self.url, request, timeout_s=600.0)
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            self._failed(f"{type(err).__name__}: {err}")
            return
        if result.ok:
            self.count.ok += 1
            self.count.tokens_streamed += result.completion_tokens
        else:
            self._failed(f"status {result.status}: {result.error}")

    def _failed(self, why: str) -> None:
        self.count.failed += 1
        if len(self.count.errors) < 10:
            self.count.errors.append(why)

    async def drain(self, timeout_s: float) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout_s)


class WorkerLoads:
    """How busy each node's Dynamo worker is, for the market's storm (it hits the busiest machines): the KV
    context of the requests it is running and queuing, from its latest ForwardPassMetrics on Dynamo's event
    plane. A node is matched to its worker through the local actuator's record (its pid), the ports that
    process listens on, and Dynamo's file discovery (instance id → port)."""

    def __init__(self, dynamo: LocalDynamo, state_dir: Path) -> None:
        self.dynamo, self.state_dir = dynamo, state_dir
        self.kv_tokens: dict[int, int] = {}

    async def subscribe(self, nc: NATS) -> None:
        subject = DynamoSubjects(self.dynamo.namespace, COMPONENT, ENDPOINT).forward_pass_metrics

        async def on_message(msg: Msg) -> None:
            with contextlib.suppress(EventPlaneError):
                event = decode_event(msg.data)
                if isinstance(event.payload, ForwardPassMetrics) and event.worker is not None:
                    s, q = event.payload.scheduled_requests, event.payload.queued_requests
                    self.kv_tokens[event.worker[0]] = s.sum_decode_kv_tokens + q.sum_decode_kv_tokens

        await nc.subscribe(subject, cb=on_message)

    def load(self, instance_id: str) -> float:
        try:
            record = json.loads((self.state_dir / "nodes.json").read_text())
        except (OSError, ValueError):
            return 0.0
        pid = next((n["pid"] for n in record.get("nodes", []) if n.get("instance_id") == instance_id), None)
        if pid is None:
            return 0.0
        ports = {port for _, port in listening_ports(pid)}
        for worker, port in self.dynamo.registered_instances().items():
            if port in ports:
                return float(self.kv_tokens.get(worker, 0))
        return 0.0


@dataclass(slots=True)
class Seen:
    """What the demo observed on the bus."""

    plans: int = 0
    plans_after_restart: int = 0
    agent_restarted: bool = False
    last_plan: AllocationPlan | None = None
    reports: list[MigrationReport] = field(default_factory=list)
    samples: list[dict[str, float]] = field(default_factory=list)
    plan_log: list[dict[str, Any]] = field(default_factory=list)
    """Each plan: when (simulated hours), why, its node counts by tier, the demand it planned for."""


def agent_settings_toml(opts: DynamoDemoOptions, dynamo: LocalDynamo, state_dir: Path) -> str:
    """The agent's settings: the frontend to read, the local actuator running mocker workers."""
    extra = ["--decode-speedup-ratio", f"{opts.decode_speedup:.6g}"]
    command = dynamo.worker_command(speedup_ratio=opts.mocker_speedup, extra_args=extra)
    env = {k: v for k, v in dynamo.env.items() if k.startswith(("DYN_", "NATS_", "HF_")) or k == "NO_COLOR"}
    # A simulated minute per scrape: at 1/64 of the trace's rate a 15 s interval holds about three requests,
    # and one long generation ending in it multiplies its mean output four times; the agent then planned
    # 7-12 nodes where 2 served (node-hours 2.0-2.7x what the demand needed; 1.3x with a minute).
    lines = [
        "[profiler]",
        "stale_after_seconds = 300.0",
        "",
        "[dynamo]",
        f"frontend_urls = [{json.dumps(dynamo.frontend_url)}]",
        f"namespace = {json.dumps(dynamo.namespace)}",
        'component = "backend"',
        'endpoint = "generate"',
        "scrape_interval_seconds = 60.0",
        "",
        "[actuator]",
        'mode = "local"',
        f"boot_seconds = {opts.boot_s!r}",
        "poll_seconds = 5.0",
        "",
        "[actuator.local]",
        f"command = [{', '.join(json.dumps(a) for a in command)}]",
        "env = {" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in sorted(env.items())) + "}",
        f"state_dir = {json.dumps(str(state_dir))}",
        "release_grace_seconds = 300.0",
        "",
    ]
    return "\n".join(lines)


async def run_dynamo_demo(
    opts: DynamoDemoOptions,
    render: Callable[[dict[str, Any]], None] | None = None,
    stop: asyncio.Event | None = None,
) -> dict[str, Any]:
    """Run the demo on real Dynamo; return its summary (what ``--json`` writes). Everything started is
    stopped on the way out, whatever happens."""
    base = DemoOptions(
        trace=opts.trace,
        spot=opts.spot,
        speed=opts.speed,
        duration_h=opts.duration_h,
        peak_nodes=opts.peak_nodes,
        scale_down=opts.scale_down,
        notice_s=opts.notice_s,
        boot_s=opts.boot_s,
        long_share=opts.long_share,  # the rates are scaled so that the peak still needs peak_nodes
        long_tokens=opts.long_tokens,
    )
    scenario = build_scenario(base)
    catalog = token_scaled(scenario.catalog, opts.token_scale)
    stop = stop or asyncio.Event()
    ns = f"dyn{uuid.uuid4().hex[:8]}"
    seen = Seen()
    workdir = Path(tempfile.mkdtemp(prefix="cost-agent-dynamo-"))
    async with contextlib.AsyncExitStack() as stack:
        if not opts.keep:
            stack.callback(shutil.rmtree, workdir, True)
        server = NatsServer(jetstream=True)
        stack.callback(server.stop)
        url = server.start()
        model_dir = await asyncio.to_thread(write_tiny_model, workdir / "model")
        dynamo = LocalDynamo(workdir / "dynamo", nats_url=url, model_dir=model_dir, namespace=ns)
        stack.callback(dynamo.stop)
        dynamo.start_frontend(migration_limit=3)
        await dynamo.wait_frontend()
        state_dir = workdir / "actuator"
        stack.push_async_callback(_stop_workers, state_dir)  # after the agent has stopped

        reserved = await _start_reserved(dynamo, scenario, opts)
        # The simulated period starts now that Dynamo is up: its start-up is not the trace's first minutes.
        clock = ScaledClock(opts.speed, start=scenario.clock.start)
        scenario = dataclasses.replace(scenario, clock=clock, end=clock.start + opts.duration_h * 3600)

        nc = await nats.connect(url, name="demo-cloud")
        stack.push_async_callback(nc.close)
        bus = Bus(nc, Subjects(ns), source="sim-cloud", clock=scenario.clock, metrics=AgentMetrics())
        await _observe(bus, seen)
        loads = WorkerLoads(dynamo, state_dir)
        await loads.subscribe(nc)
        market = SimMarket(
            bus,
            scenario.clock,
            catalog=catalog,
            config=MarketConfig(
                notice_s=opts.notice_s,
                short_notice_s=opts.short_notice_s,
                short_share=opts.short_notice_share,
                storm_start_s=(opts.duration_h / 3 if opts.storm_at_h is None else opts.storm_at_h) * 3600,
                storm_rate_per_hour=opts.storm_rate_per_hour,
                storm_duration_s=opts.storm_hours * 3600,
                seed=opts.seed,
            ),
            spot_available=scenario.spot_available,
            load=loads.load,
        )
        market_task = asyncio.ensure_future(market.run(stop))
        stack.push_async_callback(_finish, market_task)
        await market.ready.wait()
        for instance_id, name in reserved:
            await market.add_reserved(instance_id, name, catalog.type(name).pools[0])

        catalog_path = workdir / "catalog.toml"
        catalog_path.write_text(catalog_toml(catalog), encoding="utf-8")
        config_path = workdir / "agent.toml"
        config_path.write_text(agent_settings_toml(opts, dynamo, state_dir), encoding="utf-8")
        agent = AgentProcess(url, ns, catalog_path, scenario.clock, config_path)
        stack.push_async_callback(agent.stop)
        await agent.start()
        await _wait_started(agent, stop)

        session = await stack.enter_async_context(aiohttp.ClientSession())
        migrations_before = await _frontend_migrations(dynamo)
        traffic = StreamingTraffic(scenario, opts, session, dynamo.frontend_url)
        traffic_task = asyncio.ensure_future(traffic.run(stop, scenario.end))
        stack.push_async_callback(_finish, traffic_task)
        started = time.monotonic()
        await _watch(opts, scenario, market, traffic, seen, stop, render, agent)
        await _finish(traffic_task)
        await traffic.drain(timeout_s=60.0)
        report = await _ask_cost(bus)
        migrations = await _frontend_migrations(dynamo) - migrations_before
        bill = market.bill()
        await market.retire_reserved()
        return _summary(
            opts,
            scenario,
            catalog,
            market,
            traffic,
            seen,
            agent,
            report,
            migrations,
            bill,
            time.monotonic() - started,
        )
    raise AssertionError("unreachable")  # pragma: no cover


async def _observe(bus: Bus, seen: Seen) -> None:
    plans = msgspec.json.Decoder(AllocationPlan)
    reports = msgspec.json.Decoder(MigrationReport)

    async def on_plan(msg: Msg) -> None:
        plan = plans.decode(msg.data)
        seen.plans += 1
        seen.plans_after_restart += seen.agent_restarted
        seen.last_plan = plan
        tiers = dict.fromkeys(("reserved", "spot", "ondemand"), 0)
        for target in plan.targets:
            tiers[target.tier] += target.count
        seen.plan_log.append(
            {
                "sent_at": plan.sent_at,
                "reason": plan.reason,
                **tiers,
                "demand_now_rps": plan.demand_now_rps,
                "demand_next_rps": plan.demand_next_rps,
                "detail": plan.detail,
            }
        )

    async def on_report(msg: Msg) -> None:
        seen.reports.append(reports.decode(msg.data))

    await bus.nc.subscribe(bus.subjects.plan_allocation, cb=on_plan)
    await bus.nc.subscribe(bus.subjects.migration_report_all, cb=on_report)
    await bus.settle()


async def _start_reserved(
    dynamo: LocalDynamo, scenario: Scenario, opts: DynamoDemoOptions
) -> list[tuple[str, str]]:
    """The reserved baseline's workers (bought before the agent ran), registered before the traffic starts;
    their (instance id, type)."""
    extra = ["--decode-speedup-ratio", f"{opts.decode_speedup:.6g}"]
    names: list[tuple[str, str]] = []
    for name, count in scenario.reserved.items():
        pool = scenario.catalog.type(name).pools[0]
        for i in range(count):
            dynamo.start_worker(speedup_ratio=opts.mocker_speedup, extra_args=extra)
            names.append((f"{name}-{pool}-reserved-r{i + 1}", name))
    if not names:
        raise DemoError("the trace needs no reserved node, so nothing would serve the first requests")
    async with HttpClient() as http:
        await dynamo.wait_ready(http, timeout_s=60.0)
    return names


async def _wait_started(agent: AgentProcess, stop: asyncio.Event) -> None:
    deadline = time.monotonic() + 60.0
    while not stop.is_set():
        if agent.proc is not None and agent.proc.returncode is not None:
            tail = [e.get("event") for e in list(agent.events)[-5:]]
            raise DemoError(f"the agent process exited with {agent.proc.returncode} at start-up ({tail})")
        if any(e.get("event") == "agent_started" for e in agent.events):
            return
        if time.monotonic() > deadline:
            raise DemoError("the agent process did not start within 60 s")
        await asyncio.sleep(0.05)  # a poll of the agent's log lines


async def _watch(
    opts: DynamoDemoOptions,
    scenario: Scenario,
    market: SimMarket,
    traffic: StreamingTraffic,
    seen: Seen,
    stop: asyncio.Event,
    render: Callable[[dict[str, Any]], None] | None,
    agent: AgentProcess,
) -> None:
    """Until the end of the simulated period (or Ctrl-C): a sample a simulated minute, the live view; the
    agent killed and started again at ``kill_agent_at_h``."""
    clock = scenario.clock
    while not stop.is_set() and clock.now() < scenario.end:
        now = clock.now()
        if (
            opts.kill_agent_at_h is not None
            and not seen.agent_restarted
            and scenario.hour(now) >= opts.kill_agent_at_h
        ):
            await agent.kill()  # SIGKILL: no goodbye, as a node failure or an OOM kill
            agent.events.clear()
            await agent.start()
            seen.agent_restarted = True
            await _wait_started(agent, stop)
        fleet = _fleet(market)
        rps, _prompt, _output = traffic.demand_at(now)
        seen.samples.append(
            {
                "t_h": scenario.hour(now),
                "demand_rps": rps * opts.scale_down,
                **{k: float(v) for k, v in fleet.items()},
            }
        )
        if render is not None:
            render(_live_state(opts, scenario, market, traffic, seen, fleet, now))
        await clock.wait_until(min(now + 60.0, scenario.end), stop)


def _fleet(market: SimMarket) -> dict[str, int]:
    fleet = {"reserved": 0, "spot": 0, "ondemand": 0, "booting": 0, "draining": 0}
    for node in market.running():
        key = node.tier if node.state == "ready" else ("booting" if node.state == "launched" else "draining")
        fleet[key] += 1
    return fleet


def _live_state(
    opts: DynamoDemoOptions,
    scenario: Scenario,
    market: SimMarket,
    traffic: StreamingTraffic,
    seen: Seen,
    fleet: dict[str, int],
    now: float,
) -> dict[str, Any]:
    c = traffic.count
    last = seen.reports[-1] if seen.reports else None
    return {
        "title": "cost-agent demo on NVIDIA Dynamo",
        "hour": scenario.hour(now),
        "duration_h": opts.duration_h,
        "demand_rps": traffic.demand_at(now)[0] * opts.scale_down,
        "capacity_rps": 0.0,
        "fleet": fleet,
        "cost": market.bill()["total"],
        "plans": seen.plans,
        "preemptions": len(market.preemptions),
        "requests_title": "requests (the client's count)",
        "requests": {
            "sent": c.sent,
            "ok": c.ok,
            "in flight": c.in_flight,
            "failed": c.failed,
            "migrated": sum(r.counts.frontend_migrated for r in seen.reports),
        },
        "last_migration_text": None
        if last is None
        else f"last preemption: {last.instance_id}: {last.counts.frontend_migrated} streams migrated by the "
        f"frontend",
        "spot": {
            f"{name}/{pool}": (
                scenario.catalog.types[name].spot_hourly,
                scenario.spot_available(name, pool, now),
            )
            for name, pool in scenario.catalog.pools()
        },
    }


async def _frontend_migrations(dynamo: LocalDynamo) -> float:
    async with HttpClient() as http:
        return metric(await dynamo.metrics_text(http), _MIGRATIONS)


async def _ask_cost(bus: Bus) -> CostReport | None:
    for _ in range(3):
        try:
            reply = await bus.request(
                bus.subjects.cost_report_request, CostReportRequest(**bus.envelope()), CostReport, 5.0
            )
        except (TimeoutError, msgspec.DecodeError, nats.errors.Error):
            continue
        if not isinstance(reply, ErrorReply):
            return reply
    return None


async def _finish(task: asyncio.Future[Any]) -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def _stop_workers(state_dir: Path) -> None:
    """The agent's workers outlive it (by design): the demo's end stops them, through the same records."""
    clock = RealClock()
    driver = LocalActuator(
        LocalSettings(command=["true"], state_dir=str(state_dir)), clock, boot_s=0.0, namespace="demo"
    )
    with contextlib.suppress(RuntimeError):
        await driver.open(clock.now())
        await driver.stop_all()


def _summary(
    opts: DynamoDemoOptions,
    scenario: Scenario,
    catalog: Catalog,
    market: SimMarket,
    traffic: StreamingTraffic,
    seen: Seen,
    agent: AgentProcess,
    report: CostReport | None,
    migrations: float,
    bill: dict[str, float],
    real_s: float,
) -> dict[str, Any]:
    c = traffic.count
    hours = min(opts.duration_h, max(0.0, scenario.hour(scenario.clock.now())))
    main = catalog.main_type
    static_peak = opts.peak_nodes * main.ondemand_hourly * hours
    node_hours = sum(
        (min(n.terminated_at or scenario.clock.now(), scenario.end) - n.launched_at) / 3600
        for n in market.nodes.values()
    )
    ondemand_equivalent = sum(
        max(0.0, (n.terminated_at or scenario.clock.now()) - n.launched_at)
        / 3600
        * catalog.type(n.instance_type).ondemand_hourly
        for n in market.nodes.values()
    )
    agent_cost = report.total_cost if report is not None else None
    # What the demand needed: each simulated minute's trace demand in main-type nodes at the SLO's
    # utilisation (the same capacity model the agent plans with), summed.
    setup = scenario.setup
    step_h = setup.sim.step_s / 3600
    first = step_index(setup, scenario.t0)
    needed = (
        sum(
            d.rps / rps_per_instance(setup.catalog.main_type, d.prompt_tokens, d.output_tokens, setup.sim.slo)
            for d in setup.demand[first : first + max(1, round(hours / step_h))]
            if d.rps > 0
        )
        * step_h
    )
    short = sum(1 for p in market.preemptions if p.deadline - p.at <= opts.short_notice_s + 1e-6)
    summary: dict[str, Any] = {
        "engine": "dynamo",
        "dynamo": "ai-dynamo 1.6.1: frontend (--migration-limit 3) and mocker workers",
        "trace": opts.trace,
        "spot": opts.spot,
        "catalog": catalog.name,
        "simulated_hours": round(hours, 3),
        "real_seconds": round(real_s, 1),
        "speed": opts.speed,
        "scale_down": opts.scale_down,
        "token_scale": opts.token_scale,
        "requests_sent": c.sent,
        "requests_ok": c.ok,
        "requests_failed": c.failed,
        "requests_unfinished": c.in_flight,
        "requests_long": c.long,
        "client_errors": c.errors,
        "preemptions": len(market.preemptions),
        "short_notices": short,
        "migrations": round(migrations),
        "migration_reports": len(seen.reports),
        "migrations_reported": sum(r.counts.frontend_migrated for r in seen.reports),
        "plans": seen.plans,
        "plans_applied": agent.count("plan_applied"),
        "agent_restarted": seen.agent_restarted,
        "plans_after_restart": seen.plans_after_restart,
        "workers_max": market.max_running,
        "node_hours": round(node_hours, 3),
        "demand_node_hours": round(needed, 3),
        "plans_log": [{**p, "sent_at": round(scenario.hour(p["sent_at"]), 3)} for p in seen.plan_log],
        "agent_cost": None if agent_cost is None else round(agent_cost, 2),
        "cloud_bill": round(bill["total"], 2),
        "cloud_bill_by_tier": {k: round(v, 2) for k, v in bill.items() if k != "total"},
        "cost_agreement": None
        if agent_cost is None or bill["total"] == 0
        else round(abs(agent_cost - bill["total"]) / bill["total"], 4),
        "cost_table": [
            {"strategy": "cost-agent (the cloud's bill)", "cost": round(bill["total"], 2)},
            {"strategy": "the same node-hours, all on-demand", "cost": round(ondemand_equivalent, 2)},
            {
                "strategy": f"static: {opts.peak_nodes} on-demand {main.name} all along",
                "cost": round(static_peak, 2),
            },
        ],
    }
    summary["plot"] = _plot(opts, seen) if opts.plot_path else None
    return summary


def _plot(opts: DynamoDemoOptions, seen: Seen) -> str | None:
    if not seen.samples or opts.plot_path is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = [s["t_h"] for s in seen.samples]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    bottom = np.zeros(len(hours))
    for tier, colour in (("reserved", "#4c72b0"), ("ondemand", "#dd8452"), ("spot", "#55a868")):
        values = np.array([s[tier] for s in seen.samples])
        ax.fill_between(
            hours, bottom, bottom + values, step="post", alpha=0.6, color=colour, label=f"{tier} workers"
        )
        bottom = bottom + values
    ax.set_xlabel("simulated hours")
    ax.set_ylabel("Dynamo workers (ready)")
    twin = ax.twinx()
    twin.plot(
        hours,
        [s["demand_rps"] for s in seen.samples],
        color="black",
        linewidth=1,
        label="demand (rps, full scale)",
    )
    twin.set_ylabel("requests/s (full scale)")
    ax.set_title(f"cost-agent on Dynamo: {opts.trace}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(opts.plot_path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def print_dynamo_summary(summary: dict[str, Any]) -> None:
    s = summary
    print(
        f"\ncost-agent demo on NVIDIA Dynamo: {s['simulated_hours']:g} simulated hours of {s['trace']} "
        f"({s['real_seconds']:g} s)"
    )
    print("\n| Strategy | Cost for the period |\n|---|---|")
    for row in s["cost_table"]:
        print(f"| {row['strategy']} | ${row['cost']:,.2f} |")
    agent = s["agent_cost"]
    reported = "-" if agent is None else f"${agent:,.2f}"
    print(f"\nagent's cost report {reported} vs the cloud's bill ${s['cloud_bill']:,.2f}")
    print(
        f"requests (the client's count): {s['requests_sent']:,} sent, {s['requests_ok']:,} ok, "
        f"{s['requests_failed']:,} failed ({s['requests_long']:,} long generations)"
    )
    print(
        f"preemptions: {s['preemptions']} ({s['short_notices']} with a short notice); streams migrated by "
        f"the frontend: {s['migrations']} ({s['migrations_reported']} in {s['migration_reports']} "
        "migration reports)"
    )
    print(f"plans: {s['plans']} (applied {s['plans_applied']}); Dynamo workers at most: {s['workers_max']}")
    if s["demand_node_hours"] > 0:
        print(
            f"node-hours: {s['node_hours']:.2f} held where the demand needed {s['demand_node_hours']:.2f} "
            f"({s['node_hours'] / s['demand_node_hours']:.2f}×)"
        )
    if s["client_errors"]:
        print("first client errors: " + "; ".join(s["client_errors"][:3]))
    if s.get("plot"):
        print(f"plot: {s['plot']}")


def write_json(path: str, summary: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
