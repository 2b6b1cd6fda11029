"""Fixtures for actor tests: a running agent on a fake clock and a peer connection, per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from harness import Peer, start_agent, stop_agent

from agent.service import Agent


@pytest.fixture
async def running(nats_url: str) -> AsyncIterator[tuple[Agent, Peer]]:
    agent, peer = await start_agent(nats_url)
    try:
        yield agent, peer
    finally:
        await stop_agent(agent, peer)
