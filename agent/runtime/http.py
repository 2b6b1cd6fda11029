"""The metrics and health endpoint: ``GET /metrics`` (Prometheus text format) and ``GET /healthz``.

An aiohttp server rather than prometheus-client's threaded one, so it starts and stops with the agent's
event loop and can report the agent's own health: 200 with ``{"status": "ok"}`` while NATS is connected
and every actor runs (or, for a replica that does not lead, ``{"status": "follower"}``), 503 with the
reasons otherwise (``/health`` is the same). ``HEAD`` is answered too; any other method is 405, any other
path 404.

A connection that sends nothing for ``idle_timeout_s`` seconds, before its first request or between two,
is closed, so idle or half-open connections cannot pile up; however many there are, each new request is
answered on its own. A request trickled a header line at a time is cut off too: each line does not restart
the timeout (aiohttp >= 3.14.4, pinned; tests/unit/test_metrics_endpoint.py checks both).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Health = Callable[[], dict[str, object]]

HEALTHY: Final = frozenset({"ok", "follower"})
"""The statuses answered 200: a follower replica ([leader]) waiting to take over is healthy too."""

DEFAULT_IDLE_TIMEOUT_SECONDS: Final = 15.0
"""Longer than Prometheus's default scrape timeout (10 s), so a slow scrape is never cut off."""
_SHUTDOWN_SECONDS: Final = 1.0
"""How long a request being answered at shutdown may still take: every answer here is immediate."""


class MetricsServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        health: Health,
        host: str,
        port: int,
        *,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_SECONDS,
    ) -> None:
        if not idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s: must be > 0, got {idle_timeout_s!r}")
        self.registry = registry
        self.health = health
        self.host = host
        self.port = port
        self.idle_timeout_s = idle_timeout_s
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Listen; returns the port (the one the system chose, for port 0)."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/health", self._healthz)
        app.router.add_route("*", "/{path:.*}", _elsewhere)
        runner = web.AppRunner(
            app,
            access_log=None,
            keepalive_timeout=self.idle_timeout_s,
            shutdown_timeout=_SHUTDOWN_SECONDS,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _healthz(self, _request: web.Request) -> web.Response:
        report = self.health()
        return web.Response(
            status=200 if report.get("status") in HEALTHY else 503,
            body=msgspec.json.encode(report) + b"\n",
            content_type="application/json",
        )


async def _elsewhere(request: web.Request) -> web.Response:
    if request.method not in ("GET", "HEAD"):
        return web.Response(status=405, text="GET only\n", headers={"Allow": "GET, HEAD"})
    return web.Response(status=404, text="try /metrics or /healthz\n")
