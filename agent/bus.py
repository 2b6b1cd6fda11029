"""The one wrapper around the NATS connection: typed publish, subscribe and request.

- ``publish`` encodes a message (msgspec JSON) and counts it.
- ``subscribe`` decodes every message into one type before the handler sees it. A message that does not
  decode (wrong type, a number outside its physical range, larger than :data:`MAX_MESSAGE_BYTES`, nested
  deeper than the decoder's recursion limit, not UTF-8), or that the handler refuses by raising
  :class:`Rejected`, is counted
  (``costagent_messages_rejected``), logged once per kind (subject, reason, error text) and dropped; when
  it was a request, the requester gets an :class:`~schemas.ErrorReply` at once instead of a timeout.
  Any other exception from a handler is a bug: the subscription stops handling and ``on_crash`` is called,
  so the owning actor fails and its supervisor restarts it.
- ``request`` sends a request and decodes the reply, with a timeout.
- ``link`` says whether the connection is up and since when (:class:`~agent.runtime.link.Link`).

Handlers run on nats-py's per-subscription task, one message at a time, in arrival order.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeoutError

from agent.core.validation import split_error
from agent.runtime.clock import Clock
from agent.runtime.link import Link
from agent.runtime.metrics import AgentMetrics
from agent.subjects import Subjects
from schemas import Envelope, ErrorReply, Message, new_msg_id, tag_of

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)
T = TypeVar("T")

Handler = Callable[[M, Msg], Awaitable[None]]

# Distinct kinds of bad message logged before the log goes quiet (the counter keeps counting).
_MAX_LOGGED_KINDS: Final = 1000
MAX_MESSAGE_BYTES: Final = 256 * 1024
"""The largest message a subscription decodes. Ours are a few kB (a plan of a 100-pool catalog is ~30 kB);
the server's own limit (1 MiB by default) would let a sender make every actor parse a megabyte."""
# The longest error text put in an ErrorReply (a decoder may quote a whole bad value back).
_MAX_ERROR_CHARS: Final = 1024


class Unreadable(msgspec.DecodeError):
    """A message refused before or while decoding for a reason of ours (too large, nested too deep); the
    text is the reason."""


def decode_json(decoder: msgspec.json.Decoder[T], data: bytes, max_bytes: int | None = None) -> T:
    """``decoder.decode(data)``, refusing a message over ``max_bytes`` unread and turning the decoder's
    RecursionError (JSON nested ~1,000 deep: msgspec recurses per level, even into unknown fields it
    skips) into an :class:`Unreadable`, so that callers handle one kind of error."""
    if max_bytes is not None and len(data) > max_bytes:
        raise Unreadable(f"too large: {len(data)} bytes, at most {max_bytes}")
    try:
        return decoder.decode(data)
    except RecursionError:
        raise Unreadable("nested too deep") from None


class Rejected(Exception):
    """Raised by a handler for a message that decoded but cannot be used; the text names the field."""


def describe_decode_error(err: Exception, data: bytes) -> str:
    """Our own reason for a message that did not decode, whatever text the decoder raised.

    Senders read this in error replies and operators in logs, so it must not change with the decoder's
    version (msgspec 0.23 reworded its invalid UTF-8 error): the classes we tell apart are checked here.
    """
    if isinstance(err, Unreadable):
        return str(err)
    if isinstance(err, msgspec.ValidationError):
        path, reason = split_error(err)
        return f"{path}: {reason}"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"not UTF-8: invalid byte at offset {bad.start}"
    return f"not JSON: {err}"


def _msg_id(message: Message) -> str:
    return message.msg_id


def _no_msg_id(_value: object) -> str:
    return ""  # a foreign format has no envelope of ours


def _error_text(err: Exception, _data: bytes) -> str:
    return str(err)


async def settle(nc: NATS, wait_s: float = 5.0, *, inbox: bool = True) -> None:
    """Return once the server has processed everything ``nc`` sent before (subscriptions, publishes).

    ``nc.flush()`` alone does not ensure it with nats-py 2.16: its PING is written to the socket at once,
    ahead of commands still buffered for the flusher task, so the PONG can return before a SUB just made
    has reached the server (measured: 11-238 of 1,500 messages published right after a flush were not
    delivered, none after this; a benchmark run once lost 1,537 of 2,000). Use this, never ``flush()``
    alone, wherever a subscription must be in place before someone publishes.

    By default a message to a private inbox makes the round trip: it goes through the same buffer,
    behind what came before, and a timeout leaves nothing behind. ``inbox=False`` is for a client whose
    permissions allow no inbox (a worker's): the buffer is let out first, then a flush's PING follows
    it (a flush that times out breaks nats-py's reading when its PONG comes late: docs/agent.md).
    """
    if inbox:
        subject = nc.new_inbox()
        sub = await nc.subscribe(subject)
        try:
            await nc.publish(subject, b"")
            await sub.next_msg(timeout=wait_s)
        finally:
            await sub.unsubscribe()
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while nc.pending_data_size > 0:
        if loop.time() > deadline:
            raise NatsTimeoutError
        # The flusher task, kicked by every subscribe and publish, writes the buffer out when the loop
        # lets it run; nothing to await but its progress, and the deadline above bounds the wait.
        await asyncio.sleep(0.001)
    await nc.flush(timeout=max(1, math.ceil(deadline - loop.time())))


class Bus:
    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        *,
        source: str,
        clock: Clock,
        metrics: AgentMetrics,
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.source = source
        self.clock = clock
        self.metrics = metrics
        self.link = Link.watch(nc, clock, metrics)
        """Whether the connection is up, and since when (silence and plans depend on it)."""
        self.silenced: Callable[[], bool] = _never
        """True while this agent must say nothing: a replica whose leader lease is past its fence
        (:mod:`agent.runtime.leadership`), which another replica may hold by now. Whatever it would
        publish is dropped and counted (``costagent_messages_silenced``); a request fails as unanswered."""
        self._encoder = msgspec.json.Encoder()
        self._decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
        self._logged: set[tuple[str, str, str]] = set()
        self._log = structlog.get_logger("agent.bus")

    def envelope(self, correlation_id: str = "") -> Envelope:
        return Envelope(
            msg_id=new_msg_id(), sent_at=self.clock.now(), source=self.source, correlation_id=correlation_id
        )

    def encode(self, message: Message) -> bytes:
        return self._encoder.encode(message)

    def decoder(self, kind: Any) -> msgspec.json.Decoder[Any]:
        decoder = self._decoders.get(kind)
        if decoder is None:
            decoder = self._decoders[kind] = msgspec.json.Decoder(kind)
        return decoder

    async def settle(self, wait_s: float = 5.0) -> None:
        """Return once the server has processed everything this connection sent before (:func:`settle`)."""
        await settle(self.nc, wait_s)

    def _hushed(self, message: Message) -> bool:
        """Whether ``message`` must not be sent (:attr:`silenced`): then it is counted."""
        if not self.silenced():
            return False
        self.metrics.messages_silenced.labels(tag_of(type(message))).inc()
        return True

    async def publish(self, subject: str, message: Message) -> None:
        if self._hushed(message):
            return
        await self.nc.publish(subject, self._encoder.encode(message))
        self.metrics.messages_published.labels(tag_of(type(message))).inc()

    async def respond(self, raw: Msg, message: Message) -> None:
        if raw.reply:
            if self._hushed(message):
                return
            await self.nc.publish(raw.reply, self._encoder.encode(message))
            self.metrics.messages_published.labels(tag_of(type(message))).inc()

    async def request(
        self, subject: str, message: Message, reply_kind: type[R], wait_s: float = 2.0
    ) -> R | ErrorReply:
        if self._hushed(message):
            raise NatsTimeoutError
        raw = await self.nc.request(subject, self._encoder.encode(message), timeout=wait_s)
        reply: R | ErrorReply = decode_json(self.decoder(reply_kind | ErrorReply), raw.data)
        return reply

    async def subscribe(
        self,
        subject: str,
        kind: type[M],
        handler: Handler[M],
        *,
        actor: str,
        on_crash: Callable[[BaseException], None],
    ) -> Subscription:
        decoder = self.decoder(kind)

        def decode(data: bytes) -> M:
            message: M = decode_json(decoder, data, MAX_MESSAGE_BYTES)
            return message

        return await self._subscribe(
            subject,
            tag_of(kind),
            decode,
            (msgspec.DecodeError, UnicodeDecodeError),  # ValidationError and Unreadable are DecodeErrors
            describe_decode_error,
            _msg_id,
            handler,
            actor=actor,
            on_crash=on_crash,
        )

    async def subscribe_bytes(
        self,
        subject: str,
        tag: str,
        decode: Callable[[bytes], T],
        handler: Callable[[T, Msg], Awaitable[None]],
        *,
        actor: str,
        on_crash: Callable[[BaseException], None],
    ) -> Subscription:
        """Subscribe to a foreign wire format (e.g. Dynamo's msgpack event plane), counted as ``subscribe``
        counts: ``decode`` turns the bytes into a value or raises ValueError (counted ``malformed`` under
        ``tag``, its text the reason), the handler may raise :class:`Rejected` (``invalid``), and any other
        error is a crash."""
        return await self._subscribe(
            subject,
            tag,
            decode,
            (ValueError,),
            _error_text,
            _no_msg_id,
            handler,
            actor=actor,
            on_crash=on_crash,
        )

    async def _subscribe(
        self,
        subject: str,
        tag: str,
        decode: Callable[[bytes], T],
        malformed: tuple[type[Exception], ...],
        describe: Callable[[Exception, bytes], str],
        msg_id: Callable[[T], str],
        handler: Callable[[T, Msg], Awaitable[None]],
        *,
        actor: str,
        on_crash: Callable[[BaseException], None],
    ) -> Subscription:
        label = self.subjects.label(subject)
        handled = self.metrics.messages_handled.cell(actor, label, tag)
        crashed = False

        async def deliver(raw: Msg) -> None:
            nonlocal crashed
            if crashed:
                return
            try:
                message = decode(raw.data)
            except malformed as err:
                await self._reject(raw, actor, label, tag, "malformed", describe(err, raw.data), "")
                return
            try:
                await handler(message, raw)
            except Rejected as err:
                await self._reject(raw, actor, label, tag, "invalid", str(err), msg_id(message))
                return
            except Exception as err:  # a bug in the actor: let its supervisor restart it
                crashed = True
                on_crash(err)
                return
            handled[0] += 1

        return await self.nc.subscribe(subject, cb=deliver)

    async def _reject(
        self, raw: Msg, actor: str, label: str, tag: str, reason: str, error: str, msg_id: str
    ) -> None:
        self.metrics.messages_rejected.labels(actor, label, tag, reason).inc()
        kind = (label, reason, error[:200])
        if kind not in self._logged and len(self._logged) < _MAX_LOGGED_KINDS:
            self._logged.add(kind)
            self._log.warning(
                "bad_message",
                actor=actor,
                subject=raw.subject,
                type=tag,
                reason=reason,
                error=error,
                msg_id=msg_id,
                size=len(raw.data),
            )
        if raw.reply:
            await self.respond(
                raw,
                ErrorReply(
                    **self.envelope(correlation_id=msg_id), error=f"{tag}: {error}"[:_MAX_ERROR_CHARS]
                ),
            )


def _never() -> bool:
    return False
