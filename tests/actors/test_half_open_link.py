"""A half-open link to NATS (the agent's TCP connection says connected, nothing gets through) is not node
loss either: the spot monitor asks the server for a round trip before it judges silence.

The agent reaches the real nats-server through a TCP relay the test can stall in both directions without
closing anything, which is what a dead peer or a NAT box that forgot the flow looks like: nats-py's own
pings (every 2 minutes) notice nothing within the test. The workers (the peer) are connected directly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from harness import Inbox, Peer, eventually, handled, start_agent, stop_agent
from test_outage import advance
from test_spot_monitor import fleet, report

from agent.service import Agent
from schemas import DrainOrder


class StallableRelay:
    """127.0.0.1 TCP relay to the server; ``stall()`` holds every byte in both directions until
    ``resume()``; connections stay open throughout."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"nats://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def stall(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                await self.flowing.wait()
                sink.write(data)
                await sink.drain()
        sink.close()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)


@pytest.fixture
async def relayed(nats_url: str) -> AsyncIterator[tuple[Agent, Peer, StallableRelay]]:
    relay = StallableRelay(int(nats_url.rsplit(":", 1)[1]))
    await relay.start()
    agent, peer = await start_agent(relay.url, peer_url=nats_url)
    try:
        yield agent, peer, relay
    finally:
        relay.resume()
        await stop_agent(agent, peer)
        await relay.close()


async def test_silence_over_a_half_open_link_declares_nobody_lost(
    relayed: tuple[Agent, Peer, StallableRelay],
) -> None:
    agent, peer, relay = relayed
    drains = await Inbox.open(peer.nc, peer.subjects.spot_drain_all, DrainOrder)
    await fleet(peer, "node-a", "spot")
    await report(peer, "a-0", "node-a")
    await handled(agent, "spot_monitor", "evt.worker.metrics.*", 1)

    relay.stall()
    for _ in range(2):  # two silence windows of the fake clock, each judged by a health check
        checks = agent.spot_monitor.ticks
        peer.clock.advance(15)
        await eventually(lambda c=checks: agent.spot_monitor.ticks > c, 15)  # type: ignore[misc]
    assert agent.spot_monitor.drains == 0
    assert not agent.bus.link.connected  # the round trip went unanswered...
    assert agent.bus.nc.is_connected  # ...while nats-py has noticed nothing

    relay.resume()  # everything held is delivered; the next health check hears the server again
    await advance(agent, peer, 10)
    await eventually(lambda: agent.bus.link.connected, 15)
    await report(peer, "a-0", "node-a")
    await handled(agent, "spot_monitor", "evt.worker.metrics.*", 2)
    await advance(agent, peer, 10)
    assert agent.spot_monitor.drains == 0
    assert drains.pending == 0

    # Really silent from now on: lost one window later, as without the stall.
    await advance(agent, peer, 20)
    order = await drains.next()
    assert (order.instance_id, order.worker_ids, order.reason) == ("node-a", ["a-0"], "lost")
