"""Durable state: snapshots of what the actors know, kept in a NATS JetStream key-value bucket.

One bucket per agent namespace (:func:`bucket_name`); each actor owns its keys and saves bytes it encoded
itself (a versioned msgspec encoding, in ``agent/core``), so this module knows nothing of their content.
A restarted agent, or a replica that takes over as leader, loads them when its actors start.

Two stores: :class:`JetStreamStore` (``[state] store = "jetstream"``) and :class:`NoStore` (``"none"``:
nothing is saved, nothing survives a restart). :class:`Snapshots` is what an actor holds: it loads once per
actor object, saves when told and on a timer when something changed, and never lets a failed or corrupt
snapshot stop the agent: a snapshot that cannot be read is logged, counted
(``costagent_state_snapshots_rejected_total``) and ignored; a save that fails is logged, counted
(``costagent_state_save_failures_total``) and retried at the next save. A store that cannot be *reached*
at start-up, though, is an error: starting empty and saving over good state would lose it for good.
"""

from __future__ import annotations

import asyncio
import re
import time
import zlib
from collections.abc import Callable
from typing import Final, Protocol, TypeVar

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.errors import ConnectionReconnectingError, MaxPayloadError
from nats.errors import Error as NatsError
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue

from agent.runtime.clock import Clock
from agent.runtime.metrics import AgentMetrics

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)

_BUCKET_PREFIX: Final = "costagent-state-"
_API_TIMEOUT_S: Final = 5.0
"""A JetStream API call (open, get, put) that has no answer by then has failed."""
_MAX_STATE_BYTES: Final = 256 * 1024 * 1024
"""A snapshot that inflates beyond this is refused (it cannot be one of ours)."""


def pack(data: bytes) -> bytes:
    """What goes into the store: zlib (level 1) of the actor's bytes. Snapshots are repetitive (ids, field
    names): a 28-day demand profile goes from 274 KB to 30 KB, a registry of 8,000 workers from 447 KB to
    34 KB, in about a millisecond, far from NATS's 1 MB message limit."""
    return zlib.compress(data, 1)


def unpack(data: bytes) -> bytes:
    """The actor's bytes from :func:`pack`; ValueError for anything else."""
    inflate = zlib.decompressobj()
    try:
        raw = inflate.decompress(data, _MAX_STATE_BYTES)
    except zlib.error as err:
        raise ValueError(f"not a compressed snapshot: {err}") from None
    if inflate.unconsumed_tail or not inflate.eof:
        raise ValueError("not a compressed snapshot: truncated, or larger than 256 MiB inflated")
    return raw


class StateStoreError(ConnectionError):
    """The store cannot be used: one line naming ``[state] store`` and what to do (a ConnectionError:
    ``cost-agent run`` ends with that line and exit 2, as for a NATS server it cannot reach)."""


def bucket_name(namespace: str) -> str:
    """The KV bucket of ``namespace`` (bucket names allow only ``[A-Za-z0-9_-]``; a namespace's dots,
    which the namespace pattern allows between tokens, become ``_``)."""
    name = _BUCKET_PREFIX + namespace.replace(".", "_")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"namespace {namespace!r} makes no valid KV bucket name")
    return name


_encoder: Final = msgspec.msgpack.Encoder()


def encode_state(state: msgspec.Struct) -> bytes:
    """A snapshot's bytes: msgpack of a tagged Struct (its tag names what it is and its version)."""
    return _encoder.encode(state)


def decode_state(kind: type[S], data: bytes) -> S:
    """The snapshot ``data`` as ``kind``; ValueError for anything else (another kind or version, corrupt)."""
    try:
        return msgspec.msgpack.decode(data, type=kind)
    except msgspec.DecodeError as err:
        raise ValueError(f"not a {kind.__name__} snapshot: {err}") from None


class StateStore(Protocol):
    async def open(self) -> None:
        """Make the store usable (idempotent); StateStoreError when it cannot be."""
        ...

    async def get(self, key: str) -> bytes | None:
        """The value saved under ``key``, or None when nothing is."""
        ...

    async def put(self, key: str, value: bytes) -> None: ...

    async def delete(self, key: str) -> None: ...


class NoStore:
    """``[state] store = "none"``: nothing is saved, nothing is loaded."""

    async def open(self) -> None:
        return None

    async def get(self, key: str) -> bytes | None:
        return None

    async def put(self, key: str, value: bytes) -> None:
        return None

    async def delete(self, key: str) -> None:
        return None


class JetStreamStore:
    """A JetStream KV bucket, created on first use with the given history and replicas."""

    def __init__(self, nc: NATS, bucket: str, *, history: int = 1, replicas: int = 1) -> None:
        self.nc = nc
        self.bucket = bucket
        self.history = history
        self.replicas = replicas
        self._kv: KeyValue | None = None
        self._opening = asyncio.Lock()

    async def open(self) -> None:
        await self._bucket()

    async def _bucket(self) -> KeyValue:
        if not self.nc.is_connected:
            # Fail at once: a save would wait its whole timeout on a link that is down (a shutdown during
            # an outage has no time for that); the next save after the reconnection catches up.
            raise ConnectionReconnectingError()
        async with self._opening:
            if self._kv is not None:
                return self._kv
            js = self.nc.jetstream(timeout=_API_TIMEOUT_S)
            try:
                try:
                    self._kv = await js.key_value(self.bucket)
                except BucketNotFoundError:
                    # Two replicas creating it at once is fine: the same configuration is accepted twice.
                    self._kv = await js.create_key_value(
                        bucket=self.bucket, history=self.history, replicas=self.replicas
                    )
            except ServiceUnavailableError:
                raise StateStoreError(
                    '[state] store = "jetstream": the NATS server has no JetStream; run it with JetStream '
                    '(nats-server -js, or a jetstream block in its config), or set [state] store = "none" '
                    "(then nothing survives a restart)"
                ) from None
            except (NatsError, TimeoutError) as err:
                raise StateStoreError(
                    f'[state] store = "jetstream": cannot open KV bucket {self.bucket!r}: '
                    f"{type(err).__name__} {err}".rstrip()
                ) from None
            return self._kv

    async def get(self, key: str) -> bytes | None:
        kv = await self._bucket()
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return None
        return entry.value

    async def put(self, key: str, value: bytes) -> None:
        await (await self._bucket()).put(key, value)

    async def delete(self, key: str) -> None:
        await (await self._bucket()).delete(key)


class Snapshots:
    """One actor's snapshots: load once, save on demand and every ``interval_s`` while dirty.

    ``encode`` returns the bytes of what the actor holds now; the actor calls :meth:`changed` when that
    moved on (saved by the timer) and :meth:`save` after an event that must not be lost (saved at once).
    """

    @classmethod
    def disabled(cls, key: str, *, actor: str, clock: Clock, metrics: AgentMetrics) -> Snapshots:
        """Snapshots that go nowhere (an actor built without a store)."""
        return cls(NoStore(), key, actor=actor, clock=clock, metrics=metrics, interval_s=3600.0)

    def __init__(
        self,
        store: StateStore,
        key: str,
        *,
        actor: str,
        clock: Clock,
        metrics: AgentMetrics,
        interval_s: float,
        silenced: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.key = key
        self.actor = actor
        self.clock = clock
        self.metrics = metrics
        self.interval_s = interval_s
        self.silenced = silenced
        """True while this replica's leader lease is past its fence (``Bus.silenced``): a replica that may
        no longer lead must not write over what the new leader saves."""
        self.loaded = False
        self.saved_bytes = 0
        """Size of the last snapshot saved, compressed (``costagent_state_snapshot_bytes`` too)."""
        self._dirty = False
        self._saving = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._log = structlog.get_logger("agent.state").bind(actor=actor, key=key)

    async def load(self, decode: Callable[[bytes], T]) -> T | None:
        """The saved value decoded, once per actor object (later calls, at a restart after a crash,
        return None: the actor's memory is newer). A value that does not decode (``ValueError``) is
        logged, counted and ignored. An unreachable store raises: start empty and a save would erase it."""
        if self.loaded:
            return None
        began = time.monotonic()
        try:
            data = await self.store.get(self.key)
        except (NatsError, TimeoutError) as err:
            raise StateStoreError(f"[state] cannot read {self.key!r}: {type(err).__name__} {err}") from None
        self.loaded = True
        if data is None:
            return None
        try:
            value = decode(unpack(data))
        except ValueError as err:
            self._log.error("state_snapshot_rejected", error=str(err), bytes=len(data))
            self.metrics.state_snapshots_rejected.labels(self.key).inc()
            return None
        self._log.info("state_loaded", bytes=len(data), load_ms=round((time.monotonic() - began) * 1e3, 2))
        return value

    def changed(self) -> None:
        self._dirty = True

    async def save(self, encode: Callable[[], bytes]) -> bool:
        """Save now; False (logged and counted) when the store refused it or could not be reached."""
        async with self._saving:
            if self.silenced():
                self._log.warning("state_save_fenced")
                return False
            self._dirty = False
            data = pack(encode())
            try:
                await self.store.put(self.key, data)
            except (NatsError, TimeoutError) as err:
                self._dirty = True  # the next timer pass tries again
                too_big = isinstance(err, MaxPayloadError)
                self._log.error(
                    "state_save_failed",
                    error=type(err).__name__,
                    bytes=len(data),
                    hint="raise the server's max_payload" if too_big else None,
                )
                self.metrics.state_save_failures.labels(self.key).inc()
                return False
            self.saved_bytes = len(data)
            self.metrics.state_saves.labels(self.key).inc()
            self.metrics.state_snapshot_bytes.labels(self.key).set(len(data))
            return True

    def start(self, encode: Callable[[], bytes]) -> None:
        """Save every ``interval_s`` of the clock while something changed, until :meth:`close`."""
        if self._timer is None or self._timer.done():
            self._closed.clear()
            self._timer = asyncio.ensure_future(self._every(encode))

    async def _every(self, encode: Callable[[], bytes]) -> None:
        deadline = self.clock.now() + self.interval_s
        while not await self.clock.wait_until(deadline, self._closed):
            if self._dirty:
                await self.save(encode)
            deadline = max(deadline + self.interval_s, self.clock.now())

    async def close(self, encode: Callable[[], bytes] | None) -> None:
        """Stop the timer (a save under way finishes: cancelling inside nats-py's flush can hang on
        Python 3.11); with ``encode``, save what changed since the last save."""
        self._closed.set()
        if self._timer is not None:
            await asyncio.wait({self._timer})
            if not self._timer.cancelled() and self._timer.exception() is not None:
                self._log.error("state_timer_failed", exc_info=self._timer.exception())
        self._timer = None
        if encode is not None and self._dirty:
            await self.save(encode)
