"""How a process on the bus connects and shuts down (agent.runtime.connection), on a real nats-server:
the work ends first, then the connection drains, and cancelling comes only after the grace period."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from harness import eventually, fresh_namespace
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from structlog.testing import capture_logs

from agent.bus import settle
from agent.runtime.connection import connect, shut_down
from agent.runtime.nats_server import NatsServer


@pytest.fixture
async def peer(nats_url: str) -> AsyncIterator[NATS]:
    nc = await nats.connect(nats_url)
    yield nc
    await nc.close()


def named(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == event]


async def test_what_the_work_publishes_on_its_way_out_is_delivered_then_the_connection_closes(
    nats_url: str, peer: NATS
) -> None:
    subject = f"{fresh_namespace()}.evt.spot.notice.i-1"
    inbox = await peer.subscribe(subject)
    await settle(peer)
    with capture_logs() as logs:
        nc = await connect(nats_url, "test")
        stop = asyncio.Event()

        async def poller() -> None:
            await stop.wait()
            # The read that was under way when the stop came in finds a notice: it must still go out.
            # The sleep is the behaviour under test: work that is still running after the stop.
            await asyncio.sleep(0.1)
            await nc.publish(subject, b"last notice")

        task = asyncio.create_task(poller(), name="poller")
        stop.set()
        assert await shut_down(nc, [task], grace_s=5.0) == []
    assert nc.is_closed
    assert task.done()
    assert task.exception() is None
    assert (await inbox.next_msg(timeout=5)).data == b"last notice"
    assert named(logs, "nats_disconnected") == []  # our own close is not news


async def test_each_subscription_handles_what_it_received_before_the_connection_closes(
    nats_url: str, peer: NATS
) -> None:
    subject = f"{fresh_namespace()}.evt.worker.metrics.w-1"
    nc = await connect(nats_url, "test")
    handled: list[bytes] = []

    async def handle(msg: Msg) -> None:
        handled.append(msg.data)

    try:
        await nc.subscribe(subject, cb=handle)
        await settle(nc)
        for k in range(200):
            await peer.publish(subject, b"%d" % k)
        await settle(peer)
        await eventually(lambda: len(handled) > 0)  # received; most still queued for the callback
        await shut_down(nc, [], grace_s=5.0)
    finally:
        # A failure above must not leave the connection to be collected in a later test, where its
        # ResourceWarning (an error here) would fail that test instead (seen once in CI).
        if not nc.is_closed:
            await nc.close()
    assert nc.is_closed
    assert handled == [b"%d" % k for k in range(200)]


async def test_work_that_ignores_the_stop_is_cancelled_after_the_grace_period_and_the_drain_still_runs(
    nats_url: str, peer: NATS
) -> None:
    subject = f"{fresh_namespace()}.evt.plan.allocation"
    inbox = await peer.subscribe(subject)
    await settle(peer)
    nc = await connect(nats_url, "test")
    stuck = asyncio.create_task(asyncio.Event().wait(), name="stuck")
    await nc.publish(subject, b"published before the stop")
    began = time.monotonic()
    with capture_logs() as logs:
        assert await shut_down(nc, [stuck], grace_s=0.2) == ["stuck"]
    assert time.monotonic() - began < 2.0
    assert stuck.cancelled()
    assert nc.is_closed
    assert (await inbox.next_msg(timeout=5)).data == b"published before the stop"
    assert [entry["task"] for entry in named(logs, "shutdown_cancelled")] == ["stuck"]


async def test_a_wrong_url_fails_at_start_naming_it() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: every attempt is refused
        url = f"nats://127.0.0.1:{sock.getsockname()[1]}"
        began = time.monotonic()
        with pytest.raises(ConnectionError, match=re.escape(f"cannot connect to NATS at {url}")):
            await connect(url, "test")
    assert time.monotonic() - began < 10.0


async def test_a_lost_server_is_logged_and_a_connection_that_cannot_drain_is_closed() -> None:
    server = NatsServer()
    url = server.start()
    with capture_logs() as logs:
        nc = await connect(url, "test")
        server.stop()
        await eventually(lambda: bool(named(logs, "nats_disconnected")), timeout_s=10)
        began = time.monotonic()
        await shut_down(nc, [], grace_s=1.0)  # reconnecting: it cannot drain, so it is closed
    assert time.monotonic() - began < 3.0
    assert nc.is_closed
    assert named(logs, "drain_failed")
