"""The tables of ``docs/protocol.md``, generated from the Structs and from ``agent/subjects.py``.

The page's prose is written by hand; its tables are not. Each table sits between two marker comments::

    <!-- generated: fields worker.metrics.v1 -->
    ...
    <!-- end generated -->

and :func:`render_doc` rewrites what is between them. A marker names what to render:

- ``fields <tag>``: the fields of a message (envelope fields left out), ``fields <StructName>`` those of
  a Struct nested in messages (``Target``, ``Block``), ``fields envelope`` the envelope's;
- ``subjects`` every subject, ``subjects <name> ...`` those named (functions of
  :class:`agent.subjects.Subjects`);
- ``types`` the type names the field tables use.

A field's meaning is its ``msgspec.Meta(description=...)``, the same text its JSON Schema carries, so
the page, the schema files and the code cannot say different things. :mod:`agent.generated` rewrites the
page with the other generated files (``cost-agent schemas``) and ``--check`` fails when it is stale.
"""

from __future__ import annotations

import functools
import inspect
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union

import msgspec

from agent.subjects import Subjects
from schemas import (
    MESSAGE_TYPES,
    AllocationPlan,
    Cancel,
    CostReport,
    CostReportRequest,
    DemandSnapshot,
    DrainOrder,
    ErrorReply,
    HotBlocks,
    HotBlocksQuery,
    InflightList,
    InflightQuery,
    InstanceEvent,
    MigrationReport,
    PreemptionNotice,
    ReceiveBlocks,
    ReplanRequest,
    Reprefill,
    RequestUpdate,
    Requeue,
    Resume,
    RouterAck,
    SpotPrice,
    StatusQuery,
    StopRouting,
    Submit,
    TransferKv,
    WorkerAck,
    WorkerLost,
    WorkerMetrics,
    WorkerStatus,
    tag_of,
)
from schemas.envelope import (
    Bytes,
    Count,
    Fraction,
    Hours,
    Interval,
    Key,
    KvBlocks,
    Message,
    Money,
    Nodes,
    NonEmpty,
    Price,
    Requests,
    Rps,
    SignedMoney,
    Text,
    Tier,
    Timestamp,
    Tokens,
    Total,
)

_BLOCK = re.compile(r"(<!-- generated: (?P<what>[^>]*?) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)


# --- subjects ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of a request/reply subject whose last key is the operation."""

    name: str
    request: type[Message]
    replies: tuple[type[Message], ...]


@dataclass(frozen=True, slots=True)
class SubjectDoc:
    """What the page says of one subject function of :class:`~agent.subjects.Subjects`."""

    name: str
    """The function that builds the subject."""
    messages: tuple[type[Message], ...]
    published_by: str
    read_by: str
    when: str
    pattern: str | None = None
    """The function that builds the subscription pattern (``*`` in the key position), if any."""
    replies: tuple[type[Message], ...] = ()
    """For a request subject: what answers it."""
    ops: tuple[Op, ...] = ()
    """For a subject whose last key is an operation: each one, with its request and reply (any of them may
    also be answered with an ``error.reply.v1``)."""


_ROUTER_OPS = (
    Op("stop_routing", StopRouting, (RouterAck,)),
    Op("requeue", Requeue, (RouterAck,)),
    Op("worker_lost", WorkerLost, (RouterAck,)),
)
_WORKER_OPS = (
    Op("status", StatusQuery, (WorkerStatus,)),
    Op("inflight", InflightQuery, (InflightList,)),
    Op("transfer_kv", TransferKv, (WorkerAck,)),
    Op("resume", Resume, (WorkerAck,)),
    Op("reprefill", Reprefill, (WorkerAck,)),
    Op("cancel", Cancel, (WorkerAck,)),
    Op("hot_blocks", HotBlocksQuery, (HotBlocks,)),
    Op("receive_blocks", ReceiveBlocks, (WorkerAck,)),
    Op("submit", Submit, (WorkerAck,)),
)

SUBJECTS: tuple[SubjectDoc, ...] = (
    SubjectDoc(
        "worker_metrics",
        (WorkerMetrics,),
        "each GPU worker",
        "demand profiler, cost reporter, spot monitor",
        "every few seconds (5–15 s), also when idle",
        pattern="worker_metrics_all",
    ),
    SubjectDoc(
        "spot_price",
        (SpotPrice,),
        "price feed",
        "optimizer tick, cost reporter",
        "on every change, and at least every `[optimizer] spot_price_max_age_seconds` (1800 s)",
        pattern="spot_price_all",
    ),
    SubjectDoc(
        "fleet_instance",
        (InstanceEvent,),
        "actuator",
        "optimizer tick, cost reporter, spot monitor",
        "on every state change of a node",
        pattern="fleet_instance_all",
    ),
    SubjectDoc(
        "plan_tick",
        (ReplanRequest,),
        "anyone (operator, actuator, tests)",
        "optimizer tick",
        "to ask for a plan now",
    ),
    SubjectDoc(
        "plan_allocation",
        (AllocationPlan,),
        "agent (optimizer tick)",
        "cost reporter (the plan gap), the agent's actuator (`[actuator] mode`) or an external one",
        "every `[optimizer] interval_seconds` (300 s), and at once on a trigger",
    ),
    SubjectDoc(
        "demand_snapshot",
        (DemandSnapshot,),
        "agent (demand profiler)",
        "— (dashboards, recorders)",
        "once per closed demand bin (every `[profiler] bin_minutes`, 5 min)",
    ),
    SubjectDoc(
        "cost_report",
        (CostReport,),
        "agent (cost reporter)",
        "— (dashboards, recorders)",
        "every `[reporter] interval_seconds` (60 s)",
    ),
    SubjectDoc(
        "cost_report_request",
        (CostReportRequest,),
        "anyone",
        "cost reporter",
        "on demand",
        replies=(CostReport, ErrorReply),
    ),
    SubjectDoc(
        "spot_notice",
        (PreemptionNotice,),
        "node sidecar (or the simulated cloud)",
        "spot monitor",
        "once per distinct preemption notice or rebalance recommendation, as soon as the metadata service "
        "shows it",
        pattern="spot_notice_all",
    ),
    SubjectDoc(
        "spot_drain",
        (DrainOrder,),
        "agent (spot monitor); an operator (manual drain)",
        "migration coordinator",
        "on a node's first terminate/stop notice; when workers of a node fall silent",
        pattern="spot_drain_all",
    ),
    SubjectDoc(
        "migration_report",
        (MigrationReport,),
        "agent (migration coordinator)",
        "— (dashboards, recorders)",
        "once per drain, when it ends",
        pattern="migration_report_all",
    ),
    SubjectDoc(
        "router_command",
        tuple(op.request for op in _ROUTER_OPS),
        "agent (migration coordinator)",
        "— (the router serves it)",
        "during a drain",
        pattern="router_command_all",
        ops=_ROUTER_OPS,
    ),
    SubjectDoc(
        "worker_request",
        tuple(op.request for op in _WORKER_OPS),
        "agent (migration coordinator); the router (`submit`)",
        "— (each worker serves its own)",
        "during a drain; `submit` for every request routed",
        pattern="worker_requests_all",
        ops=_WORKER_OPS,
    ),
    SubjectDoc(
        "request_update",
        (RequestUpdate,),
        "each GPU worker",
        "— (the router subscribes)",
        "on every change of a request's state on the worker",
        pattern="request_update_all",
    ),
)


def subject_functions() -> list[str]:
    """Every function of :class:`Subjects` that builds a subject or a subscription pattern."""
    helpers = {"label"}
    return [
        name
        for name, member in vars(Subjects).items()
        if not name.startswith("_")
        and name not in helpers
        and isinstance(member, property | types.FunctionType)
    ]


def subject_pattern(name: str) -> str:
    """The subject a :class:`Subjects` function builds, with ``{ns}`` and ``{parameter}`` placeholders."""
    member = getattr(Subjects("ns"), name)
    if not callable(member):
        built = str(member)
        params: list[str] = []
    else:
        params = list(inspect.signature(member).parameters)
        # A sentinel of safe characters survives escape_key unchanged and names its parameter.
        built = member(*(f"PARAM{i}SENTINEL" for i in range(len(params))))
    tokens = built.split(".")
    assert tokens[0] == "ns", built
    tokens[0] = "{ns}"
    for i, param in enumerate(params):
        tokens = [f"{{{param}}}" if t == f"PARAM{i}SENTINEL" else t for t in tokens]
    return ".".join(tokens)


def _tags(kinds: tuple[type[Message], ...]) -> str:
    return ", ".join(f"`{tag_of(kind)}`" for kind in kinds)


def _subject_row(doc: SubjectDoc) -> str:
    subject = f"`{subject_pattern(doc.name)}`"
    if doc.ops:
        subject += ", op " + ", ".join(f"`{op.name}`" for op in doc.ops)
    if doc.pattern:
        subject += f" (subscribe: `{subject_pattern(doc.pattern)}`)"
    if doc.ops:
        message = "; ".join(f"`{op.name}`: {_tags((op.request,))} → {_tags(op.replies)}" for op in doc.ops)
        message += f"; or {_tags((ErrorReply,))}"
    elif doc.replies:
        message = f"request {_tags(doc.messages)}; reply {' or '.join(_tags((r,)) for r in doc.replies)}"
    else:
        message = _tags(doc.messages)
    cells = [subject, f"`{doc.name}`", message, doc.published_by, doc.read_by, doc.when]
    return "| " + " | ".join(cells) + " |"


def subject_table(names: list[str] | None = None) -> str:
    by_name = {doc.name: doc for doc in SUBJECTS}
    unknown = [name for name in names or [] if name not in by_name]
    if unknown:
        raise ValueError(f"no subject function {', '.join(unknown)} in SUBJECTS")
    docs = [by_name[name] for name in names] if names else list(SUBJECTS)
    head = "| subject | `Subjects.` | message (`type`) | published by | read by | when |\n"
    head += "|---" * 6 + "|\n"
    return head + "".join(_subject_row(doc) + "\n" for doc in docs)


# --- fields ---------------------------------------------------------------------------------------------

# The type names of the field tables, defined once in the page's "types" table.
_NAMED: tuple[tuple[str, Any, str, str], ...] = (
    ("*id*", Key, "string", "1–128 characters"),
    ("*text*", NonEmpty, "string", "1–256 characters"),
    ("*free text*", Text, "string", "0–16384 characters"),
    ("*count*", Count, "integer", "0 … 10^15"),
    ("*requests*", Requests, "integer", "0 … 10^9"),
    ("*tokens*", Tokens, "integer", "0 … 10^12"),
    ("*KV blocks*", KvBlocks, "integer", "0 … 10^9"),
    ("*nodes*", Nodes, "integer", "0 … 100000"),
    ("*total*", Total, "number", "≥ 0, finite (a running total)"),
    ("*fraction*", Fraction, "number", "0 … 1"),
    ("*interval*", Interval, "number", "0.001 … 86400 seconds"),
    ("*price*", Price, "number", "> 0, ≤ 10000 $/h per node"),
    ("*money*", Money, "number", "0 … 10^15 $"),
    ("*signed money*", SignedMoney, "number", "−10^15 … 10^15 $"),
    ("*hours*", Hours, "number", "0 … 10^10 hours"),
    ("*rate*", Rps, "number", "0 … 10^18 per second"),
    ("*bytes*", Bytes, "number", "0 … 10^16 bytes"),
    ("*time*", Timestamp, "number", "UNIX seconds, 946684800 (2000-01-01) … 7258118400 (2200-01-01)"),
    ("*tier*", Tier, "string", ", ".join(f'`"{t}"`' for t in typing.get_args(Tier)) + " (lower case)"),
)


def type_table() -> str:
    rows = "".join(f"| {name} | {json} | {constraint} |\n" for name, _, json, constraint in _NAMED)
    return "| name | JSON | constraint |\n|---|---|---|\n" + rows


def _strip(hint: Any) -> tuple[Any, list[msgspec.Meta]]:
    """The type under any ``Annotated``, and its metadata (outer last)."""
    metas: list[msgspec.Meta] = []
    while typing.get_origin(hint) is typing.Annotated:
        metas = [m for m in hint.__metadata__ if isinstance(m, msgspec.Meta)] + metas
        hint = hint.__origin__
    return hint, metas


def _bounds(metas: list[msgspec.Meta]) -> str:
    """Constraints no type name covers, written out."""
    parts = []
    for m in metas:
        for attr, symbol in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(m, attr) is not None:
                parts.append(f"{symbol} {getattr(m, attr)}")
        if m.min_length is not None or m.max_length is not None:
            parts.append(f"{m.min_length or 0}–{m.max_length or '∞'} characters")
        if m.pattern is not None:
            parts.append(f"matching `{m.pattern}`")
    return ", ".join(parts)


def _named(hint: Any) -> tuple[str, list[msgspec.Meta]] | None:
    """The type name a field's type starts from, and the metadata the field adds to it."""
    base, metas = _strip(hint)
    for name, alias, _, _ in _NAMED:
        alias_base, alias_metas = _strip(alias)
        if base == alias_base and metas[: len(alias_metas)] == alias_metas:
            return name, metas[len(alias_metas) :]
    return None


def type_name(hint: Any) -> str:
    """How a field's type reads in the tables: a named type where one fits, else JSON's words."""
    named = _named(hint)
    if named:
        name, extra = named
        return f"{name}, {_bounds(extra)}" if _bounds(extra) else name
    base, metas = _strip(hint)
    origin = typing.get_origin(base)
    if origin in (Union, types.UnionType):
        args = typing.get_args(base)
        return " \\| ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is Literal:
        return " \\| ".join(f'`"{v}"`' for v in typing.get_args(base))
    if origin is list:
        return f"list of {type_name(typing.get_args(base)[0])}"
    if origin is dict:
        key, value = typing.get_args(base)
        return f"object {type_name(key)} → {type_name(value)}"
    if isinstance(base, type) and issubclass(base, msgspec.Struct):
        return base.__name__
    word = {str: "string", bool: "boolean", int: "integer", float: "number"}[base]
    return f"{word} {_bounds(metas)}" if _bounds(metas) else word


def description(field: msgspec.structs.FieldInfo) -> str:
    """A field's own description (not its named type's), on one line, ready for a table cell."""
    named = _named(field.type)
    _, metas = _strip(field.type)
    texts = [m.description for m in (named[1] if named else metas) if m.description]
    return " ".join(inspect.cleandoc(texts[-1]).split()).replace("|", "\\|") if texts else ""


def _default(field: msgspec.structs.FieldInfo) -> str:
    if field.required:
        return "required"
    value = field.default_factory() if field.default is msgspec.NODEFAULT else field.default
    return f"`{msgspec.json.encode(value).decode()}`"


_ENVELOPE = frozenset(f.name for f in msgspec.structs.fields(Message))


def own_fields(kind: type[msgspec.Struct]) -> list[msgspec.structs.FieldInfo]:
    """The fields a table lists: a message's own (the envelope has its table), a nested Struct's all."""
    fields = msgspec.structs.fields(kind)
    if kind is Message or not issubclass(kind, Message):
        return list(fields)
    return [f for f in fields if f.name not in _ENVELOPE]


def field_table(kind: type[msgspec.Struct]) -> str:
    fields = own_fields(kind)
    if not fields:
        return "No fields besides the envelope.\n"
    head = "| field | type | default | meaning |\n|---|---|---|---|\n"
    rows = (f"| `{f.name}` | {type_name(f.type)} | {_default(f)} | {description(f)} |\n" for f in fields)
    return head + "".join(rows)


@functools.cache
def nested_structs() -> tuple[type[msgspec.Struct], ...]:
    """Every Struct that appears inside a message, in first-seen order."""
    found: list[type[msgspec.Struct]] = []

    def visit(hint: Any) -> Iterator[type[msgspec.Struct]]:
        base, _ = _strip(hint)
        if isinstance(base, type) and issubclass(base, msgspec.Struct):
            yield base
            for f in msgspec.structs.fields(base):
                yield from visit(f.type)
        for arg in typing.get_args(base):
            yield from visit(arg)

    for kind in MESSAGE_TYPES:
        for f in own_fields(kind):
            for struct in visit(f.type):
                if struct not in found:
                    found.append(struct)
    return tuple(found)


@functools.cache  # the Structs are fixed at import; evaluating their annotations is what takes the time
def documented_structs() -> Mapping[str, type[msgspec.Struct]]:
    """Marker name → Struct, for every table ``fields`` can render."""
    out: dict[str, type[msgspec.Struct]] = {"envelope": Message}
    out.update((tag_of(kind), kind) for kind in MESSAGE_TYPES)
    out.update((struct.__name__, struct) for struct in nested_structs())
    return types.MappingProxyType(out)


# --- the page ---------------------------------------------------------------------------------------------


def _render_block(what: str) -> str:
    kind, *args = what.split()
    if kind == "types" and not args:
        return type_table()
    if kind == "subjects":
        return subject_table(args)
    if kind == "fields" and len(args) == 1 and args[0] in documented_structs():
        return field_table(documented_structs()[args[0]])
    raise ValueError(f"unknown generated block {what!r}")


def markers(text: str) -> list[str]:
    """What each generated block of the page renders (``fields worker.metrics.v1``, ``subjects``)."""
    return [m.group("what") for m in _BLOCK.finditer(text)]


def render_doc(text: str) -> str:
    """The page with every generated block rewritten from the code; the prose is left as it is."""
    return _BLOCK.sub(lambda m: m.group(1) + _render_block(m.group("what")) + m.group(4), text)
