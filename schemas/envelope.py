"""The envelope every wire message carries, and the base class of every message.

Each message is a frozen msgspec Struct, JSON-encoded, whose ``type`` field is its tag
``"<domain>.<name>.v<N>"``. Envelope fields:

- ``msg_id``: unique per message (the publisher's choice; a UUID4 hex by default). Receivers use it to
  recognise a redelivery, and log it.
- ``sent_at``: UNIX seconds when the publisher produced the message, by the publisher's clock. For
  observations (worker metrics, prices, fleet events) it is also the time the observation refers to.
- ``source``: who published it (a worker id, ``agent``, an actuator's name).
- ``correlation_id``: the ``msg_id`` of the message this one answers or was caused by, or empty.

Evolution: add fields with defaults; a breaking change is a new tag (``.v2``). Unknown fields are ignored
on decode, so older readers accept newer writers.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Final, Literal, TypedDict

import msgspec

# Physical ranges. Every number on the wire has one, checked in one place: msgspec, when agent/bus.py
# decodes a message (an out-of-range value is rejected and counted like any malformed message), and
# published in the JSON Schema files, so a sender in any language sees the same limits. Each range is far
# wider than any real fleet and narrow enough that no sum, product or quotient of in-range values
# overflows a float or divides into NaN: a 400-digit count, an interval of 5e-324 s or a price of 1e308
# is refused here rather than breaking an actor's arithmetic later.
# - Time: UNIX seconds within 2000-01-01 .. 2200-01-01 (a clock before 2000 is unset or broken).
# - An interval (a worker's report, a profiler bin): 1 ms .. 1 day; a duration the agent reports: 1 day.
# - Requests: 10^9 in one count or gauge (one worker at 10,000 requests/s for a whole day is 8.6 x 10^8);
#   tokens: 10^12 (10^9 requests of 1,000 tokens); KV-cache blocks: 10^9 per worker.
# - Nodes: 100,000 in one count (the largest GPU fleets are tens of thousands of nodes).
# - A price: 0 < p <= $10,000/h per node (an 8-GPU node lists at ~$100/h on demand); money the agent
#   reports: |$| <= 10^15 (100,000 nodes at that price for a century).
# - Rates the agent reports (sums over any fleet of in-range reports): 10^18 per second; bytes: 10^16.
# - A running total: finite; any other count: 10^15.
# - Text: ids and names 128 characters, free text 16,384; lists 10,000 items; a whole message is bounded
#   by agent/bus.py's size limit.
MIN_TIMESTAMP: Final = 946_684_800.0  # 2000-01-01 00:00 UTC
MAX_TIMESTAMP: Final = 7_258_118_400.0  # 2200-01-01 00:00 UTC
MAX_NODES: Final = 100_000
MAX_REQUESTS: Final = 10**9
MAX_TOKENS: Final = 10**12
MAX_KV_BLOCKS: Final = 10**9
MAX_PRICE_HOURLY: Final = 10_000.0
MAX_MONEY: Final = 1e15
MAX_RPS: Final = 1e18
MAX_TOKENS_PER_S: Final = 1e18
MAX_BYTES: Final = 1e16
MAX_HOURS: Final = 1e10
MAX_GENERIC: Final = 10**15
MAX_TEXT: Final = 16_384
MAX_LIST: Final = 10_000
"""Items in a list of a message at most (targets of a plan, a drain's workers, a reply's requests)."""

NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_GENERIC)]
Timestamp = Annotated[
    float, msgspec.Meta(ge=MIN_TIMESTAMP, le=MAX_TIMESTAMP, description="UNIX time in seconds")
]
Interval = Annotated[float, msgspec.Meta(ge=0.001, le=86_400.0)]
Nodes = Annotated[int, msgspec.Meta(ge=0, le=MAX_NODES)]
Requests = Annotated[int, msgspec.Meta(ge=0, le=MAX_REQUESTS)]
Tokens = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS)]
TokenMean = Annotated[float, msgspec.Meta(ge=0, le=float(MAX_TOKENS))]
KvBlocks = Annotated[int, msgspec.Meta(ge=0, le=MAX_KV_BLOCKS)]
Price = Annotated[float, msgspec.Meta(gt=0, le=MAX_PRICE_HOURLY)]
Money = Annotated[float, msgspec.Meta(ge=0, le=MAX_MONEY)]
Total = Annotated[float, msgspec.Meta(ge=0, le=1e300)]
"""A running total since the agent started (tokens, requests served): any finite sum of in-range values."""
Hours = Annotated[float, msgspec.Meta(ge=0, le=MAX_HOURS)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=86_400.0)]
SignedMoney = Annotated[float, msgspec.Meta(ge=-MAX_MONEY, le=MAX_MONEY)]
Rps = Annotated[float, msgspec.Meta(ge=0, le=MAX_RPS)]
TokensPerS = Annotated[float, msgspec.Meta(ge=0, le=MAX_TOKENS_PER_S)]
PositiveTokensPerS = Annotated[float, msgspec.Meta(gt=0, le=MAX_TOKENS_PER_S)]
Bytes = Annotated[float, msgspec.Meta(ge=0, le=MAX_BYTES)]
Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]
Tier = Literal["reserved", "spot", "ondemand"]


def doc(text: str) -> msgspec.Meta:
    """A field's description, for ``Annotated[Type, doc("...")]``: it goes into the JSON Schema files and
    the field tables of ``docs/protocol.md``, so write units and meaning here, once."""
    return msgspec.Meta(description=text)


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    msg_id: Annotated[
        NonEmpty,
        doc(
            "Unique per message, chosen by the publisher (a UUID4 in hex is the default). A message sent "
            "again on purpose (a retry) keeps its `msg_id`; receivers use it to recognise a repeat where the "
            "message's semantics say so (`cmd.plan.tick`, the worker op `receive_blocks`)."
        ),
    ]
    sent_at: Annotated[
        Timestamp,
        doc(
            "When the publisher produced the message, by its own clock. For observations it is also the time "
            "the observation refers to: the end of a worker's interval, the moment an instance changed "
            "state, the time of a price quote. Keep publishers' clocks synchronised (NTP): the agent "
            "compares `sent_at` with its own clock."
        ),
    ]
    source: Annotated[
        NonEmpty,
        doc(
            "Who published it: a worker id, an actuator's or feed's name; the agent uses its `[bus] source` "
            "(`cost-agent`)."
        ),
    ]
    correlation_id: Annotated[
        Annotated[str, msgspec.Meta(max_length=256)],
        doc(
            "The `msg_id` of the message this one answers or was caused by, or empty. The agent sets it on a "
            "reply (the request's `msg_id`) and on a plan (the first trigger's id). An actuator may set it "
            "on the `InstanceEvent`s a plan caused."
        ),
    ] = ""


class Envelope(TypedDict):
    """The envelope fields, to build a message with ``Kind(**envelope(...), field=...)``."""

    msg_id: str
    sent_at: float
    source: str
    correlation_id: str


def new_msg_id() -> str:
    return uuid.uuid4().hex


def envelope(source: str, *, sent_at: float | None = None, correlation_id: str = "") -> Envelope:
    return Envelope(
        msg_id=new_msg_id(),
        sent_at=time.time() if sent_at is None else sent_at,
        source=source,
        correlation_id=correlation_id,
    )
