"""``agent.bus.settle``: once it returns, the server has what the connection sent before it, so a peer's
message published right after a subscription is delivered.

``nc.flush()`` alone did not ensure it (nats-py writes the PING ahead of the buffered SUB): on this machine
it missed 11-238 of 1,500 such first messages; a benchmark once lost 1,537 of 2,000 and two tests were flaky
for it. Each trial below is a fresh subscription and a single message, the exchange that raced.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS

from agent.bus import settle

TRIALS = 300


@pytest.fixture
async def pair(nats_url: str) -> AsyncIterator[tuple[NATS, NATS]]:
    nc, peer = await nats.connect(nats_url), await nats.connect(nats_url)
    try:
        yield nc, peer
    finally:
        await peer.close()
        await nc.close()


@pytest.mark.parametrize("inbox", [True, False], ids=["through-an-inbox", "without-an-inbox"])
async def test_a_settled_subscription_receives_the_first_message_a_peer_publishes(
    pair: tuple[NATS, NATS], inbox: bool
) -> None:
    nc, peer = pair
    prefix = uuid.uuid4().hex
    missed = []
    for trial in range(TRIALS):
        subject = f"{prefix}.{trial}"
        sub = await nc.subscribe(subject)
        await settle(nc, inbox=inbox)
        await peer.publish(subject, b"first")
        await settle(peer)
        try:
            await sub.next_msg(timeout=2.0)
        except nats.errors.TimeoutError:
            missed.append(trial)
        await sub.unsubscribe()
    assert missed == []


async def test_settle_leaves_no_subscription_of_its_own_behind(pair: tuple[NATS, NATS]) -> None:
    nc, _ = pair
    await nc.subscribe(f"{uuid.uuid4().hex}.x")
    before = len(nc._subs)  # nats-py offers no public count
    await settle(nc)
    await settle(nc, inbox=False)
    assert len(nc._subs) == before
