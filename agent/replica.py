"""``cost-agent run`` as one replica among several: only the replica holding the leader lease runs the agent.

With ``[leader]`` on (the default when ``[state] store = "jetstream"``), the process connects, serves
``/metrics`` and ``/healthz`` (status ``follower``, 200, while it waits) and campaigns for the lease
(:mod:`agent.runtime.leadership`, rules in :mod:`agent.core.lease`). On winning it builds and starts the
agent (:func:`agent.service.build_agent`), whose actors load their saved state from JetStream: a takeover
is a warm restart. On losing the lease it stops the agent and campaigns again; on SIGTERM it stops the
agent, releases the lease (a follower takes over at its next look) and exits 0; when an actor passes its
restart budget it releases the lease and exits 1.

Each term's agent has a NATS connection of its own, apart from the one the lease is kept on. An actor
stopped by its stop event leaves its subscriptions to the connection's drain (:class:`agent.runtime.actor
.Actor`), so on a connection that stays open a stopped agent would still receive and answer; draining the
term's own connection ends every subscription and flushes what was published. It is also a fence: a
term still stopping at its deadline has that connection closed. The other fence is checked at every
publish (:attr:`agent.bus.Bus.silenced`): a process frozen past its lease (a paused VM, a starved event
loop) wakes with messages to handle before its lease keeper has had a turn, and says nothing of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from agent.config import Settings
from agent.core.catalog import Catalog
from agent.core.lease import lease_bucket
from agent.runtime.bus_security import redact_url
from agent.runtime.clock import Clock
from agent.runtime.connection import CANCEL_WAIT_SECONDS, connect, drain
from agent.runtime.leadership import KvLease, Leadership
from agent.runtime.metrics import AgentMetrics
from agent.runtime.signals import stop_on_signals
from agent.service import Agent, build_agent, log_started, serve_metrics

log = structlog.get_logger("agent.replica")


@dataclass(slots=True)
class AgentTerm:
    """One term of leadership: an agent on a connection of its own."""

    agent: Agent

    @property
    def ended(self) -> asyncio.Event:
        return self.agent.stop_event

    @property
    def failed(self) -> bool:
        return self.agent.supervisor.failed is not None

    def health(self) -> dict[str, object]:
        return self.agent.health()

    async def stop(self, silent_by: float) -> None:
        log.info("agent_stopping", failed_actor=self.agent.supervisor.failed)
        stopping = asyncio.ensure_future(self.agent.stop())
        await asyncio.wait({stopping}, timeout=max(silent_by - time.monotonic(), 0.0))
        if not stopping.done():
            # Past the fence a follower may lead: whatever is still running speaks no more.
            log.warning("leader_fenced")
            with contextlib.suppress(Exception):
                await self.agent.bus.nc.close()
        await stopping


async def start_term(
    settings: Settings,
    catalog: Catalog,
    url: str,
    clock: Clock,
    metrics: AgentMetrics,
    silenced: Callable[[], bool],
) -> AgentTerm:
    nc = await connect(url, settings.bus.source, settings.bus)
    agent: Agent | None = None
    try:
        agent = build_agent(nc, settings, catalog, clock, metrics)
        agent.bus.silenced = silenced
        await agent.start()
    except BaseException:
        # Half started (or cancelled at the fence): its actors are cut off at once.
        if agent is not None:
            agent.stop_event.set()
        with contextlib.suppress(Exception):
            await nc.close()
        raise
    log_started(agent, settings, catalog, url)
    return AgentTerm(agent)


async def serve_replica(settings: Settings, catalog: Catalog, url: str, clock: Clock) -> int:
    """Until SIGTERM/SIGINT (0) or an actor past its restart budget while leading (1)."""
    timing = settings.leader.timing()
    replica = settings.leader.replica()
    metrics = AgentMetrics()
    nc = await connect(url, f"{settings.bus.source}:{replica}", settings.bus)
    stop = asyncio.Event()
    try:
        bucket = lease_bucket(settings.bus.namespace)
        lease = await KvLease.open(nc, bucket, replica, timing.poll_s)
        begin = functools.partial(start_term, settings, catalog, url, clock, metrics)
        leadership = Leadership(lease, nc, timing, begin, metrics)
        with stop_on_signals(stop):
            async with contextlib.AsyncExitStack() as stack:
                await serve_metrics(stack, metrics.registry, leadership.health, settings)
                log.info(
                    "replica_started",
                    replica=replica,
                    nats_url=redact_url(url),
                    namespace=settings.bus.namespace,
                    bucket=bucket,
                    lease_s=timing.lease_s,
                )
                code = await leadership.run(stop)
    finally:
        await drain(nc, CANCEL_WAIT_SECONDS)
    log.info("agent_stopped", exit_code=code, replica=replica)
    return code
