"""``cost-agent sidecar`` as it runs on a spot node: the real process, a fake metadata service per provider
(asyncio, 127.0.0.1, a port of its own), the session nats-server, and SIGTERM.

Each test starts the fake service with a malformed (or no) answer, then "no notice", then flips it to a
notice, and checks the PreemptionNotice that arrives on ``{ns}.evt.spot.notice.*``. Every wait is on an
event (a request served, a message, a log line) with a timeout; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import nats
import pytest
from cli import ROOT, LoggedProcess, run_cost_agent
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext
from restartable_nats import RestartableServer
from waits import eventually

from agent.bus import settle
from agent.subjects import Subjects
from schemas import PreemptionNotice

WAIT_S = 10.0
POLL = "0.05"

AWS_ID = "i-0abc123def4567890"
GCP_NAME = "spot-a100-3"
AZURE_NAME = "spot-vm-7"


class FakeMetadata:
    """One provider's metadata service. ``mode`` chooses the answers (``none``, ``bad``, ``drop``: close
    without answering, and per provider ``notice`` / ``rebalance`` / ``terminate``); every request is
    recorded in ``history`` as ``(path, status)``."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.mode = "none"
        self.version = 0
        self.history: list[tuple[str, int]] = []
        self.tokens: set[str] = set()
        self.tokens_issued = 0
        self.long_polls_waiting = 0
        self.answered_long_polls: list[str] = []
        self.action_time = datetime.fromtimestamp(int(time.time()) + 120, UTC)
        self.not_before = datetime.fromtimestamp(int(time.time()) + 30, UTC)
        self._changed = asyncio.Event()
        self._seen = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        self.version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def expire_tokens(self) -> None:
        self.tokens.clear()

    def count(self, path: str, status: int | None = None) -> int:
        return sum(1 for p, s in self.history if p == path and (status is None or s == status))

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT_S), self._seen:
            await self._seen.wait_for(condition)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        path, status = "", 0
        try:
            request_line = (await reader.readline()).decode()
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            method, target, _ = request_line.split(" ", 2)
            parts = urlsplit(target)
            path = parts.path
            if self.mode == "drop":
                return
            status, body, extra = await self._answer(method, path, parse_qs(parts.query), headers, reader)
            head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
            writer.write((head + "".join(f"{k}: {v}\r\n" for k, v in extra.items()) + "\r\n").encode() + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            self._handlers.discard(task)
            async with self._seen:
                self.history.append((path, status))
                self._seen.notify_all()

    async def _answer(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        reader: asyncio.StreamReader,
    ) -> tuple[int, bytes, dict[str, str]]:
        if self.provider == "aws":
            return self._aws(method, path, headers)
        if self.provider == "gcp":
            return await self._gcp(path, query, headers, reader)
        return self._azure(path, query, headers)

    def _aws(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        if path == "/latest/api/token":
            if method != "PUT" or "x-aws-ec2-metadata-token-ttl-seconds" not in headers:
                return 400, b"", {}
            self.tokens_issued += 1
            token = f"token-{self.tokens_issued}"
            self.tokens.add(token)
            return 200, token.encode(), {}
        if headers.get("x-aws-ec2-metadata-token") not in self.tokens:
            return 401, b"", {}
        if path == "/latest/meta-data/instance-id":
            return 200, AWS_ID.encode(), {}
        if path == "/latest/meta-data/spot/instance-action":
            if self.mode == "bad":
                return 200, b'{"action": "terminate", "time": ', {}
            if self.mode == "terminate":
                stamp = self.action_time.strftime("%Y-%m-%dT%H:%M:%SZ")
                return 200, json.dumps({"action": "terminate", "time": stamp}).encode(), {}
            return 404, b"", {}
        if path == "/latest/meta-data/events/recommendations/rebalance":
            if self.mode in ("rebalance", "terminate"):
                return 200, b'{"noticeTime": "2030-01-01T00:00:00Z"}', {}
            return 404, b"", {}
        return 404, b"", {}

    async def _gcp(
        self, path: str, query: dict[str, list[str]], headers: dict[str, str], reader: asyncio.StreamReader
    ) -> tuple[int, bytes, dict[str, str]]:
        if headers.get("metadata-flavor") != "Google":
            return 403, b"", {}
        if path == "/computeMetadata/v1/instance/name":
            return 200, GCP_NAME.encode(), {}
        if path != "/computeMetadata/v1/instance/preempted":
            return 404, b"", {}
        if query.get("wait_for_change") == ["true"] and query.get("last_etag") == [f"etag-{self.version}"]:
            # Hold the request until the value changes, timeout_sec passes or the client goes away.
            self.long_polls_waiting += 1
            async with self._seen:
                self._seen.notify_all()
            changed = asyncio.ensure_future(self._changed.wait())
            gone = asyncio.ensure_future(reader.read(1))
            try:
                await asyncio.wait(
                    {changed, gone},
                    timeout=float(query.get("timeout_sec", ["60"])[0]),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                changed.cancel()
                gone.cancel()
                self.long_polls_waiting -= 1
            self.answered_long_polls.append(self.mode)
        value = {"bad": b"MAYBE", "notice": b"TRUE"}.get(self.mode, b"FALSE")
        return 200, value, {"ETag": f"etag-{self.version}", "Metadata-Flavor": "Google"}

    def _azure(
        self, path: str, query: dict[str, list[str]], headers: dict[str, str]
    ) -> tuple[int, bytes, dict[str, str]]:
        if headers.get("metadata") != "true":
            return 400, b"Bad request. Required metadata header not specified", {}
        if path == "/metadata/instance/compute/name":
            if query.get("format") != ["text"] or "api-version" not in query:
                return 400, b"", {}
            return 200, AZURE_NAME.encode(), {}
        if path != "/metadata/scheduledevents" or query.get("api-version") != ["2020-07-01"]:
            return 404, b"", {}
        other_vm = {
            "EventId": "5D1A1A1E-0000-4000-8000-000000000001",
            "EventType": "Preempt",
            "ResourceType": "VirtualMachine",
            "Resources": ["spot-vm-8"],
            "EventStatus": "Scheduled",
            "NotBefore": email.utils.format_datetime(self.not_before, usegmt=True),
            "Description": "",
            "EventSource": "Platform",
            "DurationInSeconds": -1,
        }
        events: list[dict[str, Any]] = [other_vm]
        if self.mode == "bad":
            events.append(other_vm | {"Resources": [AZURE_NAME], "NotBefore": "next Tuesday"})
        elif self.mode == "notice":
            events.append(
                other_vm | {"EventId": "602d9444-d2cd-49c7-8624-8643e7171297", "Resources": [AZURE_NAME]}
            )
        return 200, json.dumps({"DocumentIncarnation": self.version, "Events": events}).encode(), {}


class SidecarProcess(LoggedProcess):
    async def wait_logged(self, name: str, timeout_s: float = WAIT_S) -> dict[str, Any]:
        return await super().wait_logged(name, timeout_s)

    async def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            code = await self.proc.wait()
            await self._reader
        return code


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[tuple[NATS, str]]:
    nc = await nats.connect(nats_url)
    yield nc, f"e2e{uuid.uuid4().hex[:8]}"
    await nc.close()


@pytest.fixture
async def launch(nats_url: str) -> AsyncIterator[Callable[..., Any]]:
    started: list[SidecarProcess] = []
    fakes: list[FakeMetadata] = []

    async def start(
        provider: str, namespace: str, *extra: str, nats: str | None = None
    ) -> tuple[SidecarProcess, FakeMetadata]:
        fake = FakeMetadata(provider)
        fakes.append(fake)
        url = await fake.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COST_AGENT_", "NATS_URL"))}
        script = Path(sys.executable).parent / "cost-agent"
        proc = await asyncio.create_subprocess_exec(
            str(script),
            "sidecar",
            "--provider",
            provider,
            "--metadata-url",
            url,
            "--nats-url",
            nats or nats_url,
            "--namespace",
            namespace,
            "--poll-seconds",
            POLL,
            "--log-format",
            "json",
            *extra,
            cwd=ROOT,
            env=env,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        sidecar = SidecarProcess(proc)
        started.append(sidecar)
        return sidecar, fake

    yield start
    for sidecar in started:
        if sidecar.proc.returncode is None:
            os.killpg(sidecar.proc.pid, signal.SIGKILL)
            await sidecar.proc.wait()
        await sidecar._reader
    for fake in fakes:
        await fake.stop()


def notice_of(msg: Any, ns: str, instance_id: str, provider: str) -> PreemptionNotice:
    notice = msgspec.json.decode(msg.data, type=PreemptionNotice)
    assert msg.subject == Subjects(ns).spot_notice(instance_id)
    assert notice.instance_id == instance_id
    assert notice.provider == provider
    assert notice.source == f"sidecar:{instance_id}"
    assert notice.msg_id
    assert notice.sent_at >= notice.received_at > time.time() - 60
    return notice


async def test_aws_rebalance_then_terminate_survives_garbage_and_expired_tokens(
    bus: tuple[NATS, str], launch: Callable[..., Any]
) -> None:
    nc, ns = bus
    sub = await nc.subscribe(f"{ns}.evt.spot.notice.*")
    await settle(nc)
    action = "/latest/meta-data/spot/instance-action"
    sidecar, fake = await launch("aws", ns)
    fake.set_mode("bad")
    await fake.wait_until(lambda: fake.count(action, 200) >= 3)  # garbage, again and again: still polling
    fake.set_mode("none")
    await fake.wait_until(lambda: fake.count(action, 404) >= 2)
    assert sidecar.proc.returncode is None
    started = await sidecar.wait_logged("sidecar_started")
    assert started["instance_id"] == AWS_ID  # from /latest/meta-data/instance-id

    tokens = fake.tokens_issued
    fake.expire_tokens()  # the next GET is answered 401: the sidecar takes a new token and goes on
    await fake.wait_until(lambda: fake.tokens_issued > tokens and fake.count(action, 404) >= 4)

    fake.set_mode("rebalance")
    rebalance = notice_of(await sub.next_msg(timeout=WAIT_S), ns, AWS_ID, "aws")
    assert rebalance.kind == "rebalance"
    assert rebalance.deadline == rebalance.received_at

    fake.set_mode("terminate")  # the rebalance recommendation stays, the interruption notice comes
    terminate = notice_of(await sub.next_msg(timeout=WAIT_S), ns, AWS_ID, "aws")
    assert terminate.kind == "terminate"
    assert terminate.deadline == fake.action_time.timestamp()

    # Read again and again, published once.
    seen = fake.count(action, 200)
    await fake.wait_until(lambda: fake.count(action, 200) >= seen + 3)
    await settle(nc)
    assert sub.pending_msgs == 0

    assert await sidecar.terminate() == 0
    bad = sidecar.named("metadata_bad_answer")
    assert len(bad) == 1  # logged once for its kind, however often it came
    assert bad[0]["field"] == "spot/instance-action"
    assert bad[0]["problem"] == "not JSON"
    stopped = sidecar.named("sidecar_stopped")[0]
    assert stopped["exit_code"] == 0
    assert stopped["published"] == 2
    assert stopped["bad_answers"] >= 3


async def test_gcp_long_poll_delivers_the_notice_at_once_and_sigterm_ends_a_pending_poll(
    bus: tuple[NATS, str], launch: Callable[..., Any]
) -> None:
    nc, ns = bus
    sub = await nc.subscribe(f"{ns}.evt.spot.notice.*")
    await settle(nc)
    preempted = "/computeMetadata/v1/instance/preempted"
    sidecar, fake = await launch("gcp", ns, "--gcp-notice-seconds", "45")
    fake.set_mode("bad")
    await fake.wait_until(lambda: fake.count(preempted) >= 3)
    fake.set_mode("none")
    await fake.wait_until(lambda: fake.long_polls_waiting > 0)  # a wait_for_change request is held

    fake.set_mode("notice")
    notice = notice_of(await sub.next_msg(timeout=WAIT_S), ns, GCP_NAME, "gcp")
    assert notice.kind == "terminate"
    assert notice.deadline == pytest.approx(notice.received_at + 45)
    assert "notice" in fake.answered_long_polls  # the held long poll carried it, not a later poll

    await fake.wait_until(lambda: fake.long_polls_waiting > 0)  # polling on, from the new ETag
    began = time.monotonic()
    assert await sidecar.terminate() == 0
    assert time.monotonic() - began < 3.0  # the pending long poll did not hold up shutdown
    await settle(nc)
    assert sub.pending_msgs == 0
    assert len(sidecar.named("metadata_bad_answer")) == 1
    assert sidecar.named("metadata_bad_answer")[0]["field"] == "instance/preempted"
    assert sidecar.named("sidecar_stopped")[0]["published"] == 1


async def test_azure_preempt_for_this_vm_after_an_outage_and_garbage(
    bus: tuple[NATS, str], launch: Callable[..., Any]
) -> None:
    nc, ns = bus
    sub = await nc.subscribe(f"{ns}.evt.spot.notice.*")
    await settle(nc)
    events = "/metadata/scheduledevents"
    sidecar, fake = await launch("azure", ns)
    fake.set_mode("drop")  # the service closes every connection without an answer
    await fake.wait_until(lambda: len(fake.history) >= 3)
    await sidecar.wait_logged("metadata_unavailable")
    fake.set_mode("bad")
    await fake.wait_until(lambda: fake.count(events, 200) >= 2)
    fake.set_mode("none")  # a Preempt for another VM of the scale set only
    await fake.wait_until(lambda: fake.count(events, 200) >= 5)
    assert sidecar.proc.returncode is None

    fake.set_mode("notice")
    notice = notice_of(await sub.next_msg(timeout=WAIT_S), ns, AZURE_NAME, "azure")
    assert notice.kind == "terminate"
    assert notice.deadline == fake.not_before.timestamp()

    seen = fake.count(events, 200)
    await fake.wait_until(lambda: fake.count(events, 200) >= seen + 3)
    await settle(nc)
    assert sub.pending_msgs == 0

    assert await sidecar.terminate() == 0
    assert sidecar.named("metadata_recovered")
    unavailable = sidecar.named("metadata_unavailable")
    assert len(unavailable) == 1
    bad = sidecar.named("metadata_bad_answer")
    assert [b["field"] for b in bad] == ["scheduledevents.Events[1].NotBefore"]
    assert sidecar.named("sidecar_stopped")[0]["exit_code"] == 0


@pytest.fixture
def outage_server() -> Iterator[RestartableServer]:
    """A nats-server of the test's own, with a stream recording every notice (kept across restarts)."""
    with tempfile.TemporaryDirectory(prefix="cost-agent-sidecar-outage-") as workdir:
        server = RestartableServer(Path(workdir), jetstream=True)
        server.start()
        try:
            yield server
        finally:
            server.stop()


async def record_notices(url: str, ns: str) -> tuple[NATS, JetStreamContext, str]:
    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream()
    stream = f"notices_{ns}"
    await js.add_stream(name=stream, subjects=[f"{ns}.evt.spot.notice.*"])
    return nc, js, stream


async def test_a_notice_made_while_nats_is_down_is_buffered_then_confirmed_when_it_is_back(
    outage_server: RestartableServer, launch: Callable[..., Any]
) -> None:
    ns = f"e2e{uuid.uuid4().hex[:8]}"
    nc, js, stream = await record_notices(outage_server.url, ns)
    sidecar, fake = await launch("aws", ns, nats=outage_server.url)
    await sidecar.wait_logged("sidecar_started")
    outage_server.stop()
    await sidecar.wait_logged("nats_disconnected")

    fake.set_mode("terminate")  # AWS shows the rebalance recommendation with it: two notices
    await eventually(lambda: len(sidecar.named("notice_buffered")) == 2, "two notices buffered", WAIT_S)
    buffered = {b["kind"]: b["msg_id"] for b in sidecar.named("notice_buffered")}
    assert set(buffered) == {"rebalance", "terminate"}
    assert not sidecar.named("notice_published")  # the server does not have them: not "published"

    outage_server.start()
    await eventually(lambda: len(sidecar.named("notice_published")) == 2, "both confirmed", 30)
    assert {p["kind"]: p["msg_id"] for p in sidecar.named("notice_published")} == buffered
    # What reached the server: both notices (a notice may arrive twice, from the client's buffer and sent
    # again after the reconnection, with the same msg_id: the agent treats a repeat as one).
    info = await js.stream_info(stream)
    stored = [
        msgspec.json.decode((await js.get_msg(stream, seq)).data or b"", type=PreemptionNotice)
        for seq in range(info.state.first_seq, info.state.last_seq + 1)
    ]
    assert {n.kind: n.msg_id for n in stored} == buffered
    terminate = next(n for n in stored if n.kind == "terminate")
    assert terminate.deadline == fake.action_time.timestamp()

    assert await sidecar.terminate() == 0
    stopped = sidecar.named("sidecar_stopped")[0]
    assert stopped["published"] == 2
    assert "unsent" not in stopped
    await nc.close()


async def test_stopping_while_nats_is_down_waits_the_grace_then_names_the_unsent_notice(
    outage_server: RestartableServer, launch: Callable[..., Any]
) -> None:
    ns = f"e2e{uuid.uuid4().hex[:8]}"
    sidecar, fake = await launch("aws", ns, "--grace-seconds", "1", nats=outage_server.url)
    await sidecar.wait_logged("sidecar_started")
    outage_server.stop()
    await sidecar.wait_logged("nats_disconnected")
    fake.set_mode("terminate")
    await eventually(lambda: len(sidecar.named("notice_buffered")) == 2, "two notices buffered", WAIT_S)
    buffered = sorted(b["msg_id"] for b in sidecar.named("notice_buffered"))

    assert await sidecar.terminate() == 0
    unsent = sidecar.named("notice_unsent")
    assert sorted(u["msg_id"] for u in unsent) == buffered
    assert {u["level"] for u in unsent} == {"error"}
    stopped = sidecar.named("sidecar_stopped")[0]
    assert stopped["unsent"] == 2
    assert stopped.get("published", 0) == 0


def test_a_bad_option_stops_the_sidecar_with_one_line() -> None:
    result = run_cost_agent(
        "sidecar",
        "--provider",
        "aws",
        "--nats-url",
        "nats://127.0.0.1:1",
        "--poll-seconds",
        "0",
        timeout_s=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["cost-agent: sidecar: --poll-seconds: must be a number > 0, got 0.0"]


def test_the_sidecar_loads_no_planning_code() -> None:
    # A spot node's sidecar starts fast and small: no optimizer, so no numpy or scipy (checked in a fresh
    # interpreter, since this one has loaded them for other tests).
    code = (
        "import agent.providers.sidecar, sys\n"
        "loaded = [m for m in ('numpy', 'scipy', 'agent.service', 'agent.actors') if m in sys.modules]\n"
        "assert not loaded, loaded"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
