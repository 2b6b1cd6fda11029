"""The agent as a service: connect, build the actors, supervise them, serve metrics, shut down cleanly.

Connecting and shutting down follow :mod:`agent.runtime.connection` (the node sidecar's too): the stop
event is set (timers return at once), the actors are awaited, only what is still running after the grace
period is cancelled, and the NATS connection is drained (every subscription handles what it already
received, everything published is flushed, then the connection closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry

from agent.actors.actuator import ActuatorActor
from agent.actors.dynamo_source import DynamoSource
from agent.actors.migration import MigrationCoordinatorActor
from agent.actors.optimizer import OptimizerTickActor
from agent.actors.profiler import DemandProfilerActor
from agent.actors.reporter import CostReporterActor
from agent.actors.spot_monitor import SpotMonitorActor
from agent.actuators.build import build_driver
from agent.bus import Bus
from agent.config import ConfigError, Settings
from agent.core.catalog import Catalog
from agent.core.demand_bins import DemandBins
from agent.core.fleet_state import FleetState
from agent.core.workers import WorkerRegistry
from agent.runtime.actor import Actor
from agent.runtime.bus_security import redact_url
from agent.runtime.clock import Clock, RealClock
from agent.runtime.connection import connect, shut_down
from agent.runtime.http import Health, MetricsServer
from agent.runtime.metrics import AgentMetrics
from agent.runtime.nats_server import NatsServer
from agent.runtime.signals import stop_on_signals
from agent.runtime.state_store import JetStreamStore, NoStore, Snapshots, StateStore, bucket_name
from agent.runtime.supervisor import RestartPolicy, Supervisor
from agent.subjects import Subjects

log = structlog.get_logger("agent.service")


@dataclass(slots=True)
class Agent:
    """Every actor of one agent on one connection; ``start`` and ``stop`` run and end them."""

    bus: Bus
    profiler: DemandProfilerActor
    optimizer: OptimizerTickActor
    reporter: CostReporterActor
    spot_monitor: SpotMonitorActor
    migration: MigrationCoordinatorActor
    supervisor: Supervisor
    stop_event: asyncio.Event
    grace_s: float
    _task: asyncio.Task[None] | None = field(default=None)
    dynamo_source: DynamoSource | None = field(default=None)
    actuator: ActuatorActor | None = field(default=None)
    store: StateStore = field(default_factory=NoStore)

    @property
    def actors(self) -> list[Actor]:
        return list(self.supervisor.actors)

    async def start(self) -> None:
        """Start every actor and return once each is subscribed and ready (each has loaded its saved
        state by then). A state store that cannot be used raises StateStoreError, before any actor runs."""
        await self.store.open()
        self._task = asyncio.create_task(self.supervisor.run(), name="supervisor")
        waits = [asyncio.ensure_future(a.ready.wait()) for a in self.actors]
        done, _ = await asyncio.wait([self._task, *waits], return_when=asyncio.FIRST_COMPLETED)
        while self._task not in done and not all(w.done() for w in waits):
            done, _ = await asyncio.wait([self._task, *waits], return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        if self._task.done():
            self._task.result()
            raise RuntimeError(f"agent stopped while starting (actor {self.supervisor.failed} failed)")

    async def wait(self) -> None:
        """Until the stop event is set (a signal, or an actor past its restart budget)."""
        await self.stop_event.wait()

    async def stop(self) -> None:
        self.stop_event.set()
        await shut_down(self.bus.nc, [self._task] if self._task else [], self.grace_s)

    def health(self) -> dict[str, object]:
        running = dict(self.supervisor.running)
        connected = self.bus.nc.is_connected
        ok = connected and all(running.values()) and not self.stop_event.is_set()
        return {"status": "ok" if ok else "unavailable", "nats_connected": connected, "actors": running}


def build_store(nc: NATS, settings: Settings) -> StateStore:
    """The state store ``[state]`` asks for: one JetStream KV bucket per ``[bus] namespace``, or none."""
    state = settings.state
    if state.store == "none":
        return NoStore()
    bucket = bucket_name(settings.bus.namespace)
    return JetStreamStore(nc, bucket, history=state.history, replicas=state.replicas)


def build_agent(
    nc: NATS,
    settings: Settings,
    catalog: Catalog,
    clock: Clock,
    metrics: AgentMetrics | None = None,
    store: StateStore | None = None,
) -> Agent:
    """Every actor on ``nc``; ``store`` (default: :func:`build_store`) keeps what they must not lose."""
    metrics = metrics or AgentMetrics()
    bus = Bus(nc, Subjects(settings.bus.namespace), source=settings.bus.source, clock=clock, metrics=metrics)
    store = store if store is not None else build_store(nc, settings)

    def snapshots(key: str, actor: str) -> Snapshots:
        return Snapshots(
            store,
            key,
            actor=actor,
            clock=clock,
            metrics=metrics,
            interval_s=settings.state.snapshot_seconds,
            silenced=lambda: bus.silenced(),  # read at each save: the leader's runner sets it later
        )

    profiler = settings.profiler.build()
    bins = DemandBins(
        bin_seconds=settings.profiler.bin_minutes * 60.0,
        close_delay_s=settings.profiler.close_delay_seconds,
        stale_after_s=settings.profiler.stale_after_seconds,
    )
    stop = asyncio.Event()
    profiler_actor = DemandProfilerActor(
        bus, clock, profiler, bins, snapshots=snapshots("demand_profile", DemandProfilerActor.name)
    )
    optimizer = OptimizerTickActor(
        bus,
        clock,
        catalog=catalog,
        slo=settings.slo_config(),
        settings=settings.optimizer,
        profiler=profiler,
        bins=bins,
        fleet=FleetState(catalog),
        limits=settings.limits,
        snapshots=snapshots("optimizer", OptimizerTickActor.name),
        rolling=settings.rolling_demand(),
    )
    reporter = CostReporterActor(
        bus,
        clock,
        catalog=catalog,
        fleet=FleetState(catalog),
        interval_s=settings.reporter.interval_seconds,
        price_max_age_s=settings.optimizer.spot_price_max_age_seconds,
        snapshots=snapshots("cost_reporter", CostReporterActor.name),
    )
    registry = WorkerRegistry()
    spot_monitor = SpotMonitorActor(
        bus,
        clock,
        settings=settings.spot_monitor,
        registry=registry,
        capacity_lost=optimizer.capacity_lost,
        snapshots=snapshots("spot_monitor", SpotMonitorActor.name),
    )
    dynamo_source: DynamoSource | None = None
    if settings.dynamo.frontend_urls:
        dynamo_source = DynamoSource(bus, clock, settings.dynamo, bins)  # the profiler's bins
    actuator = _build_actuator(bus, clock, settings, catalog, dynamo_source)
    migration = MigrationCoordinatorActor(
        bus,
        clock,
        catalog=catalog,
        settings=settings.migration,
        registry=registry,
        drained_elsewhere=actuator.runs if actuator is not None else None,
        snapshots=snapshots("migration", MigrationCoordinatorActor.name),
        # Most of the shutdown grace: what is left reports the drains still running.
        shutdown_wait_s=max(
            settings.supervisor.shutdown_grace_seconds - 1.0, settings.supervisor.shutdown_grace_seconds / 2
        ),
        registry_ready=spot_monitor.ready,  # set once the spot monitor has loaded the registry
    )
    sup = settings.supervisor
    actors: list[Actor] = [profiler_actor, optimizer, reporter, spot_monitor, migration]
    actors += [a for a in (dynamo_source, actuator) if a is not None]
    supervisor = Supervisor(
        actors,
        stop,
        metrics,
        RestartPolicy(max_restarts=sup.max_restarts, window_s=sup.window_seconds),
    )
    return Agent(
        bus,
        profiler_actor,
        optimizer,
        reporter,
        spot_monitor,
        migration,
        supervisor,
        stop,
        sup.shutdown_grace_seconds,
        dynamo_source=dynamo_source,
        actuator=actuator,
        store=store,
    )


def _build_actuator(
    bus: Bus, clock: Clock, settings: Settings, catalog: Catalog, dynamo_source: DynamoSource | None
) -> ActuatorActor | None:
    """The actuator actor ``[actuator] mode`` asks for; None for mode ``none``."""
    a = settings.actuator
    try:
        driver = build_driver(a, clock, namespace=settings.bus.namespace)
    except ValueError as err:
        raise ConfigError(f"[actuator] {err}") from None
    if driver is None:
        return None
    return ActuatorActor(
        bus,
        clock,
        driver,
        catalog=catalog,
        boot_s=a.boot_seconds,
        make_before_break=a.make_before_break,
        poll_s=a.poll_seconds,
        price_max_age_s=settings.optimizer.spot_price_max_age_seconds,
        frontend_migrations=dynamo_source.migrations_read if dynamo_source is not None else None,
        report_after_s=10 * settings.dynamo.scrape_interval_seconds,
        quiet_s=2 * settings.dynamo.scrape_interval_seconds,
    )


async def serve(
    settings: Settings, catalog: Catalog, nats_url: str | None = None, clock: Clock | None = None
) -> int:
    """``cost-agent run``: until SIGTERM/SIGINT (exit 0) or an actor past its restart budget (exit 1)."""
    url = nats_url or settings.bus.url or os.environ.get("NATS_URL", "")
    server: NatsServer | None = None
    if not url:
        store_dir = settings.state.store_dir
        server = NatsServer(store_dir=Path(store_dir) if store_dir else None)  # JetStream: [state]
        url = server.start()
        log.info("nats_embedded", url=redact_url(url), log_file=str(server.log_file))
    try:
        if settings.leader.active(settings.state.store):
            from agent.replica import serve_replica  # it builds on this module's Agent

            return await serve_replica(settings, catalog, url, clock or RealClock())
        nc = await connect(url, settings.bus.source, settings.bus)
        agent = build_agent(nc, settings, catalog, clock or RealClock())
        agent.bus.metrics.leader.set(1)  # alone, without a lease: it leads all the same
        with stop_on_signals(agent.stop_event):
            return await _serve_agent(agent, settings, catalog, url)
    finally:
        if server is not None:
            server.stop()


async def _serve_agent(agent: Agent, settings: Settings, catalog: Catalog, url: str) -> int:
    """The metrics endpoint and the actors, until the stop event; the exit code."""
    async with contextlib.AsyncExitStack() as stack:
        await serve_metrics(stack, agent.bus.metrics.registry, agent.health, settings)
        await agent.start()
        log_started(agent, settings, catalog, url)
        await agent.wait()
        log.info("agent_stopping", failed_actor=agent.supervisor.failed)
        await agent.stop()
    code = 1 if agent.supervisor.failed else 0
    log.info("agent_stopped", exit_code=code)
    return code


async def serve_metrics(
    stack: contextlib.AsyncExitStack, registry: CollectorRegistry, health: Health, settings: Settings
) -> None:
    """GET /metrics and /healthz as ``[metrics]`` says, until ``stack`` closes."""
    if settings.metrics.enabled:
        http = MetricsServer(registry, health, settings.metrics.host, settings.metrics.port)
        port = await http.start()
        stack.push_async_callback(http.stop)  # after the agent's own shutdown: /healthz says so
        log.info("metrics_serving", url=f"http://{settings.metrics.host}:{port}/metrics", port=port)


def log_started(agent: Agent, settings: Settings, catalog: Catalog, url: str) -> None:
    log.info(
        "agent_started",
        nats_url=redact_url(url),
        namespace=settings.bus.namespace,
        catalog=catalog.name,
        actors=[a.name for a in agent.actors],
    )
