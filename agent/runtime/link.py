"""Whether this process's NATS connection is up, and since when on the actors' clock.

While the link is down nothing reaches the agent, so silence then says nothing about the workers
(:func:`agent.core.workers.counted_silence`), and a plan made then would reach nobody until the link is
back, behind any others (the optimizer holds its triggers instead).

:meth:`Link.watch` chains onto nats-py's disconnected/reconnected callbacks of a connection already made,
whoever made it (:func:`agent.runtime.connection.connect`, or a test's plain ``nats.connect``), so every
:class:`~agent.bus.Bus` knows its link without a change to how connections are opened. nats-py 2.x keeps
those callbacks as ``_disconnected_cb``/``_reconnected_cb`` (no public setter); ``uv.lock`` pins it and
``tests/actors/test_outage.py`` fails if that changes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS

from agent.runtime.clock import Clock

_Callback = Callable[[], Awaitable[None]]


class Link:
    def __init__(self, clock: Clock, connected: bool = True) -> None:
        self.clock = clock
        self.connected_since: float | None = clock.now() if connected else None
        """The clock's time of the latest (re)connection; None while disconnected."""
        self.outages = 0

    @property
    def connected(self) -> bool:
        return self.connected_since is not None

    def lost(self) -> None:
        if self.connected_since is not None:
            self.connected_since = None
            self.outages += 1

    def restored(self) -> None:
        self.connected_since = self.clock.now()

    @classmethod
    def watch(cls, nc: NATS, clock: Clock) -> Link:
        """A link that follows ``nc``'s state from now on (the callbacks already set still run first)."""
        link = cls(clock, connected=nc.is_connected)
        on_disconnect: _Callback | None = nc._disconnected_cb
        on_reconnect: _Callback | None = nc._reconnected_cb

        async def disconnected() -> None:
            link.lost()
            if on_disconnect is not None:
                await on_disconnect()

        async def reconnected() -> None:
            link.restored()
            if on_reconnect is not None:
                await on_reconnect()

        nc._disconnected_cb = disconnected
        nc._reconnected_cb = reconnected
        return link
