"""One NATS connection per process: connect with the agent's retry rules, shut down drain-first.

The agent (:mod:`agent.service`) and the node sidecar (:mod:`agent.providers.sidecar`) both start and stop
through here. It imports nothing of the planning core, so a spot node's sidecar starts without numpy or
scipy.

Connect: :data:`STARTUP_CONNECT_ATTEMPTS` tries at start-up, so a wrong URL fails within seconds with a
:class:`ConnectionError` naming it; after that the connection reconnects for ever. The credentials and TLS
files are a :class:`BusSecurity` (the agent's ``[bus]`` settings extend it; the sidecar reads the same
``COST_AGENT_BUS__*`` variables). A refused certificate or password fails start-up at once (a retry would
be refused again), and the whole start-up connect is bounded by the connect timeout, so a server that never
completes a handshake fails it too; the one line says what the server or TLS said. A URL reaches a log or
an error only through :func:`redact_url`. A lost connection is logged (``nats_disconnected``, then
``nats_reconnected``); our own drain or close is not.

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
import ssl
from collections.abc import Iterable
from typing import Any, Final

import structlog
from nats.aio.client import Client as NATS
from nats.errors import SlowConsumerError

from agent.runtime.bus_security import (
    RECONNECT_WAIT_SECONDS,
    STARTUP_CONNECT_ATTEMPTS,
    BusSecurity,
    redact_text,
    redact_url,
)

log = structlog.get_logger("agent.runtime.connection")

MIN_DRAIN_SECONDS: Final = 0.5
"""The drain's time even when the work used up the grace period: a task that hung must not also cost the
messages already published."""
CANCEL_WAIT_SECONDS: Final = 1.0
"""How long a cancelled task (or drain) gets to unwind before shutdown goes on without it."""
MAX_SLOW_SUBJECTS_LOGGED: Final = 100
"""Subscriptions whose first dropped message is logged; the agent has a dozen."""


async def connect(url: str, name: str, security: BusSecurity | None = None) -> NATS:
    """A connection to ``url`` that reconnects for ever once made; ConnectionError if it cannot be made
    within ``security``'s start-up bound."""
    security = security or BusSecurity()
    nc = NATS()

    startup_errors: list[str] = []
    started = asyncio.Event()
    refused = asyncio.Event()  # a retry cannot help: the server's certificate or our credentials

    slow_subjects: set[str] = set()

    async def on_error(err: Exception) -> None:
        if isinstance(err, SlowConsumerError):
            # nats-py reports each dropped message: one line per subscription, the metric counts them all
            if err.sub.subject not in slow_subjects and len(slow_subjects) < MAX_SLOW_SUBJECTS_LOGGED:
                slow_subjects.add(err.sub.subject)
                log.warning(
                    "nats_slow_consumer", subject=err.sub.subject, counted="costagent_messages_dropped"
                )
            return
        text = redact_text(str(err) or type(err).__name__, url)
        if started.is_set():
            log.warning("nats_error", error=text)
        else:  # start-up: its one-line failure tells the cause (nats-py's own error says only "no servers")
            startup_errors.append(text)
            if isinstance(err, ssl.SSLCertVerificationError) or "authorization violation" in text.lower():
                refused.set()

    async def on_disconnect() -> None:
        # nats-py marks the connection closed before it calls back, so our own close is recognised here.
        if not (nc.is_closed or nc.is_draining):
            log.warning("nats_disconnected")

    async def on_reconnect() -> None:
        log.info("nats_reconnected")

    where = redact_url(url)
    connecting = asyncio.ensure_future(
        nc.connect(
            url,
            name=name,
            allow_reconnect=True,
            # nats-py retries a failed *first* connect as often as it would reconnect later; with -1 that
            # is for ever, and a wrong URL would hang start-up. Few tries first, then reconnect for ever.
            max_reconnect_attempts=STARTUP_CONNECT_ATTEMPTS,
            reconnect_time_wait=RECONNECT_WAIT_SECONDS,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            **security.connect_options(),
        )
    )
    # nats-py bounds each attempt, but retries a refused certificate or password as it would a network
    # error, and a TLS handshake that never completes has no bound: this bounds the whole.
    gave_up = asyncio.ensure_future(refused.wait())
    bound_s = security.startup_bound_seconds()
    done, _ = await asyncio.wait({connecting, gave_up}, timeout=bound_s, return_when=asyncio.FIRST_COMPLETED)
    gave_up.cancel()
    if connecting in done and connecting.exception() is None:
        nc.options["max_reconnect_attempts"] = -1
        started.set()
        return nc
    # each distinct error once, in order: the cause (an authorization violation) and what followed
    cause = "; ".join(dict.fromkeys(startup_errors))
    if connecting in done:
        err = connecting.exception()
        cause = cause or redact_text(str(err) or type(err).__name__, url)
    else:
        connecting.cancel()
        if not refused.is_set():
            cause = f"no connection within {bound_s:g} s ({cause or 'no answer'})"
    with contextlib.suppress(Exception):
        await nc.close()
    await asyncio.wait({connecting}, timeout=CANCEL_WAIT_SECONDS)
    raise ConnectionError(f"cannot connect to NATS at {where}: {cause}")


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
