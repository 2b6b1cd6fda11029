"""The HTTP client the sidecar reads metadata services with: whatever is not a complete answer in time
counts as the service down, and a cancelled request (a long poll at shutdown) closes its socket at once.

Each test answers with raw bytes from an in-process asyncio server on 127.0.0.1, so framing, garbage and
silence are exactly what the test wrote.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from agent.providers.httpclient import MAX_BODY, HttpClient, ServiceUnavailable, check_url


class RawServer:
    """Reads one request head per connection, then writes ``answer`` and closes; ``answer=None`` holds
    the connection open, answering nothing. ``requests`` keeps each request head; ``closed_by_peer`` is
    set when a held connection is closed by the client."""

    def __init__(self) -> None:
        self.answer: bytes | None = b"HTTP/1.1 204 No Content\r\n\r\n"
        self.requests: list[bytes] = []
        self.received = asyncio.Event()
        self.closed_by_peer = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            self.received.set()
            if self.answer is None:
                if await reader.read(1) == b"":
                    self.closed_by_peer.set()
                return
            writer.write(self.answer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._handlers.discard(task)


@pytest.fixture
async def server() -> AsyncIterator[tuple[RawServer, str]]:
    raw = RawServer()
    url = await raw.start()
    yield raw, url
    await raw.stop()


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    async with HttpClient(user_agent="test-agent") as client:
        yield client


async def test_a_sized_answer_with_its_headers_in_lower_case(
    server: tuple[RawServer, str], http: HttpClient
) -> None:
    raw, url = server
    raw.answer = b"HTTP/1.1 200 OK\r\nETag: abc\r\nContent-Length: 5\r\n\r\nTRUE\n"
    answer = await http.request("GET", url + "/x?a=1", {"Metadata-Flavor": "Google"}, timeout_s=5)
    assert (answer.status, answer.body, answer.headers["etag"]) == (200, b"TRUE\n", "abc")
    head = raw.requests[0].decode().lower()
    assert head.startswith("get /x?a=1 http/1.1\r\n")
    assert "metadata-flavor: google\r\n" in head
    assert "user-agent: test-agent\r\n" in head


async def test_a_chunked_answer_and_one_read_to_the_end_of_the_stream(
    server: tuple[RawServer, str], http: HttpClient
) -> None:
    raw, url = server
    raw.answer = (
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"a"\r\n3\r\n: 1\r\n1\r\n}\r\n0\r\n\r\n'
    )
    assert (await http.request("GET", url, timeout_s=5)).body == b'{"a": 1}'
    raw.answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nno length given"
    assert (await http.request("GET", url, timeout_s=5)).body == b"no length given"


async def test_any_status_is_an_answer_and_a_redirect_is_not_followed(
    server: tuple[RawServer, str], http: HttpClient
) -> None:
    raw, url = server
    raw.answer = b"HTTP/1.1 302 Found\r\nLocation: http://198.51.100.1/\r\nContent-Length: 0\r\n\r\n"
    answer = await http.request("GET", url, timeout_s=5)
    assert answer.status == 302
    assert len(raw.requests) == 1
    raw.answer = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"
    assert (await http.request("PUT", url, {"X-Token-TTL": "60"}, timeout_s=5)).status == 401


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", id="not HTTP"),
        pytest.param(b"HTTP/1.1 2OO OK\r\n\r\n", id="bad status"),
        pytest.param(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", id="bad header line"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n", id="bad content length"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", id="closed mid-body"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            id="bad chunk size",
        ),
        pytest.param(b"", id="closed before an answer"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1), id="announced too big"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * (MAX_BODY + 1), id="streamed too big"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n" % (MAX_BODY // 2 + 1, b"y" * (MAX_BODY // 2 + 1)) * 2
            + b"0\r\n\r\n",
            id="chunked too big",
        ),
    ],
)
async def test_a_garbled_or_oversized_answer_is_the_service_down(
    server: tuple[RawServer, str], http: HttpClient, answer: bytes
) -> None:
    raw, url = server
    raw.answer = answer
    with pytest.raises(ServiceUnavailable):
        await http.request("GET", url, timeout_s=5)


async def test_silence_is_the_service_down_after_the_timeout(
    server: tuple[RawServer, str], http: HttpClient
) -> None:
    raw, url = server
    raw.answer = None
    with pytest.raises(ServiceUnavailable, match=r"no answer within 0\.2 s"):
        await http.request("GET", url, timeout_s=0.2)


async def test_a_refused_connection_is_the_service_down(http: HttpClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # a port that is bound but not listening refuses connections
        port = sock.getsockname()[1]
        with pytest.raises(ServiceUnavailable, match="Connect"):
            await http.request("GET", f"http://127.0.0.1:{port}", timeout_s=5)


async def test_a_cancelled_long_poll_closes_its_connection_at_once(
    server: tuple[RawServer, str], http: HttpClient
) -> None:
    raw, url = server
    raw.answer = None
    poll = asyncio.ensure_future(http.request("GET", url + "/?wait_for_change=true", timeout_s=60))
    async with asyncio.timeout(5):
        await raw.received.wait()
    poll.cancel()
    async with asyncio.timeout(1):  # well inside the request's own 60 s
        await raw.closed_by_peer.wait()
    assert poll.cancelled()


def test_base_urls() -> None:
    assert check_url("http://169.254.169.254/") == "http://169.254.169.254"
    assert check_url("http://metadata.google.internal:8080") == "http://metadata.google.internal:8080"
    for bad in ("https://169.254.169.254", "http://", "http://h:99999", "http://h/latest", "http://h/?x=1"):
        with pytest.raises(ValueError, match="metadata URL"):
            check_url(bad)
