"""A minimal HTTP/1.1 client on asyncio streams, for link-local metadata services.

Why not urllib in a thread: a request in a thread cannot be cancelled, so a GCP long poll (up to a minute)
would hold up shutdown, and ``asyncio.run`` waits for the executor's threads at exit. This client is one
coroutine per request: cancelling it (on SIGTERM) closes the socket at once.

One request per connection (``Connection: close``); the answer's body is read by ``Content-Length``, by
chunks (``Transfer-Encoding: chunked``) or to the end of the stream, up to :data:`MAX_BODY` bytes. Every
request has an overall timeout. Anything that is not a complete HTTP answer in time (refused, reset,
timed out, garbled, too big) raises :class:`MetadataUnavailable`: the service is, for the caller, down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

MAX_BODY: Final = 1 << 20
_MAX_HEADERS: Final = 100


class MetadataUnavailable(Exception):
    """No usable HTTP answer from the metadata service; the text says why."""


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    headers: Mapping[str, str]
    """Header names in lower case."""
    body: bytes


def check_url(url: str) -> str:
    """``http://host[:port]`` (a base URL, no path): raise ValueError otherwise. Returns it without a
    trailing slash."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"metadata URL {url!r}: use http://HOST[:PORT]")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"metadata URL {url!r}: bad port") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"metadata URL {url!r}: give the base URL only, without a path")
    return url.rstrip("/")


async def request(
    method: str, url: str, headers: Mapping[str, str] | None = None, *, timeout_s: float
) -> HttpAnswer:
    """Send one request with an empty body and read the whole answer within ``timeout_s`` seconds."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"not an http:// URL: {url!r}")
    host = parts.hostname
    port = parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [
        f"{method} {target} HTTP/1.1",
        f"Host: {parts.netloc.rsplit('@', 1)[-1]}",
        "User-Agent: cost-agent-sidecar",
        "Accept: */*",
        "Connection: close",
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if method in ("PUT", "POST"):
        lines.append("Content-Length: 0")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(head)
                await writer.drain()
                return await _read_answer(reader, method)
            finally:
                writer.close()
    except TimeoutError:
        raise MetadataUnavailable(f"no answer within {timeout_s:g} s") from None
    except asyncio.IncompleteReadError:
        raise MetadataUnavailable("connection closed in the middle of the answer") from None
    except (OSError, ValueError, asyncio.LimitOverrunError) as err:
        raise MetadataUnavailable(f"{type(err).__name__}: {err}") from None


async def _read_answer(reader: asyncio.StreamReader, method: str) -> HttpAnswer:
    status_line = await reader.readline()
    if not status_line:
        raise MetadataUnavailable("connection closed before an answer")
    fields = status_line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/1.") or not fields[1].isdigit():
        raise MetadataUnavailable(f"not an HTTP answer: {status_line[:60]!r}")
    status = int(fields[1])
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS):
        line = await reader.readline()
        if line in (b"\r\n", b"\n"):
            break
        if not line:
            raise MetadataUnavailable("connection closed in the headers")
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name.strip():
            raise MetadataUnavailable(f"bad header line: {line[:60]!r}")
        headers[name.strip().lower()] = value.strip()
    else:
        raise MetadataUnavailable(f"more than {_MAX_HEADERS} headers")
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        length = headers["content-length"]
        if not length.isdigit():
            raise MetadataUnavailable(f"bad Content-Length: {length[:20]!r}")
        if int(length) > MAX_BODY:
            raise MetadataUnavailable(f"answer of {length} bytes, more than {MAX_BODY}")
        body = await reader.readexactly(int(length))
    else:
        body = await _read_to_end(reader)
    return HttpAnswer(status=status, headers=headers, body=body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = (await reader.readline()).split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise MetadataUnavailable(f"bad chunk size: {size_line[:20]!r}") from None
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return bytes(body)
        if len(body) + size > MAX_BODY:
            raise MetadataUnavailable(f"answer of more than {MAX_BODY} bytes")
        body += await reader.readexactly(size)
        await reader.readline()


async def _read_to_end(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while chunk := await reader.read(65536):
        body += chunk
        if len(body) > MAX_BODY:
            raise MetadataUnavailable(f"answer of more than {MAX_BODY} bytes")
    return bytes(body)
