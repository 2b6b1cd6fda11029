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
from typing import Annotated, Literal, TypedDict

import msgspec

NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Count = Annotated[int, msgspec.Meta(ge=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Positive = Annotated[float, msgspec.Meta(gt=0)]
Timestamp = Annotated[float, msgspec.Meta(ge=0, description="UNIX time in seconds")]
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
        str,
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
