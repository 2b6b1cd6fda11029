"""Regenerate the real Dynamo 1.6.1 samples in this directory (for unit tests that parse Dynamo's wire
formats without running Dynamo):

    .venv/bin/python tests/data/dynamo/regenerate.py [DIRECTORY]

(into DIRECTORY instead of this one, to look before replacing the samples.)

Runs a JetStream nats-server, a Dynamo frontend (``--migration-limit 3``) and two mocker workers, sends
streaming chat completions of known sizes, and writes:

- ``frontend-metrics.txt``: the frontend's ``/metrics`` text after that traffic;
- ``frontend-metrics-migrated.txt``: the same after a worker holding long streams was SIGKILLed and the
  frontend migrated them (``dynamo_frontend_model_migration_total`` present);
- ``forward-pass-metrics-{i}.msgpack``, ``kv_metrics-{i}.msgpack``, ``kv-events-{i}.msgpack``: raw
  event-plane messages (the bytes of the NATS message: a msgpack envelope whose ``payload`` is msgpack);
- ``samples.json``: what was sent (request and token counts), each message file's subject and its
  decoded form (envelope with the payload decoded), so a test can check its own decoding against it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import nats
from nats.aio.msg import Msg

from agent.bus import settle
from agent.providers.httpclient import HttpClient
from agent.runtime.nats_server import NatsServer
from agent.sim.dynamo_local import (
    COMPONENT,
    ENDPOINT,
    LocalDynamo,
    chat_request,
    metric,
    prompt_tokens,
    stream_chat,
    write_tiny_model,
)

HERE = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else Path(__file__).resolve().parent
NAMESPACE = "samples"
KINDS = ("forward-pass-metrics", "kv_metrics", "kv-events")
PER_KIND = 4
# (user words, max tokens) of each request: prompt tokens are words + 4 (the chat template's).
REQUESTS = [(5, 20), (12, 40), (30, 8), (7, 64), (50, 16), (3, 32)]


def decoded(raw: bytes) -> Any:
    envelope = msgspec.msgpack.decode(raw)
    envelope["payload"] = msgspec.msgpack.decode(envelope["payload"])
    return envelope


def fpm_shape(raw: bytes) -> str:
    scheduled = decoded(raw)["payload"]["scheduled_requests"]
    prefill, decode = scheduled["num_prefill_requests"] > 0, scheduled["num_decode_requests"] > 0
    return {(True, False): "prefill", (False, True): "decode", (True, True): "mixed"}.get(
        (prefill, decode), "idle"
    )


def pick(messages: list[tuple[str, bytes]], kind: str) -> list[tuple[str, bytes]]:
    """Up to PER_KIND messages of a kind, as varied as the capture allows: for ForwardPassMetrics a
    prefill iteration, a decode iteration, a mixed or queued one and an idle heartbeat."""
    if kind != "forward-pass-metrics":
        return messages[:PER_KIND]
    chosen: dict[str, tuple[str, bytes]] = {}
    for message in messages:
        chosen.setdefault(fpm_shape(message[1]), message)
    rest = [m for m in messages if m not in chosen.values()]
    return (list(chosen.values()) + rest)[:PER_KIND]


class Capture:
    """Every message under the endpoint's subjects, by kind (the subject's last token)."""

    def __init__(self) -> None:
        self.messages: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
        self._arrived = asyncio.Condition()

    async def on_message(self, msg: Msg) -> None:
        async with self._arrived:
            self.messages[msg.subject.rsplit(".", 1)[1]].append((msg.subject, msg.data))
            self._arrived.notify_all()

    async def wait(self, until: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
        try:
            async with asyncio.timeout(timeout_s), self._arrived:
                await self._arrived.wait_for(until)
        except TimeoutError:
            counts = {k: len(v) for k, v in self.messages.items()}
            raise SystemExit(f"{what} not captured in {timeout_s:g} s: {counts}") from None

    async def enough(self, kinds: tuple[str, ...]) -> None:
        await self.wait(
            lambda: all(len(self.messages[k]) >= PER_KIND for k in kinds), f"{PER_KIND} of {kinds}"
        )


async def main() -> int:
    with tempfile.TemporaryDirectory(prefix="dynamo-samples-") as tmp, NatsServer(jetstream=True) as server:
        work = Path(tmp)
        model = write_tiny_model(work / "model")
        with LocalDynamo(work / "run", nats_url=server.url, model_dir=model, namespace=NAMESPACE) as dynamo:
            dynamo.start_frontend(migration_limit=3)
            dynamo.start_worker(speedup_ratio=1.0)
            dynamo.start_worker(speedup_ratio=1.0)
            nc = await nats.connect(server.url)
            capture = Capture()
            captured = capture.messages
            prefix = f"namespace.{NAMESPACE}.component.{COMPONENT}.endpoint.{ENDPOINT}"
            await nc.subscribe(f"{prefix}.*", cb=capture.on_message)
            await settle(nc)
            async with HttpClient() as http, aiohttp.ClientSession() as session:
                await dynamo.wait_ready(http)
                url = dynamo.frontend_url
                results = await asyncio.gather(
                    *(
                        stream_chat(session, url, chat_request(w, n, first_word=i), timeout_s=60)
                        for i, (w, n) in enumerate(REQUESTS)
                    )
                )
                assert all(r.ok for r in results), results
                await capture.enough(KINDS[:2])
                # An idle worker publishes a ForwardPassMetrics heartbeat about once a second: keep one.
                await capture.wait(
                    lambda: any(fpm_shape(raw) == "idle" for _, raw in captured[KINDS[0]]),
                    "an idle heartbeat",
                )
                (HERE / "frontend-metrics.txt").write_text(await dynamo.metrics_text(http))

                # Long streams on both workers, then one worker dies: the frontend migrates its streams.
                long = [chat_request(4, 1500, first_word=i) for i in range(4)]
                streams = [
                    asyncio.ensure_future(stream_chat(session, dynamo.frontend_url, r, timeout_s=120))
                    for r in long
                ]
                await dynamo.wait_metrics(
                    http,
                    lambda text: metric(text, "dynamo_frontend_inflight_requests") == 4,
                    what="4 in flight",
                )
                dynamo.workers[0].kill()
                migrated = await asyncio.gather(*streams)
                assert all(r.ok and r.completion_tokens == 1500 for r in migrated), migrated
                (HERE / "frontend-metrics-migrated.txt").write_text(await dynamo.metrics_text(http))
                # KV blocks are 64 tokens: short requests store few, the long streams store many.
                await capture.enough(KINDS[2:])
            await nc.drain()

    for old in HERE.glob("*.msgpack"):
        old.unlink()
    files = []
    for kind in KINDS:
        for i, (subject, raw) in enumerate(pick(captured[kind], kind)):
            name = f"{kind}-{i}.msgpack"
            (HERE / name).write_bytes(raw)
            entry = {"file": name, "subject": subject, "decoded": decoded(raw)}
            if kind == "forward-pass-metrics":
                entry["shape"] = fpm_shape(raw)
            files.append(entry)
    manifest = {
        "dynamo": "ai-dynamo 1.6.1 (frontend, mocker), DYN_EVENT_PLANE=nats, DYN_DISCOVERY_BACKEND=file",
        "namespace": NAMESPACE,
        "component": COMPONENT,
        "endpoint": ENDPOINT,
        "frontend-metrics.txt": {
            "requests": len(REQUESTS),
            "prompt_tokens": sum(prompt_tokens(w) for w, _ in REQUESTS),
            "completion_tokens": sum(n for _, n in REQUESTS),
        },
        "frontend-metrics-migrated.txt": {
            "requests": len(REQUESTS) + len(long),
            "prompt_tokens": sum(prompt_tokens(w) for w, _ in REQUESTS) + len(long) * prompt_tokens(4),
            "completion_tokens": sum(n for _, n in REQUESTS) + len(long) * 1500,
            "note": "the 4 long streams were split over both workers; worker 1 was SIGKILLed mid-stream",
        },
        "messages": files,
    }
    (HERE / "samples.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps({k: len(v) for k, v in captured.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
