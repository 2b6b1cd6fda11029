"""``cost-agent demo``: the whole system on one machine, every component talking only over NATS.

What runs: an embedded nats-server; the agent as its own process (``cost-agent run``, all five actors) on a
scaled clock; and, in this process, a simulated cloud (the actuator: it applies every AllocationPlan,
boots and releases instances, drives the spot market from a real availability trace, sends preemption
notices on the sidecar's subject, a reclaim storm included), one emulated GPU worker per running instance,
the emulated router in front of them, and traffic replayed from a real demand trace.

Scale. At the default speed a simulated day lasts three minutes, so the traffic is replayed at 1/64 of
its size on nodes whose batch and throughput are 1/64 of the catalog's (the same per-sequence speed):
the fleet has the same number of nodes as at full size and costs the same, while each emulated request
stands for 64. Requests are counted as emulated; cost per 1M tokens is computed on full-size tokens.

What a spot notice costs. The demo exists to show a reclaimed node's requests moving before its deadline,
so its defaults make notices that matter. Half of them are 30 s long (GCP's and Azure's warning; AWS's is
120 s). The market and the storm reclaim the busiest spot nodes first (:mod:`agent.sim.cloud`). And 1% of
the requests are long generations (4,000 output tokens ± 50%: about two minutes of decoding at the
catalog's per-sequence speed, where a 30 s notice leaves 25 s); the trace's own output lengths give
none (ServeGen m-large's p99 is under 700 tokens, which a node finishes in place within 25 s). The demand is
scaled again so that its peak, long generations included, needs ``--peak-nodes`` nodes: the fleet and
its cost stay the trace's, the requests are fewer and longer. Not more of them: on nodes of 2 to 4 slots
(1/64 of the catalog's batch) long generations queue the short ones behind them, and at 5% a day's run
built a backlog, over-provisioned (its bill 1.7× the run without them) and lost requests. The summary
counts what the agent's migration reports say became of every request on a reclaimed node.

Correctness it checks and reports: requests lost by the router's own record (not the agent's), the
agent's cost report against the simulated cloud's bill, every plan applied, and instances never above the
plan plus those draining.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats
import numpy as np
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from agent.backtest import Setup, build_setup
from agent.bus import Bus
from agent.core.capacity import SloConfig, rps_per_instance
from agent.core.catalog import Catalog, InstanceType
from agent.core.demand import Demand
from agent.runtime.clock import ScaledClock, wait_event
from agent.runtime.metrics import AgentMetrics
from agent.runtime.nats_server import NatsServer
from agent.sim.cloud import CloudBill, CloudConfig, SimCloud
from agent.sim.replay import SimConfig
from agent.sim.router import RouterEmulator
from agent.sim.traces import DemandStep, DemandTrace, peak_nodes_factor
from agent.subjects import Subjects
from schemas import (
    AllocationPlan,
    CostReport,
    CostReportRequest,
    ErrorReply,
    MigrationCounts,
    MigrationReport,
)

DEFAULT_TRACE = "servegen:m-large"
DEFAULT_SPOT = "skypilot:availability/16-node/aws-08-27-2023"
MAX_LONG_TOKENS = 131_072
"""The longest generation ``--long-tokens`` allows: a 128k-token context."""


class DemoError(RuntimeError):
    """The demo could not run; one line saying why."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    trace: str = DEFAULT_TRACE
    spot: str = DEFAULT_SPOT
    catalog: Catalog | None = None
    speed: float = 480.0
    """Simulated seconds per real second: 480 runs a day in three minutes."""
    duration_h: float = 24.0
    peak_nodes: int = 4
    scale_down: int = 64
    notice_s: float = 120.0
    short_notice_s: float = 30.0
    short_notice_share: float = 0.5
    """Share of the spot notices that are ``short_notice_s`` long (the others ``notice_s``)."""
    long_share: float = 0.01
    """Share of the requests that are long generations of about ``long_tokens`` output tokens."""
    long_tokens: int = 4000
    boot_s: float = 120.0
    storm_at_h: float | None = None
    """Start of a one-hour reclaim storm at 20%/h; default: 40% into the run."""
    storm_rate_per_hour: float = 0.2
    kill_agent_at_h: float | None = None
    """Chaos: SIGKILL the agent process at this simulated hour, and start it again ``restart_after_s`` real
    seconds later (the rest of the system keeps serving meanwhile)."""
    restart_after_s: float = 2.0
    json_path: str | None = None
    plot_path: str = "demo.png"
    live: bool = True
    seed: int = 7

    def __post_init__(self) -> None:
        positive, share = "must be positive", "must be a share in [0, 1]"
        checks: list[tuple[str, float, bool, str]] = [
            ("--speed", self.speed, self.speed > 0, positive),
            ("--duration", self.duration_h, self.duration_h > 0, positive),
            ("--peak-nodes", self.peak_nodes, self.peak_nodes >= 1, positive),
            ("--scale-down", self.scale_down, self.scale_down >= 1, positive),
            ("--notice", self.notice_s, self.notice_s > 0, positive),
            ("--short-notice", self.short_notice_s, self.short_notice_s > 0, positive),
            ("--short-notice-share", self.short_notice_share, 0 <= self.short_notice_share <= 1, share),
            ("--long-share", self.long_share, 0 <= self.long_share <= 1, share),
            (
                "--long-tokens",
                self.long_tokens,
                1 <= self.long_tokens <= MAX_LONG_TOKENS,
                f"must be in [1, {MAX_LONG_TOKENS}]",
            ),
            ("--storm-rate", self.storm_rate_per_hour, 0 <= self.storm_rate_per_hour <= 1, share),
            ("--boot", self.boot_s, self.boot_s >= 0, "must be ≥ 0"),
        ]
        if self.storm_at_h is not None:
            checks.append(("--storm-at", self.storm_at_h, self.storm_at_h >= 0, "must be ≥ 0"))
        for name, value, ok, rule in checks:
            if not (ok and math.isfinite(value)):
                raise DemoError(f"{name}: {rule}, got {value!r}")


def scaled_catalog(catalog: Catalog, factor: int) -> Catalog:
    """The same node types with 1/``factor`` of the batch and throughput (same per-sequence speed)."""
    types = {}
    for name, t in catalog.types.items():
        batch = max(1, round(t.max_batch / factor))
        ratio = batch / t.max_batch
        types[name] = dataclasses.replace(
            t,
            max_batch=batch,
            prefill_tokens_per_s=t.prefill_tokens_per_s * ratio,
            decode_tokens_per_s=t.decode_tokens_per_s * ratio,
        )
    return dataclasses.replace(catalog, name=f"{catalog.name}-demo", types=types)


def catalog_toml(catalog: Catalog) -> str:
    """A catalog file the agent process can load (``--catalog PATH``)."""
    lines = ["[catalog]", f"name = {json.dumps(catalog.name)}", f"source = {json.dumps(catalog.source)}", ""]
    for name, t in catalog.types.items():
        lines += [
            f"[types.{name}]",
            f"gpus = {t.gpus}",
            f"gpu_type = {json.dumps(t.gpu_type)}",
            f"ondemand_hourly = {t.ondemand_hourly!r}",
            f"reserved_1yr_hourly = {t.reserved_hourly!r}",
            f"spot_hourly = {t.spot_hourly!r}",
            f"spot_reclaim_per_hour = {t.spot_reclaim_per_hour!r}",
            f"max_batch = {t.max_batch}",
            f"prefill_tokens_per_s = {t.prefill_tokens_per_s!r}",
            f"decode_tokens_per_s = {t.decode_tokens_per_s!r}",
            f"pools = {json.dumps(list(t.pools))}",
        ]
        if t.max_instances is not None:
            lines.append(f"max_instances = {t.max_instances}")
        lines.append("")
    return "\n".join(lines)


def reserved_baseline(setup: Setup, steps: int, slo: SloConfig) -> dict[str, int]:
    """Reserved nodes for the run: the 20th percentile of whole main-type nodes the demand needs.

    A commitment is a year-long decision taken from history (``cost-agent plan``); the demo only needs a
    defensible baseline that is busy most of the time.
    """
    itype = setup.catalog.main_type
    needed = [
        d.rps / rps_per_instance(itype, d.prompt_tokens, d.output_tokens, slo) if d.rps > 0 else 0.0
        for d in setup.demand[:steps]
    ]
    return {itype.name: math.floor(float(np.percentile(needed, 20))) if needed else 0}


@dataclass(slots=True)
class Sample:
    t_h: float
    demand_rps: float
    capacity: dict[str, float]


@dataclass(slots=True)
class Observed:
    plans: int = 0
    plans_after_restart: int = 0
    last_plan: AllocationPlan | None = None
    reports: list[MigrationReport] = field(default_factory=list)
    violations: int = 0
    samples: list[Sample] = field(default_factory=list)
    preemption_hours: list[float] = field(default_factory=list)
    agent_restarted: bool = False

    def plan(self, plan: AllocationPlan) -> None:
        self.plans += 1
        if self.agent_restarted:
            self.plans_after_restart += 1
        self.last_plan = plan


class AgentProcess:
    """``cost-agent run`` as a child process on the shared scaled clock."""

    def __init__(
        self, url: str, ns: str, catalog_path: Path, clock: ScaledClock, config_path: Path | None = None
    ) -> None:
        self.url, self.ns, self.catalog_path, self.clock = url, ns, catalog_path, clock
        self.config_path = config_path
        """A settings file for it (the Dynamo demo's [dynamo] and [actuator]); None: the defaults."""
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._reader: asyncio.Task[None] | None = None
        self.events: deque[dict[str, Any]] = deque(maxlen=5000)
        self._counts: Counter[str] = Counter()

    async def start(self) -> None:
        script = Path(sys.executable).parent / "cost-agent"
        command = [str(script)] if script.is_file() else [sys.executable, "-m", "agent"]
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("COST_AGENT_") or k.endswith("DATA_DIR")
        }
        env |= {
            "COST_AGENT_BUS__NAMESPACE": self.ns,
            "COST_AGENT_METRICS__PORT": "0",
            # The one agent, started again at once after its kill: no leader lease to wait out (a lease
            # left by a killed leader holds for [leader] lease_seconds, 40 simulated minutes at 240×).
            "COST_AGENT_LEADER__ENABLED": "false",
            # At 480× a 30 ms pause of this busy process is four simulated minutes: a worker is declared
            # lost only after two simulated minutes of silence (12 of its 10-second reports), not 15 s.
            "COST_AGENT_SPOT_MONITOR__MISSED_INTERVALS": "12",
        }
        self.proc = await asyncio.create_subprocess_exec(
            *command,
            "run",
            "--nats-url",
            self.url,
            "--catalog",
            str(self.catalog_path),
            "--log-format",
            "json",
            *(["--config", str(self.config_path)] if self.config_path is not None else []),
            "--log-level",
            "info",
            "--clock-speed",
            repr(self.clock.speed),
            "--clock-start",
            repr(self.clock.start),
            "--clock-anchor",
            repr(self.clock.anchor),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # Ctrl-C goes to the demo, which stops the agent itself
        )
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                self.events.append(event)
                self._counts[str(event.get("event"))] += 1

    def count(self, event: str) -> int:
        """How many log lines of this event the agent wrote (all of them, not only the last 5,000)."""
        return self._counts[event]

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()

    async def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within ``grace_s`` (a loaded machine drains slowly)."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            waiter = asyncio.ensure_future(self.proc.wait())
            done, _ = await asyncio.wait({waiter}, timeout=grace_s)
            if not done:
                await self.kill()
            await waiter
        if self._reader is not None:
            await asyncio.wait({self._reader}, timeout=2)
        return self.proc.returncode


def long_generation_mix(output_tokens: float, share: float, tokens: int) -> float:
    """The mean output length when ``share`` of the requests are long generations of ``tokens`` on
    average and the others ``output_tokens``."""
    return (1 - share) * output_tokens + share * tokens


def with_long_generations(setup: Setup, share: float, tokens: int, peak_nodes: int) -> Setup:
    """``setup``'s demand as the demo sends it: each step's mean output length with ``share`` of long
    generations of ``tokens`` mixed in, every rate scaled again so that the busiest step still needs
    ``peak_nodes`` nodes of the main type. The fleet, and so the cost, stays the trace's; the requests are
    fewer and longer."""
    if share == 0:
        return setup
    step_s = setup.sim.step_s
    mixed = tuple(
        DemandStep(
            setup.start_epoch + k * step_s,
            step_s,
            Demand(d.rps, d.prompt_tokens, long_generation_mix(d.output_tokens, share, tokens)),
        )
        for k, d in enumerate(setup.demand)
    )
    main = setup.catalog.main_type
    factor = peak_nodes_factor(DemandTrace("mixed", mixed), main, setup.sim.slo, peak_nodes)
    return dataclasses.replace(setup, demand=[step.demand.scaled(factor) for step in mixed])


def step_index(setup: Setup, t: float) -> int:
    """The setup's step holding clock time ``t`` (the first before it starts, the last after it ends)."""
    return min(max(int((t - setup.start_epoch) // setup.sim.step_s), 0), len(setup.demand) - 1)


def lognormal_length(rng: random.Random, mean: float) -> int:
    """A token count around ``mean``, lognormal with a coefficient of variation of about 1, as LLM prompt
    and output lengths are."""
    sigma = 0.8
    return max(1, int(rng.lognormvariate(math.log(max(mean, 1.0)) - sigma * sigma / 2, sigma)))


def output_length(rng: random.Random, mean: float, long_share: float, long_tokens: int) -> tuple[int, bool]:
    """One request's output length, and whether it is a long generation, where the mean output of the
    requests (long generations included, :func:`with_long_generations`) is ``mean``: with probability
    ``long_share`` ``long_tokens`` ± 50% (uniform), else lognormal around what they leave of ``mean``."""
    if long_share > 0 and rng.random() < long_share:
        return max(1, round(rng.uniform(0.5, 1.5) * long_tokens)), True
    if long_share < 1:
        mean = (mean - long_share * long_tokens) / (1 - long_share)
    return lognormal_length(rng, mean), False


class Traffic:
    """Poisson arrivals at the setup's rate (scaled down), token lengths around its means (lognormal), of
    which a share ``long_share`` are long generations: ``long_tokens`` output tokens ± 50% (uniform). The
    setup's mean output length counts them (:func:`with_long_generations`): the other requests make up the
    rest of it."""

    def __init__(
        self,
        setup: Setup,
        router: RouterEmulator,
        clock: ScaledClock,
        scale: float,
        seed: int,
        *,
        long_share: float = 0.0,
        long_tokens: int = 4000,
    ) -> None:
        self.setup, self.router, self.clock, self.scale = setup, router, clock, scale
        self.long_share, self.long_tokens = long_share, long_tokens
        self.rng = random.Random(seed)
        self.long_admitted = 0
        self.admitted = 0
        self.tokens = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()

    def demand_at(self, t: float) -> tuple[float, float, float]:
        """(rps, prompt tokens, output tokens) of the setup at clock time ``t``, scaled down."""
        d = self.setup.demand[step_index(self.setup, t)]
        return d.rps * self.scale, d.prompt_tokens, d.output_tokens

    async def run(self, stop: asyncio.Event, until: float, tick_s: float = 5.0) -> None:
        t = self.clock.now()
        while t < until and not await self.clock.wait_until(t + tick_s, stop):
            rps, prompt, output = self.demand_at(t)
            arrivals = np.random.default_rng(self.rng.getrandbits(32)).poisson(rps * tick_s)
            for _ in range(int(arrivals)):
                self.admitted += 1
                p = lognormal_length(self.rng, prompt)
                o, long = output_length(self.rng, output, self.long_share, self.long_tokens)
                self.long_admitted += long
                self.tokens += p + o
                task = asyncio.ensure_future(
                    self.router.admit(f"q{self.admitted}", p, o, prefix_blocks=[f"sys-{self.admitted % 8}"])
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            t += tick_s

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)


def capacity_by_tier(
    cloud: SimCloud, catalog: Catalog, prompt: float, output: float, slo: SloConfig
) -> dict[str, float]:
    out = {"reserved": 0.0, "spot": 0.0, "ondemand": 0.0}
    for inst in cloud.instances.values():
        if inst.state == "ready":
            itype: InstanceType = catalog.types[inst.instance_type]
            out[inst.tier] += rps_per_instance(itype, prompt, output, slo)
    return out


def check_invariant(cloud: SimCloud) -> int:
    """(type, pool, tier) keys whose launched + ready instances exceed the target of the plan the cloud
    applied last (draining ones are leaving, and do not count)."""
    return sum(
        1
        for (type_name, pool, tier), count in cloud.targets.items()
        if tier != "reserved" and cloud.live(type_name, pool, tier) > count
    )


async def _ask_cost(bus: Bus, attempts: int = 3) -> CostReport | None:
    for _ in range(attempts):
        try:
            reply = await bus.request(
                bus.subjects.cost_report_request, CostReportRequest(**bus.envelope()), CostReport, 3.0
            )
        except Exception:
            await asyncio.sleep(0.5)
            continue
        if not isinstance(reply, ErrorReply):
            return reply
    return None


@dataclass(frozen=True, slots=True)
class Scenario:
    """What a run replays, built before anything starts: the traces, the scaled-down catalog, the reserved
    baseline and the shared scaled clock."""

    setup: Setup
    catalog: Catalog
    """The catalog's node types at 1/``scale_down`` of their batch and throughput."""
    reserved: dict[str, int]
    clock: ScaledClock
    end: float
    """Clock time at which the run ends."""
    market_index: dict[tuple[str, str], int]

    @property
    def t0(self) -> float:
        return self.clock.start

    def hour(self, t: float) -> float:
        """Simulated hours since the start at clock time ``t``."""
        return (t - self.t0) / 3600

    def spot_available(self, type_name: str, pool: str, t: float) -> int | None:
        """Spot nodes the availability trace offers in a pool at clock time ``t`` (None: not a spot pool)."""
        j = self.market_index.get((type_name, pool))
        if j is None:
            return None
        return int(self.setup.market.available[step_index(self.setup, t), j])


def build_scenario(opts: DemoOptions) -> Scenario:
    from agent.config import resolve_catalog

    base = opts.catalog or resolve_catalog("seed")
    sim = SimConfig(step_s=60.0, notice_s=opts.notice_s, boot_s=opts.boot_s, warmup_days=0.0)
    try:
        setup = build_setup(base, opts.trace, opts.spot, sim, peak=opts.peak_nodes)
        setup = with_long_generations(setup, opts.long_share, opts.long_tokens, opts.peak_nodes)
    except (ValueError, OSError) as exc:
        raise DemoError(str(exc)) from None
    steps = max(1, math.ceil(opts.duration_h * 3600 / sim.step_s))
    clock = ScaledClock(opts.speed, start=setup.start_epoch)
    return Scenario(
        setup=setup,
        catalog=scaled_catalog(setup.catalog, opts.scale_down),
        reserved=reserved_baseline(setup, steps, sim.slo),
        clock=clock,
        end=clock.start + opts.duration_h * 3600,
        market_index=setup.market.index(),
    )


@dataclass(frozen=True, slots=True)
class _System:
    """The parts running in this process, and the agent process, once all have started."""

    bus: Bus
    agent: AgentProcess
    router: RouterEmulator
    cloud: SimCloud
    traffic: Traffic


async def run_demo(
    opts: DemoOptions,
    render: Callable[[dict[str, Any]], None] | None = None,
    stop: asyncio.Event | None = None,
) -> dict[str, Any]:
    """Run the demo; return its summary (what ``--json`` writes). Setting ``stop`` (Ctrl-C) ends it early,
    cleanly, with a summary of what ran.

    Each phase registers its own teardown as it starts, so whatever happens (an error, Ctrl-C) everything
    started is stopped, in reverse order, and the nats-server and the agent process are never left behind.
    """
    scenario = build_scenario(opts)
    stop = stop or asyncio.Event()
    ns = f"demo{uuid.uuid4().hex[:8]}"
    observed = Observed()
    async with contextlib.AsyncExitStack() as stack:
        url = _start_server(stack)
        catalog_path = _write_catalog(stack, ns, scenario.catalog)
        bus = await _connect(stack, url, ns, scenario.clock)
        agent = await _start_agent(stack, stop, url, ns, catalog_path, scenario.clock)
        await _observe(bus, observed)
        router, cloud = await _start_cloud(stack, stop, bus, scenario, opts)
        traffic = _start_traffic(stack, stop, scenario, router, opts)
        system = _System(bus, agent, router, cloud, traffic)
        await _watch(opts, scenario, system, observed, stop, render)
        return await _settle(opts, scenario, system, observed, stop)


# --- the phases, in the order they run -----------------------------------------------------------------


def _start_server(stack: contextlib.AsyncExitStack) -> str:
    """An embedded nats-server, stopped last."""
    server = NatsServer()
    stack.callback(server.stop)
    return server.start()


def _write_catalog(stack: contextlib.AsyncExitStack, ns: str, catalog: Catalog) -> Path:
    """The scaled-down catalog as a file for the agent process (``--catalog PATH``)."""
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"cost-agent-demo-{ns}"
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "catalog.toml"
    stack.callback(_remove_catalog, path)
    path.write_text(catalog_toml(catalog), encoding="utf-8")
    return path


def _remove_catalog(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
        path.parent.rmdir()


async def _connect(stack: contextlib.AsyncExitStack, url: str, ns: str, clock: ScaledClock) -> Bus:
    """The connection the simulated cloud, router and workers share."""
    nc = await nats.connect(url, name="demo-sim")
    stack.push_async_callback(_quietly, _close(nc))
    return Bus(nc, Subjects(ns), source="sim-cloud", clock=clock, metrics=AgentMetrics())


async def _close(nc: NATS) -> None:
    if not nc.is_closed:
        await nc.close()


async def _start_agent(
    stack: contextlib.AsyncExitStack,
    stop: asyncio.Event,
    url: str,
    ns: str,
    catalog_path: Path,
    clock: ScaledClock,
) -> AgentProcess:
    """``cost-agent run`` as a child process, ready once it logs ``agent_started`` (or on Ctrl-C)."""
    agent = AgentProcess(url, ns, catalog_path, clock)
    stack.push_async_callback(_quietly, agent.stop())
    await agent.start()
    await _wait_agent_ready(agent, stop)
    return agent


async def _observe(bus: Bus, observed: Observed) -> None:
    """Count the agent's plans and collect its migration reports (subscribed before the cloud, so that
    every plan the cloud applies has been counted)."""
    plans = msgspec.json.Decoder(AllocationPlan)
    reports = msgspec.json.Decoder(MigrationReport)

    async def on_plan(msg: Msg) -> None:
        observed.plan(plans.decode(msg.data))

    async def on_report(msg: Msg) -> None:
        observed.reports.append(reports.decode(msg.data))

    await bus.nc.subscribe(bus.subjects.plan_allocation, cb=on_plan)
    await bus.nc.subscribe(bus.subjects.migration_report_all, cb=on_report)
    await bus.settle()


DEFAULT_RELEASE_GRACE_S = 300.0


def release_grace_s(catalog: Catalog, long_tokens: int) -> float:
    """How long a node a plan gives up may drain: five minutes, or longer if it takes that to finish a
    batch of the longest generations and then the batch queued behind it (1.5 × ``long_tokens`` each, at
    the slowest type's per-sequence speed). Its requests are not moved: they finish in place, and what is
    still there when the grace ends is lost (:class:`~agent.sim.cloud.CloudConfig`)."""
    slowest = min(t.decode_tokens_per_s / t.max_batch for t in catalog.types.values())
    return max(DEFAULT_RELEASE_GRACE_S, 2 * 1.5 * long_tokens / slowest)


async def _start_cloud(
    stack: contextlib.AsyncExitStack, stop: asyncio.Event, bus: Bus, scenario: Scenario, opts: DemoOptions
) -> tuple[RouterEmulator, SimCloud]:
    """The simulated cloud (with its workers) and the router in front of them, once both are ready."""
    clock = scenario.clock
    # Retry waiting requests every few simulated seconds (about 10 ms at 480×), not every half second.
    router = RouterEmulator(bus, clock, dispatch_retry_s=5.0, submit_timeout_s=5.0)
    storm_at = opts.storm_at_h if opts.storm_at_h is not None else 0.4 * opts.duration_h
    cloud = SimCloud(
        bus,
        clock,
        catalog=scenario.catalog,
        config=CloudConfig(
            boot_s=opts.boot_s,
            notice_s=opts.notice_s,
            short_notice_s=opts.short_notice_s,
            short_notice_share=opts.short_notice_share,
            storm_start_s=storm_at * 3600,
            storm_duration_s=3600.0,
            storm_rate_per_hour=opts.storm_rate_per_hour,
            release_grace_s=release_grace_s(scenario.catalog, opts.long_tokens if opts.long_share > 0 else 0),
            seed=opts.seed,
            worker_step_s=5.0,
            metrics_interval_s=10.0,
        ),
        spot_available=scenario.spot_available,
        reserved=scenario.reserved,
    )
    stack.push_async_callback(_quietly, cloud.shutdown())
    _run_tasks(stack, stop, router.run(stop), cloud.run(stop))
    # Ctrl-C during start-up ends the actors before they are ready: the demo then ends with what ran.
    await _wait(
        lambda: stop.is_set() or (router.ready.is_set() and cloud.ready.is_set()),
        10,
        "the simulated cloud did not start",
    )
    return router, cloud


def _start_traffic(
    stack: contextlib.AsyncExitStack,
    stop: asyncio.Event,
    scenario: Scenario,
    router: RouterEmulator,
    opts: DemoOptions,
) -> Traffic:
    traffic = Traffic(
        scenario.setup,
        router,
        scenario.clock,
        1.0 / opts.scale_down,
        opts.seed,
        long_share=opts.long_share,
        long_tokens=opts.long_tokens,
    )
    _run_tasks(stack, stop, traffic.run(stop, scenario.end))
    return traffic


@dataclass(slots=True)
class _Watch:
    """The live phase's bookkeeping."""

    last_sample_h: float = -1.0
    last_render_h: float = -1.0
    preemptions_seen: int = 0
    killed: bool = False


async def _watch(
    opts: DemoOptions,
    scenario: Scenario,
    system: _System,
    observed: Observed,
    stop: asyncio.Event,
    render: Callable[[dict[str, Any]], None] | None,
) -> None:
    """Until the end (or ``stop``): check the plan invariant, sample capacity every five simulated minutes,
    note preemption notices, restart the agent once if asked, and render twice a second."""
    watch = _Watch()
    clock, cloud = scenario.clock, system.cloud
    while clock.now() < scenario.end and not stop.is_set():
        await _pause(stop, 0.25)
        now = clock.now()
        hour = scenario.hour(now)
        observed.violations += check_invariant(cloud)
        if hour - watch.last_sample_h >= 1 / 12:
            watch.last_sample_h = hour
            rps, prompt, output = system.traffic.demand_at(now)
            capacity = capacity_by_tier(cloud, scenario.catalog, prompt, output, scenario.setup.sim.slo)
            observed.samples.append(Sample(hour, rps, capacity))
        for _instance_id, notice_at, _deadline in cloud.preemptions[watch.preemptions_seen :]:
            observed.preemption_hours.append(scenario.hour(notice_at))
        watch.preemptions_seen = len(cloud.preemptions)
        if opts.kill_agent_at_h is not None and not watch.killed and hour >= opts.kill_agent_at_h:
            watch.killed = True
            await _restart_agent(opts, system.agent, observed, stop)
        if render is not None and (hour - watch.last_render_h) * 3600 >= opts.speed * 0.5:
            watch.last_render_h = hour
            render(_live_state(opts, scenario, system, observed, now))


async def _restart_agent(
    opts: DemoOptions, agent: AgentProcess, observed: Observed, stop: asyncio.Event
) -> None:
    """Chaos: SIGKILL the agent, let the rest of the system serve on without it, then start it again."""
    await agent.kill()
    await _pause(stop, opts.restart_after_s)
    agent.restarts += 1
    await agent.start()
    observed.agent_restarted = True


async def _settle(
    opts: DemoOptions, scenario: Scenario, system: _System, observed: Observed, stop: asyncio.Event
) -> dict[str, Any]:
    """Let what is in flight finish (bounded), settle the accounts, and write the summary and plot."""
    interrupted = stop.is_set()
    await system.traffic.drain()
    if not interrupted:
        await _wait(lambda: system.router.all_done(), 30 / max(opts.speed / 480, 0.5), None)
    cost = await _ask_cost(system.bus)
    now = scenario.clock.now()
    bill = system.cloud.bill(until=now)
    hours = round(scenario.hour(min(now, scenario.end)), 3) if interrupted else opts.duration_h
    summary = _summary(opts, scenario, system, observed, hours, cost, bill)
    summary["interrupted"] = interrupted
    summary["plot"] = _plot(opts, observed, scenario.catalog)
    if opts.json_path:
        _write(Path(opts.json_path), json.dumps(summary, indent=2))
    return summary


# --- helpers --------------------------------------------------------------------------------------------


def _run_tasks(
    stack: contextlib.AsyncExitStack, stop: asyncio.Event, *work: Coroutine[Any, Any, Any]
) -> None:
    """Run ``work`` until ``stop``; at teardown, set ``stop`` and give it five seconds to end."""
    tasks = [asyncio.ensure_future(w) for w in work]
    stack.push_async_callback(_end_tasks, stop, tasks)


async def _end_tasks(stop: asyncio.Event, tasks: Sequence[asyncio.Future[Any]]) -> None:
    stop.set()
    await asyncio.wait(tasks, timeout=5)


async def _quietly(step: Awaitable[object]) -> None:
    """A teardown step whose failure must neither keep the others from running nor hide the demo's own
    result or error."""
    with contextlib.suppress(Exception):
        await step


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    await wait_event(stop, seconds)


async def _wait(condition: Callable[[], bool], timeout_s: float, error: str | None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            if error is None:
                return
            raise DemoError(error)
        await asyncio.sleep(0.05)


async def _wait_agent_ready(agent: AgentProcess, stop: asyncio.Event) -> None:
    def started() -> bool:
        if agent.proc is not None and agent.proc.returncode is not None:
            raise DemoError(f"the agent process exited with {agent.proc.returncode} at start-up")
        return stop.is_set() or any(e.get("event") == "agent_started" for e in agent.events)

    await _wait(started, 30, "the agent process did not start within 30 s")


def _live_state(
    opts: DemoOptions, scenario: Scenario, system: _System, observed: Observed, now: float
) -> dict[str, Any]:
    cloud, catalog = system.cloud, scenario.catalog
    fleet: dict[str, int] = {"reserved": 0, "spot": 0, "ondemand": 0, "booting": 0, "draining": 0}
    for inst in cloud.instances.values():
        if inst.state == "ready":
            fleet[inst.tier] += 1
        elif inst.state == "launched":
            fleet["booting"] += 1
        elif inst.state == "draining":
            fleet["draining"] += 1
    summary = system.router.summary()
    last = observed.reports[-1] if observed.reports else None
    rps, _prompt, _output = system.traffic.demand_at(now)
    return {
        "hour": scenario.hour(now),
        "duration_h": opts.duration_h,
        "demand_rps": rps * opts.scale_down,
        "capacity_rps": sum(observed.samples[-1].capacity.values()) * opts.scale_down
        if observed.samples
        else 0.0,
        "fleet": fleet,
        "cost": cloud.bill().total,
        "plans": observed.plans,
        "preemptions": len(cloud.preemptions),
        "served": summary["completed"],
        "in_flight": summary["in_flight"],
        "requeued": summary["requeued"],
        "lost": summary["lost"],
        "moved": moved_requests(migration_totals(observed.reports)),
        "last_migration": None
        if last is None
        else {
            "instance": last.instance_id,
            "requests": last.requests,
            "finished": last.counts.finished_in_place,
            "moved": last.counts.kv_moved,
            "reprefilled": last.counts.reprefilled,
            "requeued": last.counts.requeued,
            "lost": last.lost,
        },
        "spot": {
            f"{name}/{pool}": (catalog.types[name].spot_hourly, scenario.spot_available(name, pool, now))
            for name, pool in catalog.pools()
        },
    }


def migration_totals(reports: Iterable[MigrationReport]) -> dict[str, int]:
    """Every count of :class:`~schemas.MigrationCounts` summed over ``reports``: what became of the
    requests in flight on the drained nodes."""
    totals: dict[str, int] = {}
    for report in reports:
        for name, count in msgspec.structs.asdict(report.counts).items():
            totals[name] = totals.get(name, 0) + count
    return totals or msgspec.structs.asdict(MigrationCounts())


def moved_requests(totals: Mapping[str, int]) -> int:
    """Requests that left a drained node before its deadline, by any path: every per-request count but
    ``finished_in_place`` (``failed`` counts attempts, each request of which is counted again elsewhere)."""
    return sum(count for name, count in totals.items() if name not in ("finished_in_place", "failed"))


def _summary(
    opts: DemoOptions,
    scenario: Scenario,
    system: _System,
    observed: Observed,
    hours: float,
    cost: CostReport | None,
    bill: CloudBill,
) -> dict[str, Any]:
    cloud, catalog = system.cloud, scenario.catalog
    r = system.router.summary()
    counts = migration_totals(observed.reports)
    on_notice = [rep for rep in observed.reports if rep.reason == "notice"]
    agent_cost = cost.total_cost if cost is not None else None
    full_tokens = system.traffic.tokens * opts.scale_down
    ondemand_equivalent = cost.ondemand_equivalent_cost if cost is not None else None
    agreement = (
        abs(agent_cost - bill.total) / bill.total if agent_cost is not None and bill.total > 0 else None
    )
    main = catalog.main_type
    peak_nodes = opts.peak_nodes
    table = [
        {"strategy": "all on-demand (same instance-hours)", "cost": ondemand_equivalent},
        {
            "strategy": f"all reserved ({peak_nodes} × {main.name} for the peak)",
            "cost": peak_nodes * main.reserved_hourly * hours,
        },
        {
            "strategy": f"all on-demand ({peak_nodes} × {main.name} for the peak)",
            "cost": peak_nodes * main.ondemand_hourly * hours,
        },
        {"strategy": "cost-agent (this run, cloud bill)", "cost": bill.total},
    ]
    return {
        "trace": opts.trace,
        "spot": opts.spot,
        "catalog": catalog.name,
        "simulated_hours": hours,
        "speed": opts.speed,
        "scale_down": opts.scale_down,
        "reserved": scenario.reserved,
        "requests_admitted": r["admitted"],
        "requests_served": r["completed"],
        "requests_migrated": counts["kv_moved"],
        "requests_reprefilled": counts["reprefilled"],
        "requests_requeued": r["requeued"],
        "requests_lost": r["lost"],
        "requests_unfinished": r["in_flight"],
        "requests_long": system.traffic.long_admitted,
        "requests_finished_in_place": counts["finished_in_place"],
        "requests_moved": moved_requests(counts),
        "migration_counts": counts,
        # Drains on a spot notice (the migration path), apart from those of workers gone silent (reason
        # "lost": the router requeues their requests from the prompt; a loaded machine makes some).
        "requests_moved_on_notice": moved_requests(migration_totals(on_notice)),
        "migration_counts_on_notice": migration_totals(on_notice),
        "migration_reports_on_notice": len(on_notice),
        "preemptions": len(cloud.preemptions),
        "short_notices": cloud.short_notices,
        "migration_reports": len(observed.reports),
        "migration_lost": sum(rep.lost for rep in observed.reports),
        "plans": observed.plans,
        "plans_after_agent_restart": observed.plans_after_restart,
        "plans_applied": cloud.plans_applied,
        "plan_violations": observed.violations,
        "agent_restarts": system.agent.restarts,
        "agent_cost": agent_cost,
        "cloud_bill": bill.total,
        "cloud_bill_by_tier": bill.by_tier,
        "cost_agreement": agreement,
        "cost_per_mtok": bill.total / (full_tokens / 1e6) if full_tokens > 0 else None,
        "cost_table": table,
    }


def _plot(opts: DemoOptions, observed: Observed, catalog: Catalog) -> str | None:
    if not observed.samples:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agent.sim.plot import capacity_panel

    hours = np.array([s.t_h for s in observed.samples])
    demand = np.array([s.demand_rps for s in observed.samples]) * opts.scale_down
    tiers = {
        t: np.array([s.capacity[t] for s in observed.samples]) * opts.scale_down
        for t in ("reserved", "spot", "ondemand")
    }
    fig, ax = plt.subplots(figsize=(11, 4.5))
    capacity_panel(ax, hours, demand, tiers, f"cost-agent demo: {opts.trace} on {catalog.name}")
    for k, h in enumerate(observed.preemption_hours):
        ax.axvline(
            h, color="crimson", linewidth=0.7, alpha=0.6, label="preemption notice" if k == 0 else None
        )
    ax.set_xlabel("simulated hours")
    ax.set_ylabel("requests/s (full scale)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(opts.plot_path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def print_summary(summary: dict[str, Any], out: Any = None) -> None:
    out = out or sys.stdout

    def p(*parts: object) -> None:
        print(*parts, file=out)

    hours, trace, catalog = summary["simulated_hours"], summary["trace"], summary["catalog"]
    p(f"\ncost-agent demo: {hours:g} simulated hours of {trace} on {catalog}")
    p("\n| Strategy | Cost for the period |")
    p("|---|---|")
    for row in summary["cost_table"]:
        cost = row["cost"]
        p(f"| {row['strategy']} | {'-' if cost is None else f'${cost:,.2f}'} |")
    mtok = summary["cost_per_mtok"]
    p(f"\ncost per 1M tokens: {'-' if mtok is None else f'${mtok:.3f}'}")
    agreement = summary["cost_agreement"]
    agent_cost = summary["agent_cost"]
    p(
        f"agent's cost report ${agent_cost:,.2f} vs the cloud's bill ${summary['cloud_bill']:,.2f}"
        f" ({agreement:.2%} apart)"
        if agent_cost is not None and agreement is not None
        else f"cloud bill ${summary['cloud_bill']:,.2f} (no cost report from the agent)"
    )
    p(
        f"requests: {summary['requests_served']:,} served ({summary['requests_long']:,} long generations), "
        f"{summary['requests_requeued']:,} requeued, {summary['requests_lost']:,} lost (router's count); "
        f"{summary['requests_unfinished']:,} unfinished at the end"
    )
    counts, notice = summary["migration_counts"], summary["migration_counts_on_notice"]
    p(
        f"on reclaimed nodes ({summary['migration_reports_on_notice']} drains on a notice): "
        f"{notice['finished_in_place']:,} finished in place, {summary['requests_moved_on_notice']:,} moved "
        f"({notice['kv_moved']:,} KV-moved, {notice['reprefilled']:,} re-prefilled, "
        f"{notice['requeued']:,} requeued); all {summary['migration_reports']} migration reports: "
        f"{summary['requests_moved']:,} moved ({counts['requeued']:,} requeued), "
        f"{summary['migration_lost']:,} lost"
    )
    p(
        f"preemptions: {summary['preemptions']} ({summary['short_notices']} with a short notice); "
        f"plans: {summary['plans']} "
        f"(applied {summary['plans_applied']}); instances above plan: {summary['plan_violations']}"
    )
    if summary.get("plot"):
        p(f"plot: {summary['plot']}")
