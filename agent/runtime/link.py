"""Whether this process's NATS connection is up, and since when on the actors' clock.

While the link is down nothing reaches the agent, so silence then says nothing about the workers
(:func:`agent.core.workers.counted_silence`), and a plan made then would reach nobody until the link is
back, behind any others (the optimizer holds its triggers instead).

:meth:`Link.watch` chains onto nats-py's disconnected/reconnected callbacks of a connection already made,
whoever made it (:func:`agent.runtime.connection.connect`, or a test's plain ``nats.connect``), so every
:class:`~agent.bus.Bus` knows its link without a change to how connections are opened. nats-py 2.x keeps
those callbacks as ``_disconnected_cb``/``_reconnected_cb`` (no public setter); ``uv.lock`` pins it and
``tests/actors/test_outage.py`` fails if that changes.

A half-open link (the peer or a NAT box gone without a TCP reset) is not seen by nats-py for minutes (its
pings go every 2 minutes), while everything sent to the agent is lost. :meth:`Link.answering` sends a
message of its own through the server and back before silence is judged; a link that does not answer
counts as down until one does, and its return gives every worker a full silence window, like a
reconnection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import SlowConsumerError

from agent.runtime.clock import Clock
from agent.runtime.metrics import AgentMetrics

_Callback = Callable[[], Awaitable[None]]

ROUND_TRIP_TIMEOUT_SECONDS: Final = 2.0
"""A server's PONG takes milliseconds; one missing for this long means the link is not carrying data."""

log = structlog.get_logger("agent.runtime.link")


class Link:
    def __init__(self, clock: Clock, connected: bool = True) -> None:
        self.clock = clock
        self.connected_since: float | None = clock.now() if connected else None
        """The clock's time of the latest (re)connection; None while disconnected."""
        self.outages = 0
        self._nc: NATS | None = None
        self._silent = False
        """The last round trip went unanswered while nats-py still said connected."""
        self._echo_subject: str | None = None
        self._echoes = 0
        self._waiting: dict[str, asyncio.Future[None]] = {}

    @property
    def connected(self) -> bool:
        return self.connected_since is not None

    def lost(self) -> None:
        if self.connected_since is not None:
            self.connected_since = None
            self.outages += 1

    def restored(self) -> None:
        self.connected_since = self.clock.now()

    async def answering(self) -> float | None:
        """``connected_since`` once a message of ours has been through the server and back now; None while
        none comes back.

        Called before judging silence, so a link that says connected but carries nothing (half-open)
        declares nobody lost. An echo on a private inbox rather than nats-py's ``flush()``: a flush that
        times out leaves its cancelled future behind, and the late PONG then breaks nats-py's read loop
        (``InvalidStateError``, seen with nats-py 2.x); a late echo is simply ignored. Without a watched
        connection it is ``connected_since``.
        """
        if self._nc is None or (self.connected_since is None and not self._silent):
            return self.connected_since
        try:
            await self._echo(self._nc)
        except Exception as err:  # a timeout, or a connection closing meanwhile: not answering either way
            if not self._silent:
                self._silent = True
                self.lost()
                error = type(err).__name__
                log.warning("nats_link_silent", error=error, timeout_s=ROUND_TRIP_TIMEOUT_SECONDS)
            return None
        if self._silent:
            self._silent = False
            self.restored()
            log.info("nats_link_answering")
        return self.connected_since

    async def _echo(self, nc: NATS) -> None:
        if self._echo_subject is None:
            subject = nc.new_inbox()
            await nc.subscribe(subject, cb=self._echoed)
            self._echo_subject = subject
        self._echoes += 1
        token = str(self._echoes)
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[token] = waiter
        try:
            await nc.publish(self._echo_subject, token.encode())
            async with asyncio.timeout(ROUND_TRIP_TIMEOUT_SECONDS):
                await waiter
        finally:
            self._waiting.pop(token, None)

    async def _echoed(self, msg: Msg) -> None:
        waiter = self._waiting.get(msg.data.decode(errors="replace"))
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @classmethod
    def watch(cls, nc: NATS, clock: Clock, metrics: AgentMetrics | None = None) -> Link:
        """A link that follows ``nc``'s state from now on (the callbacks already set still run first), and
        counts into ``metrics`` its disconnections and the messages the client drops for a slow consumer."""
        link = cls(clock, connected=nc.is_connected)
        link._nc = nc
        on_disconnect: _Callback | None = nc._disconnected_cb
        on_reconnect: _Callback | None = nc._reconnected_cb
        on_error: Callable[[Exception], Awaitable[None]] | None = nc._error_cb

        async def disconnected() -> None:
            if metrics is not None and not (nc.is_closed or nc.is_draining):
                metrics.nats_disconnections.inc()
            link.lost()
            if on_disconnect is not None:
                await on_disconnect()

        async def error(err: Exception) -> None:
            if metrics is not None and isinstance(err, SlowConsumerError):
                # the subscription's pattern, not the message's subject: a bounded label
                metrics.messages_dropped.labels(err.sub.subject).inc()
            if on_error is not None:
                await on_error(err)

        async def reconnected() -> None:
            link._silent = False
            link.restored()
            if on_reconnect is not None:
                await on_reconnect()

        nc._disconnected_cb = disconnected
        nc._error_cb = error
        nc._reconnected_cb = reconnected
        return link
