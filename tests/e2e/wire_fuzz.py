"""Messages for every subject the agent listens on, generated from the published JSON Schemas: valid ones
(hypothesis-jsonschema, plus every number at an edge of its range) and invalid ones (out-of-range numbers,
400-digit integers, wrong types, missing fields, JSON nested 1,000 deep, too large, not UTF-8, not JSON).

Shared by ``tests/e2e/test_wire_fuzz.py`` (a small fuzz in ``make test``) and ``bench/fuzz_wire.py``
(100k messages). Each case says what the agent must do with it: ``expect_malformed`` is our decoder's
verdict (the one place the ranges are checked, agent/bus.py), and a case generated as valid from a schema
file must also be one the decoder accepts: :func:`build_cases` fails otherwise, so the published schemas
and the decoder cannot drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import time
import types
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import hypothesis_jsonschema._from_schema as _from_schema
import msgspec
from cli import ROOT, LoggedProcess, cost_agent_command
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.internal.conjecture import utils as conjecture_utils
from hypothesis_jsonschema import from_schema
from nats.aio.client import Client as NATS
from prometheus_client.parser import text_string_to_metric_families

from agent.bus import MAX_MESSAGE_BYTES, decode_json, settle
from agent.config import resolve_catalog
from agent.subjects import Subjects
from schemas import (
    MESSAGE_TYPES,
    AllocationPlan,
    CostReport,
    ErrorReply,
    Message,
    ReplanRequest,
    envelope,
    tag_of,
)

SCHEMA_DIR = ROOT / "schemas" / "jsonschema"
KINDS: Final = {tag_of(kind): kind for kind in MESSAGE_TYPES}
HUGE_INT: Final = int("9" * 400)


class _LegacyMany(conjecture_utils.many):
    """hypothesis-jsonschema 0.23.1 (its latest release) drives ``many`` through ``more()``, which
    Hypothesis 6.170 replaced by iteration inside a ``with`` block: the old interface on the new class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.__enter__()
        self._steps = iter(self)

    def more(self) -> bool:
        if next(self._steps, StopIteration) is StopIteration:
            self.__exit__(None)
            return False
        return True


# Only hypothesis-jsonschema's own reference changes; Hypothesis keeps its class.
_from_schema.cu = types.SimpleNamespace(  # type: ignore[attr-defined]
    **{name: getattr(conjecture_utils, name) for name in dir(conjecture_utils) if not name.startswith("__")}
)
_from_schema.cu.many = _LegacyMany  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Listened:
    """A subject the agent subscribes to: the :class:`Subjects` member, the message it carries, the field
    that is the subject's key (None: no key), whether it is a request, and its share of a fuzz."""

    member: str
    tag: str
    key_field: str | None
    request: bool = False
    weight: int = 10


LISTENED: Final = (
    Listened("worker_metrics", "worker.metrics.v1", "worker_id", weight=30),
    Listened("spot_price", "spot.price.v1", "pool", weight=15),
    Listened("fleet_instance", "fleet.instance.v1", "instance_id", weight=15),
    Listened("spot_notice", "spot.notice.v1", "instance_id", weight=10),
    Listened("plan_allocation", "plan.allocation.v1", None, weight=8),
    Listened("cost_report_request", "cost.report_request.v1", None, request=True, weight=10),
    Listened("plan_tick", "plan.replan.v1", None, weight=4),
    Listened("spot_drain", "spot.drain.v1", "instance_id", weight=3),
)


def pattern(subjects: Subjects, listened: Listened) -> str:
    """The subscription's subject, as the metrics label it (namespace stripped)."""
    member = f"{listened.member}_all" if listened.key_field else listened.member
    return subjects.label(getattr(subjects, member))


def subject(subjects: Subjects, listened: Listened, document: object) -> str:
    if listened.key_field is None:
        built: str = getattr(subjects, listened.member)
        return built
    key = document.get(listened.key_field) if isinstance(document, dict) else None
    built = getattr(subjects, listened.member)(key if isinstance(key, str) and key else "fuzz")
    return built


def schema(tag: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMA_DIR / f"{tag}.json").read_text(encoding="utf-8"))
    return loaded


def message_schema(tag: str) -> dict[str, Any]:
    document = schema(tag)
    found: dict[str, Any] = document["$defs"][document["$ref"].rsplit("/", 1)[1]]
    return found


def from_published_schema(tag: str, examples: int, seed_: int) -> list[dict[str, Any]]:
    """``examples`` messages hypothesis-jsonschema generates from the published schema file of ``tag``."""
    found: list[dict[str, Any]] = []

    @seed(seed_)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(from_schema(schema(tag)))
    def collect(document: dict[str, Any]) -> None:
        found.append(document)

    collect()
    return found


# --- numbers at and beyond the edges of their ranges ------------------------------------------------------


def _numeric(prop: dict[str, Any]) -> dict[str, Any] | None:
    """The number schema of a property (inside ``anyOf`` with null too), or None."""
    for option in [prop, *prop.get("anyOf", [])]:
        if option.get("type") in ("integer", "number"):
            return option
    return None


def _strings(props: dict[str, Any]) -> list[str]:
    return [name for name, prop in props.items() if prop.get("type") == "string"]


def edge(document: dict[str, Any], tag: str, rng: random.Random) -> dict[str, Any]:
    """Every number of the message at the top or bottom of its range (still valid)."""
    out = dict(document)
    for name, prop in message_schema(tag)["properties"].items():
        number = _numeric(prop)
        if number is None or (name not in out and rng.random() < 0.5):
            continue
        if rng.random() < 0.5 and "maximum" in number:
            out[name] = number["maximum"]
        elif "minimum" in number:
            out[name] = number["minimum"]
        elif "exclusiveMinimum" in number:
            out[name] = 5e-324 if number["type"] == "number" else number["exclusiveMinimum"] + 1
    return out


def _out_of_range(document: dict[str, Any], tag: str, rng: random.Random) -> dict[str, Any]:
    props = message_schema(tag)["properties"]
    numbers = [name for name, prop in props.items() if _numeric(prop) is not None]
    if not numbers:
        return _wrong_type(document, tag, rng)
    name = rng.choice(numbers)
    number = _numeric(props[name])
    assert number is not None
    too_big = number.get("maximum", 1e15) * 10 + 1
    too_small = number.get("minimum", number.get("exclusiveMinimum", 0)) - 1
    if number["type"] == "integer":
        choices: list[object] = [HUGE_INT, 2**64 - 1, int(too_big), int(too_small), -(2**63)]
    else:
        choices = [1e308, too_big, too_small, 5e-324 if "exclusiveMinimum" in number else -1.0, -1e308]
    return {**document, name: rng.choice(choices)}


def _wrong_type(document: dict[str, Any], tag: str, rng: random.Random) -> dict[str, Any]:
    props = message_schema(tag)["properties"]
    name = rng.choice(sorted(set(props) - {"type"}))
    wrong: object = rng.choice([12345, "12345", [1, 2], {"a": 1}, True]) if _numeric(props[name]) else 12345
    if _numeric(props[name]) and isinstance(wrong, int) and not isinstance(wrong, bool):
        wrong = "12345"
    return {**document, name: wrong}


def _missing(document: dict[str, Any], tag: str, rng: random.Random) -> dict[str, Any]:
    required = [name for name in message_schema(tag)["required"] if name != "type"]
    name = rng.choice(required)
    return {k: v for k, v in document.items() if k != name}


def _too_long_text(document: dict[str, Any], tag: str, rng: random.Random) -> dict[str, Any]:
    props = message_schema(tag)["properties"]
    name = rng.choice(_strings(props))
    return {**document, name: "x" * (props[name].get("maxLength", 256) + 1)}


def _other_tag(document: dict[str, Any], tag: str, rng: random.Random) -> dict[str, Any]:
    return {**document, "type": rng.choice([t for t in KINDS if t != tag] + ["nope.v1", ""])}


Mutation = Callable[[dict[str, Any], str, random.Random], dict[str, Any]]
DOCUMENT_MUTATIONS: Final[tuple[tuple[Mutation, int], ...]] = (
    (_out_of_range, 8),
    (_wrong_type, 3),
    (_missing, 2),
    (_too_long_text, 1),
    (_other_tag, 1),
)


def _deep(data: bytes, rng: random.Random) -> bytes:
    depth = rng.choice([1000, 5000, 100_000])
    opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
    nested = opener * depth + (b"1" if opener == b'{"a":' else b"") + closer * depth
    return data[:-1] + b', "deep": ' + nested + b"}"


def _too_large(data: bytes, _rng: random.Random) -> bytes:
    return data[:-1] + b', "padding": "' + b"x" * MAX_MESSAGE_BYTES + b'"}'


def _not_utf8(data: bytes, rng: random.Random) -> bytes:
    cut = rng.randrange(1, len(data))
    return data[:cut] + rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xfe\xff"]) + data[cut:]


def _not_json(data: bytes, rng: random.Random) -> bytes:
    return rng.choice([b"", b"null", b"[]", b"{", b"NaN", b'{"type": 1e400}', data[: len(data) // 2]])


ByteMutation = Callable[[bytes, random.Random], bytes]
BYTE_MUTATIONS: Final[tuple[tuple[ByteMutation, int], ...]] = (
    (_deep, 2),
    (_not_utf8, 2),
    (_not_json, 2),
    (_too_large, 1),
)


# --- cases -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Case:
    listened: Listened
    subject: str
    data: bytes
    expect_malformed: bool


class Pool:
    """Generated messages per listened subject, turned into cases with fresh ids and mutations."""

    def __init__(self, examples_per_subject: int, seed_: int) -> None:
        catalog = resolve_catalog("seed")
        self.catalog_pools = catalog.pools()
        self.rng = random.Random(seed_)
        self.valid = {
            listened.tag: from_published_schema(listened.tag, examples_per_subject, seed_ + i)
            for i, listened in enumerate(LISTENED)
        }
        self.decoders = {tag: msgspec.json.Decoder(KINDS[tag]) for tag in self.valid}

    def _grounded(self, document: dict[str, Any]) -> dict[str, Any]:
        """Half the messages name the catalog's types and pools and a few recurring nodes, so that they
        reach the actors' arithmetic instead of stopping at "unknown type"."""
        if self.rng.random() < 0.5:
            return document
        type_name, pool = self.rng.choice(self.catalog_pools)
        out = dict(document)
        for name, value in (
            ("instance_type", type_name),
            ("pool", pool),
            ("instance_id", f"fz-node-{self.rng.randrange(8)}"),
            ("worker_id", f"fz-worker-{self.rng.randrange(16)}"),
        ):
            if name in out:
                out[name] = value
        if "targets" in out:
            out["targets"] = [{**t, "instance_type": type_name, "pool": pool} for t in out["targets"]]
        return out

    def _malformed(self, tag: str, data: bytes) -> bool:
        try:
            decode_json(self.decoders[tag], data, MAX_MESSAGE_BYTES)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return True
        return False

    def case(self, subjects: Subjects, listened: Listened, invalid: bool) -> Case:
        rng = self.rng
        document = self._grounded(dict(rng.choice(self.valid[listened.tag])))
        document["msg_id"] = f"fz-{rng.getrandbits(64):016x}"
        if rng.random() < 0.3:
            document = edge(document, listened.tag, rng)
        byte_mutation: ByteMutation | None = None
        if invalid:
            if rng.random() < 0.75:
                mutations, weights = zip(*DOCUMENT_MUTATIONS, strict=True)
                document = rng.choices(mutations, weights)[0](document, listened.tag, rng)
            else:
                byte_mutations, byte_weights = zip(*BYTE_MUTATIONS, strict=True)
                byte_mutation = rng.choices(byte_mutations, byte_weights)[0]
        data = json.dumps(document).encode()
        if byte_mutation is not None:
            data = byte_mutation(data, rng)
        malformed = self._malformed(listened.tag, data)
        if not invalid and malformed:
            raise AssertionError(
                f"{listened.tag}: valid by its published schema, refused by the decoder: {data!r}"
            )
        return Case(listened, subject(subjects, listened, document), data, malformed)

    def cases(self, subjects: Subjects, count: int, invalid_share: float = 0.5) -> Iterator[Case]:
        weights = [listened.weight for listened in LISTENED]
        for _ in range(count):
            listened = self.rng.choices(LISTENED, weights)[0]
            yield self.case(subjects, listened, invalid=self.rng.random() < invalid_share)


def decodes_as(kind: type[Message], data: bytes) -> Message:
    """A message the agent sent, held to its schema (every range included)."""
    decoded: Message = msgspec.json.decode(data, type=kind)
    return decoded


# --- what a real agent's /metrics say ---------------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text: each sample name's (labels, value) pairs."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


@dataclass(frozen=True, slots=True)
class Tally:
    """What the agent's /metrics say it did with the messages of each subscription."""

    handled: dict[tuple[str, str], float]
    """(actor, subject pattern) → messages handled."""
    rejected: dict[tuple[str, str, str], float]
    """(actor, subject pattern, reason) → messages rejected."""
    published: dict[str, float]
    """type → messages the agent published."""
    restarts: float

    @classmethod
    def of(cls, text: str) -> Tally:
        samples = parse_metrics(text)
        handled: dict[tuple[str, str], float] = {}
        for labels, value in samples.get("costagent_messages_handled_total", []):
            key = (labels["actor"], labels["subject"])
            handled[key] = handled.get(key, 0.0) + value
        rejected: dict[tuple[str, str, str], float] = {}
        for labels, value in samples.get("costagent_messages_rejected_total", []):
            rkey = (labels["actor"], labels["subject"], labels["reason"])
            rejected[rkey] = rejected.get(rkey, 0.0) + value
        published: dict[str, float] = {}
        for labels, value in samples.get("costagent_messages_published_total", []):
            published[labels["type"]] = published.get(labels["type"], 0.0) + value
        restarts = sum(value for _, value in samples.get("costagent_actor_restarts_total", []))
        return cls(handled, rejected, published, restarts)

    def actors_on(self, pattern_: str) -> set[str]:
        return {a for a, s in self.handled if s == pattern_} | {
            a for a, s, _ in self.rejected if s == pattern_
        }

    def seen(self, actor: str, pattern_: str) -> float:
        """Messages of the subscription accounted for: handled or rejected, for any reason."""
        refused = sum(n for (a, s, _), n in self.rejected.items() if (a, s) == (actor, pattern_))
        return self.handled.get((actor, pattern_), 0.0) + refused

    def malformed(self, actor: str, pattern_: str) -> float:
        return self.rejected.get((actor, pattern_, "malformed"), 0.0)


# --- a fuzz run against a real `cost-agent run` process -----------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentProcess:
    logged: LoggedProcess
    url: str
    namespace: str
    metrics_port: int

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    async def tally(self) -> Tally:
        status, text = await asyncio.to_thread(self.get, "/metrics")
        assert status == 200, text
        return Tally.of(text)

    async def healthy(self) -> bool:
        status, body = await asyncio.to_thread(self.get, "/healthz")
        return status == 200 and json.loads(body)["status"] == "ok"

    def memory_mib(self) -> dict[str, float]:
        """The agent process's resident memory now and at its peak (VmRSS, VmHWM), MiB."""
        status = Path(f"/proc/{self.logged.proc.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines())
        return {
            name: round(int(fields[key].split()[0]) / 1024, 1)
            for name, key in (("rss", "VmRSS"), ("peak", "VmHWM"))
        }


@contextlib.asynccontextmanager
async def agent_process() -> AsyncIterator[AgentProcess]:
    """``cost-agent run`` with its embedded nats-server and metrics on a free port, in a new namespace."""
    namespace = f"fz{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COST_AGENT_", "NATS_URL"))}
    env |= {"COST_AGENT_METRICS__PORT": "0", "COST_AGENT_BUS__NAMESPACE": namespace}
    proc = await asyncio.create_subprocess_exec(
        *cost_agent_command("run", "--log-format", "json"),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # so that the agent and its nats-server are killed together on a failure
    )
    logged = LoggedProcess(proc)
    try:
        await logged.wait_logged("agent_started", timeout_s=60)
        yield AgentProcess(
            logged, logged.event("nats_embedded")["url"], namespace, logged.event("metrics_serving")["port"]
        )
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
        await logged.finish()


@dataclass
class FuzzResult:
    sent: int = 0
    expected_malformed: int = 0
    requests: int = 0
    error_replies: int = 0
    seconds: float = 0.0
    by_subject: dict[str, dict[str, int]] = field(default_factory=dict)


async def _answered(nc: NATS, case: Case) -> bool:
    """A request's reply: an ErrorReply for a malformed one, the report (within its ranges) otherwise."""
    reply = await nc.request(case.subject, case.data, timeout=30)
    answer = msgspec.json.decode(reply.data, type=CostReport | ErrorReply)
    assert isinstance(answer, ErrorReply) == case.expect_malformed, (case.data[:200], answer)
    return isinstance(answer, ErrorReply)


async def accounted_for(agent: AgentProcess, result: FuzzResult, timeout_s: float) -> Tally:
    """Wait until every actor has handled or rejected every message sent to each subscription (and those
    the agent published there itself: its plans, its drain orders); the last tally."""
    subjects = Subjects(agent.namespace)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        tally = await agent.tally()
        behind = [
            (actor, label)
            for listened in LISTENED
            for label in [pattern(subjects, listened)]
            for actor in tally.actors_on(label)
            if tally.seen(actor, label)
            < result.by_subject.get(label, {}).get("sent", 0) + tally.published.get(listened.tag, 0)
        ]
        if not behind or tally.restarts:
            return tally
        if loop.time() > deadline:
            raise AssertionError(f"messages not accounted for within {timeout_s:g} s: {behind}")
        # A poll: the counters are the agent's, in another process, with no event to await.
        await asyncio.sleep(0.05)


async def run_fuzz(agent: AgentProcess, nc: NATS, cases: Iterator[Case], batch: int = 500) -> FuzzResult:
    """Publish every case, a batch at a time (each batch accounted for before the next, so that a slow
    consumer never drops what the counters are compared with); requests are awaited and checked."""
    subjects = Subjects(agent.namespace)
    result = FuzzResult()
    started = time.perf_counter()
    pending: list[Awaitable[bool]] = []
    for n, case in enumerate(cases, 1):
        label = pattern(subjects, case.listened)
        counts = result.by_subject.setdefault(label, {"sent": 0, "malformed": 0})
        counts["sent"] += 1
        counts["malformed"] += case.expect_malformed
        result.sent += 1
        result.expected_malformed += case.expect_malformed
        if case.listened.request:
            result.requests += 1
            pending.append(_answered(nc, case))
        else:
            await nc.publish(case.subject, case.data)
        if n % batch == 0:
            result.error_replies += sum(await asyncio.gather(*pending))
            pending = []
            await accounted_for(agent, result, timeout_s=120)
    result.error_replies += sum(await asyncio.gather(*pending))
    await settle(nc)
    tally = await accounted_for(agent, result, timeout_s=120)
    result.seconds = time.perf_counter() - started
    check(result, tally, subjects)
    return result


def check(result: FuzzResult, tally: Tally, subjects: Subjects) -> None:
    """No actor restarted; every subscription accounted for every message, exactly; every malformed one
    counted as malformed by every actor that listens to it."""
    assert tally.restarts == 0, "an actor crashed"
    for listened in LISTENED:
        label = pattern(subjects, listened)
        counts = result.by_subject.get(label, {"sent": 0, "malformed": 0})
        actors = tally.actors_on(label)
        assert actors, f"nobody listens on {label}"
        for actor in actors:
            assert tally.seen(actor, label) == counts["sent"] + tally.published.get(listened.tag, 0), (
                actor,
                label,
            )
            assert tally.malformed(actor, label) == counts["malformed"], (actor, label)


async def plans_sanely(agent: AgentProcess, nc: NATS) -> AllocationPlan:
    """After the fuzz the agent still plans on request: the plan decodes (every figure within its range)."""
    subjects = Subjects(agent.namespace)
    plans = await nc.subscribe(subjects.plan_allocation)
    try:
        await settle(nc)
        request = ReplanRequest(**envelope("fuzz"), note="after the fuzz")
        await nc.publish(subjects.plan_tick, msgspec.json.encode(request))
        while True:
            plan = msgspec.json.decode((await plans.next_msg(timeout=60)).data, type=AllocationPlan)
            if request.msg_id in plan.trigger_ids:
                return plan
    finally:
        await plans.unsubscribe()
