"""Waiting on a condition in the tests against real processes (Dynamo, the agent): polled, bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def eventually(condition: Callable[[], bool], what: str, timeout_s: float) -> None:
    """Wait until ``condition()`` holds, or fail saying ``what`` was awaited after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        # A poll: the conditions are processes, files and an actor's state, with no event to await.
        await asyncio.sleep(0.01)
