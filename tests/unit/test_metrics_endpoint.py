"""The metrics and health endpoint: what it answers, and that idle connections neither pile up nor stop
it answering. A real server on 127.0.0.1, read with the agent's own HTTP client and with raw sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import msgspec
import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from agent.providers.httpclient import HttpClient
from agent.runtime.http import MetricsServer
from agent.runtime.metrics import AgentMetrics


class Endpoint:
    def __init__(self, idle_timeout_s: float) -> None:
        self.metrics = AgentMetrics()
        self.report: dict[str, object] = {"status": "ok", "nats_connected": True}
        self.server = MetricsServer(
            self.metrics.registry, lambda: self.report, "127.0.0.1", 0, idle_timeout_s=idle_timeout_s
        )
        self.url = ""

    async def start(self) -> None:
        self.url = f"http://127.0.0.1:{await self.server.start()}"

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.server.port)


@pytest.fixture
async def endpoint_with() -> AsyncIterator[Callable[[float], Endpoint]]:
    endpoints: list[Endpoint] = []

    def make(idle_timeout_s: float) -> Endpoint:
        endpoints.append(Endpoint(idle_timeout_s))
        return endpoints[-1]

    yield make
    for endpoint in endpoints:
        await endpoint.server.stop()


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    async with HttpClient() as client:
        yield client


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Read until the server closes the connection (True); False if it sent something instead."""
    return await reader.read(1) == b""


async def test_metrics_in_prometheus_text_and_health_as_json(
    endpoint_with: Callable[[float], Endpoint], http: HttpClient
) -> None:
    endpoint = endpoint_with(10.0)
    await endpoint.start()
    endpoint.metrics.messages_published.labels("plan.allocation.v1").inc()

    metrics = await http.request("GET", endpoint.url + "/metrics", timeout_s=5)
    assert metrics.status == 200
    assert metrics.headers["content-type"] == CONTENT_TYPE_LATEST
    assert b'costagent_messages_published_total{type="plan.allocation.v1"} 1.0' in metrics.body

    health = await http.request("GET", endpoint.url + "/healthz", timeout_s=5)
    assert (health.status, health.headers["content-type"]) == (200, "application/json")
    assert msgspec.json.decode(health.body) == {"status": "ok", "nats_connected": True}

    endpoint.report = {"status": "unavailable", "nats_connected": False, "actors": {"optimizer": False}}
    for path in ("/healthz", "/health"):
        down = await http.request("GET", endpoint.url + path, timeout_s=5)
        assert down.status == 503
        assert msgspec.json.decode(down.body) == endpoint.report


async def test_head_has_no_body_other_methods_and_paths_are_refused(
    endpoint_with: Callable[[float], Endpoint], http: HttpClient
) -> None:
    endpoint = endpoint_with(10.0)
    await endpoint.start()
    head = await http.request("HEAD", endpoint.url + "/healthz", timeout_s=5)
    assert (head.status, head.body) == (200, b"")
    for path in ("/metrics", "/healthz", "/anything"):
        refused = await http.request("POST", endpoint.url + path, timeout_s=5)
        assert refused.status == 405, path
    missing = await http.request("GET", endpoint.url + "/", timeout_s=5)
    assert (missing.status, missing.body) == (404, b"try /metrics or /healthz\n")


async def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout(
    endpoint_with: Callable[[float], Endpoint],
) -> None:
    endpoint = endpoint_with(0.3)
    await endpoint.start()
    silent = await endpoint.connect()
    half = await endpoint.connect()
    half[1].write(b"GET /metr")  # a request line that never ends
    served = await endpoint.connect()
    served[1].write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # answered, then kept alive and idle
    began = time.monotonic()
    async with asyncio.timeout(5):
        status_line = await served[0].readline()
        await served[0].readuntil(b"}\n")
        assert status_line.startswith(b"HTTP/1.1 200")
        assert await closed_by_server(silent[0])
        assert await closed_by_server(half[0])
        assert await closed_by_server(served[0])
    assert time.monotonic() - began >= 0.25
    for _, writer in (silent, half, served):
        writer.close()
        await writer.wait_closed()


async def test_a_request_trickled_a_header_at_a_time_is_cut_off_at_the_timeout(
    endpoint_with: Callable[[float], Endpoint],
) -> None:
    """A slow client (or a slowloris) that keeps sending a header line before the idle timeout ends does
    not keep the connection: the timeout bounds reading the whole request, not each gap."""
    endpoint = endpoint_with(0.5)
    await endpoint.start()
    reader, writer = await endpoint.connect()
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    began = time.monotonic()
    closed_after: float | None = None
    try:
        for i in range(100):  # 10 s of trickling at most
            # a header every 0.1 s, well within the idle timeout each time
            await asyncio.sleep(0.1)  # the trickle's pace is the point of this test, not a wait
            writer.write(b"X-Trickle-%d: y\r\n" % i)
            await writer.drain()
            if reader.at_eof():
                closed_after = time.monotonic() - began
                break
    except ConnectionError:
        closed_after = time.monotonic() - began
    finally:
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)
    assert closed_after is not None, "the server kept reading a request trickled for 10 s"
    assert closed_after < 5.0


async def test_two_thousand_idle_connections_do_not_stop_healthz_answering(
    endpoint_with: Callable[[float], Endpoint], http: HttpClient
) -> None:
    endpoint = endpoint_with(3.0)
    await endpoint.start()
    idle = [await endpoint.connect() for _ in range(2000)]
    try:
        began = time.monotonic()
        health = await http.request("GET", endpoint.url + "/healthz", timeout_s=2)
        assert health.status == 200
        assert time.monotonic() - began < 1.0
        async with asyncio.timeout(10):  # then every one of them is closed by the server
            closed = await asyncio.gather(*(closed_by_server(reader) for reader, _ in idle))
        assert all(closed)
    finally:
        for _, writer in idle:
            writer.close()
        await asyncio.gather(*(writer.wait_closed() for _, writer in idle), return_exceptions=True)
