"""Messages the NATS client drops for a handler that fell behind are counted, not lost in silence.

nats-py drops a message when a subscription's queue is full and reports it through the connection's error
callback; the agent's link counts each into ``costagent_messages_dropped_total`` (per subscription) and the
connection logs the first per subscription. The queue is made small here so that a real server's burst
fills it; the agent's subscriptions use nats-py's default (512k messages), the counting is the same.
"""

from __future__ import annotations

import asyncio
import uuid

import nats
from harness import eventually
from nats.aio.msg import Msg

from agent.bus import Bus, settle
from agent.runtime.clock import RealClock
from agent.runtime.connection import connect
from agent.runtime.metrics import AgentMetrics
from agent.subjects import Subjects


async def test_messages_dropped_for_a_slow_handler_are_counted_per_subscription(nats_url: str) -> None:
    metrics = AgentMetrics()
    nc = await connect(nats_url, "slow-consumer-test")
    bus = Bus(nc, Subjects(f"t{uuid.uuid4().hex[:8]}"), source="test", clock=RealClock(), metrics=metrics)
    subject = bus.subjects.worker_metrics_all
    release = asyncio.Event()
    handled = 0

    async def stuck(_msg: Msg) -> None:
        nonlocal handled
        handled += 1
        await release.wait()

    await nc.subscribe(subject, cb=stuck, pending_msgs_limit=10)
    await settle(nc)
    peer = await nats.connect(nats_url)
    try:
        for n in range(200):
            await peer.publish(bus.subjects.worker_metrics(f"w{n}"), b"{}")
        await settle(peer)
        await settle(nc)  # the server has delivered all 200 to the agent's connection by now

        def dropped() -> float:
            return (
                metrics.registry.get_sample_value("costagent_messages_dropped_total", {"subject": subject})
                or 0.0
            )

        # one in the handler, ten queued, the rest dropped
        await eventually(lambda: handled + 10 + dropped() >= 200, 10)
        assert dropped() >= 180
        release.set()
    finally:
        await peer.close()
        await nc.close()
