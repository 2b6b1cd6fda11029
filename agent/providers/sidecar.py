"""The node sidecar (``cost-agent sidecar``): watch this spot node's cloud metadata service and publish its
preemption notice on NATS.

Contract:

- Reads: the instance metadata service of one provider (AWS IMDSv2, GCP metadata server, Azure Scheduled
  Events; formats and sources in :mod:`agent.providers.metadata`). The instance id is ``--instance-id``
  or, without it, the metadata service's own (AWS instance-id, GCP instance name, Azure VM name).
- Publishes: :class:`schemas.PreemptionNotice` on ``{ns}.evt.spot.notice.{instance_id}``
  (:meth:`Subjects.spot_notice`), ``source`` ``sidecar:{instance_id}``, ``deadline`` absolute, once per
  distinct notice: a notice read again is not sent again; a changed one is (AWS rebalance, then
  terminate; a new Azure event or ``NotBefore``). A publish that fails is retried at the next poll.
- A notice is logged ``notice_published`` only once the server has it (an echo sent after it came back). While
  NATS is down it waits in the client's buffer (``notice_buffered``) and is confirmed, or sent again with the
  same ``msg_id`` if the connection it was written to died, once NATS is back; the agent treats a repeated
  notice as one. Stopping with a notice still unconfirmed waits for NATS up to the grace period, and a notice
  that never got through is logged ``notice_unsent`` (an error) and counted in ``sidecar_stopped``.
- Polls every ``poll_s`` seconds on a drift-free schedule (AWS, Azure); GCP long-polls with
  ``wait_for_change``, so its notice is published as soon as the metadata server changes.
- Never crashes on the metadata service: a malformed answer (bad JSON, bad date, unexpected status) is
  counted and logged once per kind (``metadata_bad_answer``, with field/problem/detail) and polling goes
  on; a service that is down or silent (refused, reset, timeout) is retried with exponential back-off
  from ``poll_s`` up to ``max_backoff_s`` (``metadata_unavailable`` once per outage, then
  ``metadata_recovered``).
- Stops on SIGTERM/SIGINT: the stop event ends the current request or wait at once, the poller returns,
  the NATS connection is drained (published notices flushed), exit code 0; the counts are logged in
  ``sidecar_stopped``.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol, TypeVar
from urllib.parse import quote

import structlog
from nats.aio.client import Client as NATS

from agent.bus import Bus
from agent.providers.httpclient import HttpAnswer, HttpClient, ServiceUnavailable, check_url
from agent.providers.metadata import (
    AWS_INSTANCE_ACTION_PATH,
    AWS_INSTANCE_ID_PATH,
    AWS_REBALANCE_PATH,
    AWS_TOKEN_HEADER,
    AWS_TOKEN_PATH,
    AWS_TOKEN_TTL_HEADER,
    AWS_TOKEN_TTL_SECONDS,
    AZURE_EVENTS_PATH,
    AZURE_HEADERS,
    AZURE_INSTANCE_NAME_PATH,
    DEFAULT_METADATA_URLS,
    GCP_HEADERS,
    GCP_INSTANCE_NAME_PATH,
    GCP_NOTICE_SECONDS,
    GCP_PREEMPTED_PATH,
    PROVIDERS,
    MetadataError,
    Notice,
    ProviderName,
    check_instance_id,
    parse_aws_instance_action,
    parse_aws_rebalance,
    parse_aws_token,
    parse_azure_events,
    parse_gcp_preempted,
    parse_instance_id,
)
from agent.runtime.bus_security import BusSecurity, redact_url
from agent.runtime.clock import Clock, RealClock
from agent.runtime.connection import connect, shut_down
from agent.runtime.metrics import AgentMetrics
from agent.runtime.signals import stop_on_signals
from agent.subjects import DEFAULT_NAMESPACE, Subjects, check_namespace
from schemas import PreemptionNotice, envelope

T = TypeVar("T")

DEFAULT_POLL_SECONDS: Final = 2.0
"""Between two reads of the metadata service (AWS recommends checking at least every 5 s)."""
DEFAULT_REQUEST_TIMEOUT_SECONDS: Final = 5.0
DEFAULT_MAX_BACKOFF_SECONDS: Final = 10.0
GCP_LONG_POLL_SECONDS: Final = 60
"""``timeout_sec`` of a GCP ``wait_for_change`` request: the server answers by then even if nothing
changed."""
AZURE_FIRST_CALL_TIMEOUT_SECONDS: Final = 130.0
"""Azure: "expect a delayed response in your first call of up to two minutes" (it enables the service)."""
_AWS_TOKEN_MARGIN_SECONDS: Final = 60.0
_MAX_LOGGED_KINDS: Final = 1000
MAX_GRACE_SECONDS: Final = 600.0
"""Longer than any cloud's notice: a sidecar still stopping after that has nothing left to save."""

log = structlog.get_logger("agent.providers.sidecar")


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    """What ``cost-agent sidecar`` was asked to do. Empty ``metadata_url``: the provider's default;
    empty ``instance_id``: ask the metadata service. Raises ValueError naming the bad setting."""

    provider: ProviderName
    nats_url: str
    metadata_url: str = ""
    instance_id: str = ""
    namespace: str = DEFAULT_NAMESPACE
    poll_s: float = DEFAULT_POLL_SECONDS
    gcp_notice_s: float = GCP_NOTICE_SECONDS
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_SECONDS
    long_poll_s: int = GCP_LONG_POLL_SECONDS
    max_backoff_s: float = DEFAULT_MAX_BACKOFF_SECONDS
    grace_s: float = 10.0
    """On stop: how long the poller gets to finish; an unconfirmed notice waits for NATS for most of it.
    Ends at once when nothing is pending, so a longer grace costs nothing on a normal stop."""

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider {self.provider!r}: use one of {', '.join(PROVIDERS)}")
        if not self.nats_url:
            raise ValueError("no NATS URL: give --nats-url or set NATS_URL")
        check_url(self.base_url)
        if self.instance_id:
            try:
                check_instance_id("--instance-id", self.instance_id)
            except MetadataError as err:
                raise ValueError(str(err)) from None
        check_namespace(self.namespace)
        positive = {
            "--poll-seconds": self.poll_s,
            "request_timeout_s": self.request_timeout_s,
            "max_backoff_s": self.max_backoff_s,
            "--grace-seconds": self.grace_s,
        }
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: must be a number > 0, got {value!r}")
        if self.grace_s > MAX_GRACE_SECONDS:
            raise ValueError(f"--grace-seconds: must be at most {MAX_GRACE_SECONDS:g}, got {self.grace_s!r}")
        if not (math.isfinite(self.gcp_notice_s) and self.gcp_notice_s >= 0):
            raise ValueError(f"--gcp-notice-seconds: must be a number ≥ 0, got {self.gcp_notice_s!r}")
        if self.long_poll_s < 1:
            raise ValueError(f"long_poll_s: must be ≥ 1, got {self.long_poll_s!r}")

    @property
    def base_url(self) -> str:
        return (self.metadata_url or DEFAULT_METADATA_URLS[self.provider]).rstrip("/")


@dataclass(frozen=True, slots=True)
class Round:
    """One read of the metadata service: the notices found, the answers that could not be used, and
    whether the next read may start at once (a long poll is its own wait)."""

    notices: list[Notice]
    errors: list[MetadataError] = field(default_factory=list)
    immediate: bool = False


class Watcher(Protocol):
    provider: ProviderName
    unavailable_hint: str

    async def instance_id(self) -> str:
        """This instance's id according to the metadata service."""
        ...

    async def check(self, instance_id: str) -> Round:
        """Read the metadata service once. Raises ServiceUnavailable or MetadataError."""
        ...


class _MetadataReader:
    """What every watcher reads through: the HTTP client, the metadata service's base URL, the clock that
    stamps each answer, and the timeout of a plain request."""

    def __init__(self, http: HttpClient, base_url: str, clock: Clock, timeout_s: float) -> None:
        self.http = http
        self.base_url = base_url
        self.clock = clock
        self.timeout_s = timeout_s

    async def _request(
        self, method: str, path: str, headers: Mapping[str, str], timeout_s: float | None = None
    ) -> HttpAnswer:
        return await self.http.request(
            method, self.base_url + path, headers, timeout_s=timeout_s or self.timeout_s
        )


class AwsWatcher(_MetadataReader):
    """IMDSv2: a session token, renewed before it expires and again on a 401."""

    provider: ProviderName = "aws"
    unavailable_hint = "in a container, IMDSv2 needs the instance's HttpPutResponseHopLimit set to 2"

    def __init__(self, http: HttpClient, base_url: str, clock: Clock, timeout_s: float) -> None:
        super().__init__(http, base_url, clock, timeout_s)
        self.tokens_taken = 0
        self._token: str | None = None
        self._token_until = 0.0

    async def _new_token(self) -> str:
        answer = await self._request(
            "PUT", AWS_TOKEN_PATH, {AWS_TOKEN_TTL_HEADER: str(AWS_TOKEN_TTL_SECONDS)}
        )
        token = parse_aws_token(answer.status, answer.body)
        self._token = token
        self._token_until = self.clock.now() + AWS_TOKEN_TTL_SECONDS - _AWS_TOKEN_MARGIN_SECONDS
        self.tokens_taken += 1
        return token

    async def _get(self, path: str) -> HttpAnswer:
        token = self._token
        if token is None or self.clock.now() >= self._token_until:
            token = await self._new_token()
        answer = await self._request("GET", path, {AWS_TOKEN_HEADER: token})
        if answer.status == 401:  # the token expired or was revoked: take a new one, once
            self._token = None
            answer = await self._request("GET", path, {AWS_TOKEN_HEADER: await self._new_token()})
        return answer

    async def instance_id(self) -> str:
        answer = await self._get(AWS_INSTANCE_ID_PATH)
        return parse_instance_id("meta-data/instance-id", answer.status, answer.body)

    async def check(self, instance_id: str) -> Round:
        notices: list[Notice] = []
        errors: list[MetadataError] = []
        # Rebalance first: when both are present, the terminate/stop notice is the last one published.
        for path, parse in (
            (AWS_REBALANCE_PATH, parse_aws_rebalance),
            (AWS_INSTANCE_ACTION_PATH, parse_aws_instance_action),
        ):
            answer = await self._get(path)
            try:
                notice = parse(answer.status, answer.body, self.clock.now())
            except MetadataError as err:
                errors.append(err)
            else:
                if notice is not None:
                    notices.append(notice)
        return Round(notices, errors)


class GcpWatcher(_MetadataReader):
    """``instance/preempted``: one plain read, then ``wait_for_change`` long polls from its ETag."""

    provider: ProviderName = "gcp"
    unavailable_hint = ""

    def __init__(
        self,
        http: HttpClient,
        base_url: str,
        clock: Clock,
        timeout_s: float,
        *,
        notice_s: float,
        long_poll_s: int,
    ) -> None:
        super().__init__(http, base_url, clock, timeout_s)
        self.notice_s = notice_s
        self.long_poll_s = long_poll_s
        self._etag: str | None = None

    async def instance_id(self) -> str:
        answer = await self._request("GET", GCP_INSTANCE_NAME_PATH, GCP_HEADERS)
        return parse_instance_id("instance/name", answer.status, answer.body)

    async def check(self, instance_id: str) -> Round:
        sent = self._etag
        path = GCP_PREEMPTED_PATH
        timeout_s = self.timeout_s
        if sent is not None:
            path += f"?wait_for_change=true&last_etag={quote(sent, safe='')}&timeout_sec={self.long_poll_s}"
            timeout_s += self.long_poll_s
        answer = await self._request("GET", path, GCP_HEADERS, timeout_s)
        try:
            notice = parse_gcp_preempted(answer.status, answer.body, self.clock.now(), self.notice_s)
        except MetadataError:
            self._etag = None  # start again from a plain read, after the poll interval
            raise
        self._etag = answer.headers.get("etag") or None
        # Long-poll again at once when the value moved on; an answer with the ETag we sent (the server's
        # timeout, or a server ignoring wait_for_change) waits for the poll interval first.
        immediate = self._etag is not None and self._etag != sent
        return Round([notice] if notice is not None else [], immediate=immediate)


class AzureWatcher(_MetadataReader):
    """Scheduled Events: ``Preempt`` events naming this VM."""

    provider: ProviderName = "azure"
    unavailable_hint = ""

    def __init__(self, http: HttpClient, base_url: str, clock: Clock, timeout_s: float) -> None:
        super().__init__(http, base_url, clock, timeout_s)
        self._answered = False

    async def instance_id(self) -> str:
        answer = await self._request("GET", AZURE_INSTANCE_NAME_PATH, AZURE_HEADERS)
        return parse_instance_id("instance/compute/name", answer.status, answer.body)

    async def check(self, instance_id: str) -> Round:
        timeout_s = self.timeout_s
        if not self._answered:
            timeout_s = max(timeout_s, AZURE_FIRST_CALL_TIMEOUT_SECONDS)
        answer = await self._request("GET", AZURE_EVENTS_PATH, AZURE_HEADERS, timeout_s)
        self._answered = True
        notice = parse_azure_events(answer.status, answer.body, self.clock.now(), instance_id)
        return Round([notice] if notice is not None else [])


def make_watcher(config: SidecarConfig, clock: Clock, http: HttpClient) -> Watcher:
    if config.provider == "aws":
        return AwsWatcher(http, config.base_url, clock, config.request_timeout_s)
    if config.provider == "gcp":
        return GcpWatcher(
            http,
            config.base_url,
            clock,
            config.request_timeout_s,
            notice_s=config.gcp_notice_s,
            long_poll_s=config.long_poll_s,
        )
    return AzureWatcher(http, config.base_url, clock, config.request_timeout_s)


class _Stopped(Exception):
    pass


UNSENT_RETRY_SECONDS: Final = 0.2
"""While stopping with a notice unconfirmed: how often to try NATS again within the grace period."""


@dataclass(slots=True)
class _Buffered:
    """A notice handed to the client but not yet confirmed by the server."""

    subject: str
    message: PreemptionNotice
    reconnects: int
    """The connection's reconnect count when it was written: a later reconnection may have lost it."""


class Sidecar:
    """The polling loop and the publisher, on one NATS connection; :meth:`run` returns when ``stop`` is
    set."""

    def __init__(
        self,
        watcher: Watcher,
        nc: NATS,
        subjects: Subjects,
        clock: Clock,
        stop: asyncio.Event,
        *,
        instance_id: str = "",
        poll_s: float = DEFAULT_POLL_SECONDS,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_SECONDS,
        deliver_s: float = 0.0,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.watcher = watcher
        self.nc = nc
        self.subjects = subjects
        self.clock = clock
        self.stop = stop
        self.instance_id = instance_id
        self.poll_s = poll_s
        self.max_backoff_s = max(max_backoff_s, poll_s)
        self.deliver_s = deliver_s
        """After the stop event: how long to keep trying to get unconfirmed notices to NATS."""
        self.metrics = metrics or AgentMetrics()
        self.started = asyncio.Event()
        """Set once the instance id is known and polling begins."""
        self.stats: Counter[str] = Counter()
        """``rounds``, ``published``, ``bad_answers``, ``unavailable``, ``publish_failed``, ``crashes``,
        ``unsent``."""
        self._published: set[str] = set()
        self._buffered: dict[str, _Buffered] = {}
        self._logged: set[tuple[str, ...]] = set()
        self._failures = 0
        self.log = log.bind(provider=watcher.provider)

    async def run(self) -> None:
        if not self.instance_id:
            resolved = await self._resolve_instance_id()
            if resolved is None:
                return
            self.instance_id = resolved
        self.log = self.log.bind(instance_id=self.instance_id)
        bus = Bus(
            self.nc,
            self.subjects,
            source=f"sidecar:{self.instance_id}",
            clock=self.clock,
            metrics=self.metrics,
        )
        subject = self.subjects.spot_notice(self.instance_id)
        self.log.info("sidecar_started", subject=subject, poll_s=self.poll_s)
        self.started.set()
        next_at = self.clock.now()
        while not self.stop.is_set():
            await self._confirm(bus)
            try:
                found = await self._unless_stopped(self.watcher.check(self.instance_id))
            except _Stopped:
                break
            except ServiceUnavailable as err:
                if await self._back_off(str(err)):
                    break
                next_at = self.clock.now()
                continue
            except MetadataError as err:
                found = Round([], [err])
            except Exception as err:  # a bug, not the metadata service: keep watching, say it once
                self._crashed(err)
                if await self._back_off(f"{type(err).__name__}: {err}", unavailable=False):
                    break
                next_at = self.clock.now()
                continue
            self.stats["rounds"] += 1
            self._recovered()
            for error in found.errors:
                self._bad_answer(error)
            for notice in found.notices:
                await self._publish(bus, subject, notice)
            if found.immediate and not found.errors:
                next_at = self.clock.now()
                continue
            next_at += self.poll_s
            next_at = max(next_at, self.clock.now())
            if await self.clock.wait_until(next_at, self.stop):
                break
        await self._deliver_before_exit(bus)

    async def _resolve_instance_id(self) -> str | None:
        while not self.stop.is_set():
            try:
                return await self._unless_stopped(self.watcher.instance_id())
            except _Stopped:
                return None
            except ServiceUnavailable as err:
                reason, unavailable = str(err), True
            except MetadataError as err:
                self._bad_answer(err)
                reason, unavailable = str(err), False
            if await self._back_off(reason, unavailable=unavailable):
                return None
        return None

    async def _unless_stopped(self, work: Awaitable[T]) -> T:
        """``await work``, unless the stop event comes first: then cancel it and raise _Stopped."""
        task = asyncio.ensure_future(work)
        stopped = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not task.done():
                task.cancel()
        if task.cancelled() or not task.done():
            await asyncio.wait({task})  # the request closes its socket
            raise _Stopped
        return task.result()

    async def _back_off(self, reason: str, *, unavailable: bool = True) -> bool:
        """Wait before trying again (exponential back-off); True when stopped meanwhile."""
        self._failures += 1
        delay = min(self.max_backoff_s, self.poll_s * 2 ** min(self._failures - 1, 30))
        if unavailable:
            self.stats["unavailable"] += 1
            if self._failures == 1:
                extra = {"hint": self.watcher.unavailable_hint} if self.watcher.unavailable_hint else {}
                self.log.warning("metadata_unavailable", error=reason, retry_in_s=delay, **extra)
        return await self.clock.wait_until(self.clock.now() + delay, self.stop)

    def _recovered(self) -> None:
        if self._failures:
            self.log.info("metadata_recovered", failures=self._failures)
            self._failures = 0

    def _once(self, kind: tuple[str, ...]) -> bool:
        if kind in self._logged or len(self._logged) >= _MAX_LOGGED_KINDS:
            return False
        self._logged.add(kind)
        return True

    def _bad_answer(self, err: MetadataError) -> None:
        self.stats["bad_answers"] += 1
        if self._once(("bad_answer", err.field, err.problem)):
            self.log.warning(
                "metadata_bad_answer", field=err.field, problem=err.problem, detail=err.detail, error=str(err)
            )

    def _crashed(self, err: Exception) -> None:
        self.stats["crashes"] += 1
        if self._once(("crash", type(err).__name__)):
            self.log.error("sidecar_round_failed", error=f"{type(err).__name__}: {err}", exc_info=err)

    async def _publish(self, bus: Bus, subject: str, notice: Notice) -> None:
        if notice.key in self._published:
            return
        message = PreemptionNotice(
            **envelope(source=bus.source, sent_at=self.clock.now()),
            instance_id=self.instance_id,
            kind=notice.kind,
            deadline=notice.deadline,
            provider=self.watcher.provider,
            received_at=notice.received_at,
        )
        if not await self._send(bus, subject, message):
            return
        self._published.add(notice.key)
        self._buffered[notice.key] = _Buffered(subject, message, self._reconnects())
        await self._confirm(bus)
        if notice.key in self._buffered:
            self.log.warning(
                "notice_buffered",
                subject=subject,
                msg_id=message.msg_id,
                kind=notice.kind,
                deadline=notice.deadline,
                detail="NATS has not confirmed it: it goes when the connection is back",
            )

    async def _send(self, bus: Bus, subject: str, message: PreemptionNotice) -> bool:
        try:
            await bus.publish(subject, message)
        except Exception as err:  # closed connection or a full reconnect buffer: try again at the next read
            self.stats["publish_failed"] += 1
            if self._once(("publish_failed", type(err).__name__)):
                error = f"{type(err).__name__}: {err}"
                self.log.warning("notice_publish_failed", subject=subject, error=error)
            return False
        return True

    def _reconnects(self) -> int:
        return int(self.nc.stats.get("reconnects", 0))

    async def _confirm(self, bus: Bus) -> None:
        """Mark the buffered notices published once the server has answered a flush sent after them.

        A notice written before a reconnection may have gone down with the old connection (a half-open
        socket takes the bytes and drops them), so it is sent again first, with its own ``msg_id``.
        """
        if not self._buffered or not self.nc.is_connected:
            return
        for pending in self._buffered.values():
            if pending.reconnects != self._reconnects():
                if not await self._send(bus, pending.subject, pending.message):
                    return
                pending.reconnects = self._reconnects()
        # An echo through the server, after the notices on the same connection (NATS keeps a connection's
        # order), rather than nats-py's flush(): a flush that times out breaks its read loop when the late
        # PONG comes (agent.runtime.link).
        if await bus.link.answering() is None:
            return  # not answered (yet): still buffered, tried again at the next round
        for pending in self._buffered.values():
            self._confirmed(pending)
        self._buffered.clear()

    def _confirmed(self, pending: _Buffered) -> None:
        message = pending.message
        self.stats["published"] += 1
        self.log.info(
            "notice_published",
            subject=pending.subject,
            msg_id=message.msg_id,
            kind=message.kind,
            deadline=message.deadline,
            received_at=message.received_at,
            seconds_left=round(message.deadline - message.received_at, 3),
        )

    async def _deliver_before_exit(self, bus: Bus) -> None:
        """On stop, keep trying NATS for the unconfirmed notices within the grace period, then say which
        never got through: a notice lost in silence is the one failure this process exists to prevent."""
        give_up_at = self.clock.now() + self.deliver_s
        while self._buffered and self.clock.now() < give_up_at:
            await self._confirm(bus)
            if self._buffered:
                await asyncio.sleep(UNSENT_RETRY_SECONDS)
        for pending in self._buffered.values():
            self.stats["unsent"] += 1
            self.log.error(
                "notice_unsent",
                subject=pending.subject,
                msg_id=pending.message.msg_id,
                kind=pending.message.kind,
                deadline=pending.message.deadline,
                detail="NATS was unreachable until the sidecar stopped",
            )


async def run_sidecar(
    config: SidecarConfig,
    *,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
    install_signals: bool = True,
) -> int:
    """``cost-agent sidecar``: until SIGTERM/SIGINT (or ``stop``), exit code 0 (1 if the poller crashed).
    Raises ConnectionError when NATS cannot be reached at start."""
    clock = clock or RealClock()
    stop = stop or asyncio.Event()
    with stop_on_signals(stop, install=install_signals):
        nc = await connect(config.nats_url, "cost-agent-sidecar", BusSecurity.from_env())
        async with HttpClient(user_agent="cost-agent-sidecar") as http:
            sidecar = Sidecar(
                make_watcher(config, clock, http),
                nc,
                Subjects(config.namespace),
                clock,
                stop,
                instance_id=config.instance_id.strip(),
                poll_s=config.poll_s,
                max_backoff_s=config.max_backoff_s,
                # within the grace shut_down gives the poller, leaving room for the connection's drain
                deliver_s=config.grace_s * 0.75,
            )
            log.info(
                "sidecar_starting",
                provider=config.provider,
                metadata_url=config.base_url,
                nats_url=redact_url(config.nats_url),
                namespace=config.namespace,
            )
            poller = asyncio.create_task(sidecar.run(), name="poller")
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({poller, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            ended_alone = poller.done() and not stop.is_set()
            sidecar.log.info("sidecar_stopping")
            stop.set()
            await shut_down(nc, [poller], config.grace_s)
    code = _exit_code(poller, ended_alone, sidecar.log)
    sidecar.log.info("sidecar_stopped", exit_code=code, **dict(sidecar.stats))
    return code


def _exit_code(
    poller: asyncio.Task[None], ended_alone: bool, slog: structlog.typing.FilteringBoundLogger
) -> int:
    """0 for a poller that ended on the stop event (or was cancelled after the grace period); 1, logged
    with its traceback, for one that raised or returned unasked (:meth:`Sidecar.run` returns only once
    stopped: either is a bug)."""
    if poller.cancelled():
        return 0
    error = poller.exception()
    if error is None and not ended_alone:
        return 0
    slog.error(
        "sidecar_crashed",
        error=repr(error) if error else "poller returned before the stop event",
        exc_info=error,
    )
    return 1


__all__ = [
    "AwsWatcher",
    "AzureWatcher",
    "GcpWatcher",
    "Round",
    "Sidecar",
    "SidecarConfig",
    "Watcher",
    "make_watcher",
    "run_sidecar",
]
