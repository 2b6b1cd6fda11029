"""The agent as a service: connect, build the actors, supervise them, serve metrics, shut down cleanly.

Shutdown is drain-first (CONVENTIONS.md, Python 3.11): the stop event is set (timers return at once), the
NATS connection is drained (every subscription handles what it already received, then the connection
closes), the actors are awaited, and only what is still running after the grace period is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass, field

import nats
import structlog
from nats.aio.client import Client as NATS

from agent.actors.migration import MigrationCoordinatorActor
from agent.actors.optimizer import OptimizerTickActor
from agent.actors.profiler import DemandProfilerActor
from agent.actors.reporter import CostReporterActor
from agent.actors.spot_monitor import SpotMonitorActor
from agent.bus import Bus
from agent.config import Settings
from agent.core.catalog import Catalog
from agent.core.demand_bins import DemandBins
from agent.core.fleet_state import FleetState
from agent.core.workers import WorkerRegistry
from agent.runtime.actor import Actor
from agent.runtime.clock import Clock, RealClock
from agent.runtime.http import MetricsServer
from agent.runtime.metrics import AgentMetrics
from agent.runtime.nats_server import NatsServer
from agent.runtime.supervisor import RestartPolicy, Supervisor
from agent.subjects import Subjects

log = structlog.get_logger("agent.service")

STARTUP_CONNECT_ATTEMPTS = 3


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

    @property
    def actors(self) -> list[Actor]:
        return list(self.supervisor.actors)

    async def start(self) -> None:
        """Start every actor and return once each is subscribed and ready."""
        self._task = asyncio.ensure_future(self.supervisor.run())
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
        nc = self.bus.nc
        drain = asyncio.ensure_future(_drain(nc))
        pending = {drain} | ({self._task} if self._task else set())
        _, pending = await asyncio.wait(pending, timeout=self.grace_s)
        for task in pending:
            log.warning("shutdown_cancelled", task=repr(task.get_coro()))
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        if not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()

    def health(self) -> dict[str, object]:
        running = dict(self.supervisor.running)
        connected = self.bus.nc.is_connected
        ok = connected and all(running.values()) and not self.stop_event.is_set()
        return {"status": "ok" if ok else "unavailable", "nats_connected": connected, "actors": running}


async def _drain(nc: NATS) -> None:
    if nc.is_closed or nc.is_draining:
        return
    try:
        await nc.drain()
    except Exception as err:  # a connection that is reconnecting cannot drain: close it instead
        log.warning("drain_failed", error=str(err))
        await nc.close()


def build_agent(
    nc: NATS, settings: Settings, catalog: Catalog, clock: Clock, metrics: AgentMetrics | None = None
) -> Agent:
    metrics = metrics or AgentMetrics()
    bus = Bus(nc, Subjects(settings.bus.namespace), source=settings.bus.source, clock=clock, metrics=metrics)
    profiler = settings.profiler.build()
    bins = DemandBins(
        bin_seconds=settings.profiler.bin_minutes * 60.0,
        close_delay_s=settings.profiler.close_delay_seconds,
        stale_after_s=settings.profiler.stale_after_seconds,
    )
    stop = asyncio.Event()
    profiler_actor = DemandProfilerActor(bus, clock, profiler, bins)
    optimizer = OptimizerTickActor(
        bus,
        clock,
        catalog=catalog,
        slo=settings.slo_config(),
        settings=settings.optimizer,
        profiler=profiler,
        bins=bins,
        fleet=FleetState(catalog),
    )
    reporter = CostReporterActor(
        bus,
        clock,
        catalog=catalog,
        fleet=FleetState(catalog),
        interval_s=settings.reporter.interval_seconds,
        price_max_age_s=settings.optimizer.spot_price_max_age_seconds,
    )
    registry = WorkerRegistry()
    spot_monitor = SpotMonitorActor(
        bus, clock, settings=settings.spot_monitor, registry=registry, capacity_lost=optimizer.capacity_lost
    )
    migration = MigrationCoordinatorActor(
        bus, clock, catalog=catalog, settings=settings.migration, registry=registry
    )
    sup = settings.supervisor
    supervisor = Supervisor(
        [profiler_actor, optimizer, reporter, spot_monitor, migration],
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
    )


async def connect(url: str, name: str, closing: asyncio.Event | None = None) -> NATS:
    """A connection that reconnects for ever; ``closing`` set means a disconnect is ours, not news."""

    async def on_error(err: Exception) -> None:
        log.warning("nats_error", error=str(err))

    async def on_disconnect() -> None:
        if closing is None or not closing.is_set():
            log.warning("nats_disconnected")

    async def on_reconnect() -> None:
        log.info("nats_reconnected")

    nc = await nats.connect(
        url,
        name=name,
        connect_timeout=5,
        allow_reconnect=True,
        # nats-py retries a failed *first* connect as often as it would reconnect later; with -1 that is
        # for ever, and a wrong URL would hang start-up. Few tries first, then reconnect for ever.
        max_reconnect_attempts=STARTUP_CONNECT_ATTEMPTS,
        reconnect_time_wait=1,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
    nc.options["max_reconnect_attempts"] = -1
    return nc


async def serve(
    settings: Settings, catalog: Catalog, nats_url: str | None = None, clock: Clock | None = None
) -> int:
    """``cost-agent run``: until SIGTERM/SIGINT (exit 0) or an actor past its restart budget (exit 1)."""
    url = nats_url or settings.bus.url or os.environ.get("NATS_URL", "")
    server: NatsServer | None = None
    if not url:
        server = NatsServer()
        url = server.start()
        log.info("nats_embedded", url=url, log_file=str(server.log_file))
    try:
        closing = asyncio.Event()
        try:
            nc = await connect(url, settings.bus.source, closing)
        except Exception as err:
            raise ConnectionError(f"cannot connect to NATS at {url}: {err or type(err).__name__}") from None
        agent = build_agent(nc, settings, catalog, clock or RealClock())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop_event.set)
        http: MetricsServer | None = None
        if settings.metrics.enabled:
            http = MetricsServer(
                agent.bus.metrics.registry, agent.health, settings.metrics.host, settings.metrics.port
            )
            port = await http.start()
            log.info("metrics_serving", url=f"http://{settings.metrics.host}:{port}/metrics", port=port)
        await agent.start()
        log.info(
            "agent_started",
            nats_url=url,
            namespace=settings.bus.namespace,
            catalog=catalog.name,
            actors=[a.name for a in agent.actors],
        )
        await agent.wait()
        log.info("agent_stopping", failed_actor=agent.supervisor.failed)
        closing.set()
        await agent.stop()
        if http is not None:
            await http.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        code = 1 if agent.supervisor.failed else 0
        log.info("agent_stopped", exit_code=code)
        return code
    finally:
        if server is not None:
            server.stop()
