"""One NATS connection per process: connect with the agent's retry rules, shut down drain-first.

The agent (:mod:`agent.service`) and the node sidecar (:mod:`agent.providers.sidecar`) both start and stop
through here. It imports nothing of the planning core, so a spot node's sidecar starts without numpy or
scipy.

Connect: :data:`STARTUP_CONNECT_ATTEMPTS` tries at start-up, so a wrong URL fails within seconds with a
:class:`ConnectionError` naming it; after that the connection reconnects for ever. A lost connection is
logged (``nats_disconnected``, then ``nats_reconnected``); our own drain or close is not.

Shut down (:func:`shut_down`), after the caller has set its stop event:

1. the work tasks are awaited, up to the grace period: they end on the stop event alone, and anything
   they publish on the way out still goes, because the connection is not draining yet;
2. what is still running then is cancelled (``shutdown_cancelled``): cancelling comes last because on
   Python 3.11 a task cancelled inside nats-py's ``flush()`` can hang (CONVENTIONS.md);
3. the connection is drained: each subscription handles what it has already received, everything
   published is flushed, the connection closes. A drain that fails (a connection that is reconnecting
   cannot drain) or outlasts what is left of the grace period is cut short by closing the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any, Final

import structlog
from nats.aio.client import Client as NATS

log = structlog.get_logger("agent.runtime.connection")

STARTUP_CONNECT_ATTEMPTS: Final = 3
MIN_DRAIN_SECONDS: Final = 0.5
"""The drain's time even when the work used up the grace period: a task that hung must not also cost the
messages already published."""
CANCEL_WAIT_SECONDS: Final = 1.0
"""How long a cancelled task (or drain) gets to unwind before shutdown goes on without it."""


async def connect(url: str, name: str) -> NATS:
    """A connection to ``url`` that reconnects for ever once made; ConnectionError if it cannot be made."""
    nc = NATS()

    async def on_error(err: Exception) -> None:
        log.warning("nats_error", error=str(err))

    async def on_disconnect() -> None:
        # nats-py marks the connection closed before it calls back, so our own close is recognised here.
        if not (nc.is_closed or nc.is_draining):
            log.warning("nats_disconnected")

    async def on_reconnect() -> None:
        log.info("nats_reconnected")

    try:
        await nc.connect(
            url,
            name=name,
            connect_timeout=5,
            allow_reconnect=True,
            # nats-py retries a failed *first* connect as often as it would reconnect later; with -1 that
            # is for ever, and a wrong URL would hang start-up. Few tries first, then reconnect for ever.
            max_reconnect_attempts=STARTUP_CONNECT_ATTEMPTS,
            reconnect_time_wait=1,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
        )
    except Exception as err:
        raise ConnectionError(f"cannot connect to NATS at {url}: {err or type(err).__name__}") from None
    nc.options["max_reconnect_attempts"] = -1
    return nc


async def shut_down(nc: NATS, work: Iterable[asyncio.Task[Any]], grace_s: float) -> list[str]:
    """Await ``work``, cancel what outlasts ``grace_s``, then drain ``nc`` (steps in the module docstring).

    Returns the names of the tasks that had to be cancelled. The tasks' own results and exceptions are
    left for the caller to read.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    pending = {task for task in work if not task.done()}
    if pending:
        _, pending = await asyncio.wait(pending, timeout=grace_s)
    for task in pending:
        log.warning("shutdown_cancelled", task=task.get_name())
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=CANCEL_WAIT_SECONDS)
    await drain(nc, max(deadline - loop.time(), MIN_DRAIN_SECONDS))
    return sorted(task.get_name() for task in pending)


async def drain(nc: NATS, timeout_s: float) -> None:
    """Drain ``nc`` within ``timeout_s``, or close it outright. A drain already under way is left to
    finish on its own."""
    if nc.is_closed or nc.is_draining:
        return
    draining = asyncio.ensure_future(nc.drain())
    done, _ = await asyncio.wait({draining}, timeout=timeout_s)
    if draining in done and draining.exception() is None:
        return
    if draining in done:
        log.warning("drain_failed", error=str(draining.exception()))
    else:
        log.warning("drain_timed_out", timeout_s=timeout_s)
    with contextlib.suppress(Exception):
        await nc.close()
    if draining not in done:
        await asyncio.wait({draining}, timeout=CANCEL_WAIT_SECONDS)
        if not draining.done():
            draining.cancel()
        elif not draining.cancelled():
            draining.exception()  # retrieved: no "never retrieved" warning
