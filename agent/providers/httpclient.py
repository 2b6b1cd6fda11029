"""HTTP requests to the services the agent reads (cloud metadata services), on aiohttp.

Why not urllib in a thread: a request in a thread cannot be cancelled, so a GCP long poll (up to a minute)
would hold up shutdown, and ``asyncio.run`` waits for the executor's threads at exit. An aiohttp request
is a coroutine: cancelling it (on SIGTERM) closes its socket at once.

Every request has an overall timeout and reads at most :data:`MAX_BODY` bytes of answer, whatever its
framing (``Content-Length``, chunks, or to the end of the stream). Anything that is not a complete HTTP
answer in time (refused, reset, timed out, garbled, too big) raises :class:`ServiceUnavailable`: for the
caller, the service is down. Any status is an answer (redirects are not followed): what it means is the
caller's to judge.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Self
from urllib.parse import urlsplit

import aiohttp

MAX_BODY: Final = 1 << 20


class ServiceUnavailable(Exception):
    """No usable HTTP answer from the service; the text says why."""


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


class HttpClient:
    """One aiohttp session, used as ``async with HttpClient() as http: await http.request(...)``.

    One connection per request: a metadata service is on the link (a connection costs nothing), and a
    kept-alive connection that the server closed while idle would fail the next poll, which would then be
    reported as an outage.
    """

    def __init__(self, *, user_agent: str = "cost-agent", max_body: int = MAX_BODY) -> None:
        self.user_agent = user_agent
        self.max_body = max_body
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            headers={"User-Agent": self.user_agent},
            trust_env=False,  # a link-local metadata service is never reached through a proxy
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def request(
        self, method: str, url: str, headers: Mapping[str, str] | None = None, *, timeout_s: float
    ) -> HttpAnswer:
        """Send one request with an empty body and read the whole answer within ``timeout_s`` seconds."""
        if self._session is None:
            raise RuntimeError("HttpClient: use it inside `async with`")
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not an http:// URL: {url!r}")
        try:
            async with self._session.request(
                method,
                url,
                headers=dict(headers or {}),
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as response:
                body = await self._read_body(response)
                return HttpAnswer(
                    status=response.status,
                    headers={name.lower(): value for name, value in response.headers.items()},
                    body=body,
                )
        except TimeoutError:
            raise ServiceUnavailable(f"no answer within {timeout_s:g} s") from None
        except (aiohttp.ClientError, OSError, ValueError) as err:
            raise ServiceUnavailable(_one_line(err)) from None

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        length = response.content_length
        if length is not None and length > self.max_body:
            raise ServiceUnavailable(f"answer of {length} bytes, more than {self.max_body}")
        body = bytearray()
        async for chunk in response.content.iter_any():
            body += chunk
            if len(body) > self.max_body:
                raise ServiceUnavailable(f"answer of more than {self.max_body} bytes")
        return bytes(body)


def _one_line(err: Exception) -> str:
    # aiohttp's parser errors span lines (the bad bytes, a caret under them): one line in the logs.
    text = err.message if isinstance(err, aiohttp.ClientResponseError) else str(err)
    return f"{type(err).__name__}: {' '.join(text.split())}"
