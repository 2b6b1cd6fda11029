"""Actor base: subscriptions and an optional timer, run until stopped or crashed.

An actor declares what it listens to (:meth:`Actor.subscriptions`: our JSON messages with :class:`Listen`,
a foreign wire format such as Dynamo's msgpack event plane with :class:`ListenBytes`) and, for a timer
actor, an interval and :meth:`Actor.on_timer`. :meth:`Actor.run` subscribes, sets ``ready``, and
returns when the stop event is set; it raises when a handler or the timer crashes, after
unsubscribing, so that the supervisor can start it again from a clean slate. State kept on the actor
object survives a restart; a subscription does not (:meth:`Actor.on_start` and :meth:`Actor.on_stop`
bracket each run).

The timer keeps a drift-free schedule (``next += interval``). Deadlines already past when a tick starts are
covered by it (not bunched); one that came due while a tick ran is run at once after it, as one tick
(skipping it too made a step wait a whole interval when the clock moved on during a long tick: a bin
closed late, a held notice released late). It waits through the clock, so a fake clock drives it in tests
and a stop wakes it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from agent.bus import Bus, Handler
from agent.runtime.clock import Clock
from schemas import Message


@dataclass(frozen=True, slots=True)
class Listen:
    subject: str
    kind: type[Message]
    handler: Handler[Any]


@dataclass(frozen=True, slots=True)
class ListenBytes:
    """A foreign wire format: ``decode`` turns the bytes into a value or raises ValueError (counted as
    malformed under ``tag``); see :meth:`agent.bus.Bus.subscribe_bytes`."""

    subject: str
    tag: str
    decode: Callable[[bytes], Any]
    handler: Callable[[Any, Msg], Awaitable[None]]


class Actor:
    name: ClassVar[str]

    def __init__(self, bus: Bus, clock: Clock, *, interval_s: float | None = None) -> None:
        if interval_s is not None and not interval_s > 0:
            raise ValueError(f"{type(self).__name__}: timer interval must be > 0, got {interval_s!r}")
        self.bus = bus
        self.clock = clock
        self.interval_s = interval_s
        self.ready = asyncio.Event()
        self.stopping = asyncio.Event()
        """The stop event of the current run: long work started by a handler waits on it too."""
        self.ticks = 0

    def subscriptions(self) -> Sequence[Listen | ListenBytes]:
        return ()

    def listen_bus(self) -> Bus:
        """The bus the subscriptions are made on: the agent's own, unless the actor reads another NATS
        (Dynamo's event plane on a server of its own)."""
        return self.bus

    async def on_start(self) -> None:
        """Called at each (re)start, before subscribing."""

    async def on_stop(self) -> None:
        """Called at the end of each run (stopped or crashed), after unsubscribing: release what
        :meth:`on_start` acquired."""

    async def on_timer(self) -> None:
        """Called every ``interval_s`` seconds of the actor's clock (timer actors only)."""

    async def run(self, stop: asyncio.Event) -> None:
        self.stopping = stop
        loop = asyncio.get_running_loop()
        crashed: asyncio.Future[None] = loop.create_future()

        def on_crash(err: BaseException) -> None:
            if not crashed.done():
                crashed.set_exception(err)

        subs: list[Subscription] = []
        waits: list[asyncio.Future[Any]] = [crashed]
        try:
            await self.on_start()
            for listen in self.subscriptions():
                subs.append(await self._subscribe(listen, on_crash))
            if subs:
                # The server knows our interest before anyone is told we are ready.
                await self.listen_bus().settle()
            if self.interval_s is not None:
                waits.append(asyncio.ensure_future(self._timer(stop, self.interval_s)))
            waits.append(asyncio.ensure_future(stop.wait()))
            self.ready.set()
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                future.result()  # re-raises a crash of a handler or of the timer
        finally:
            self.ready.clear()
            for future in waits[1:]:
                if not future.done():
                    future.cancel()
            if not crashed.done():
                crashed.cancel()
            elif not crashed.cancelled():
                crashed.exception()  # retrieved: it was raised above
            nc = self.listen_bus().nc
            if not stop.is_set() and not (nc.is_closed or nc.is_draining):
                for sub in subs:
                    with contextlib.suppress(NatsError):
                        await sub.unsubscribe()
            await self.on_stop()

    async def _subscribe(
        self, listen: Listen | ListenBytes, on_crash: Callable[[BaseException], None]
    ) -> Subscription:
        if isinstance(listen, Listen):
            return await self.listen_bus().subscribe(
                listen.subject, listen.kind, listen.handler, actor=self.name, on_crash=on_crash
            )
        return await self.listen_bus().subscribe_bytes(
            listen.subject, listen.tag, listen.decode, listen.handler, actor=self.name, on_crash=on_crash
        )

    async def _timer(self, stop: asyncio.Event, interval: float) -> None:
        deadline = self.clock.now() + interval
        while not await self.clock.wait_until(deadline, stop):
            started = self.clock.now()
            await self.on_timer()
            self.ticks += 1
            deadline += interval
            if deadline <= started:  # already past when this tick began: it covered them
                deadline += interval * ((started - deadline) // interval + 1)
            now = self.clock.now()
            if deadline <= now:  # came due while it ran: once more, at once
                deadline = now
