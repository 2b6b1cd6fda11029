"""Waiting on a condition in the tests against real processes (Dynamo, the agent): polled, bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def eventually(condition: Callable[[], bool], what: str, timeout_s: float) -> None:
    """Wait until ``condition()`` holds, or fail saying ``what`` was awaited after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        # A poll: the conditions are processes, files and an actor's state, with no event to await.
        await asyncio.sleep(0.01)


async def eventually_async(probe: Callable[[], Awaitable[bool]], what: str, timeout_s: float) -> None:
    """:func:`eventually` for a condition that must be asked for (an HTTP call, a KV read)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await probe():
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        # A poll, as above; each ask is itself a round trip, so this rests little.
        await asyncio.sleep(0.05)
