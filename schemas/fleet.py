"""Fleet changes, published by the actuator (``{ns}.evt.fleet.instance.{instance_id}``)."""

from __future__ import annotations

from typing import Literal

from schemas.envelope import Key, Message, Tier

InstanceState = Literal["launched", "ready", "draining", "terminated"]


class InstanceEvent(Message, frozen=True, tag="fleet.instance.v1"):
    """An instance entered ``state`` at ``sent_at``.

    An instance is paid for from ``launched`` until ``terminated``; it serves only while ``ready``.
    ``draining`` means it takes no new work and will be gone soon (a spot reclaim or a scale-down).
    ``pool`` is the zone it runs in (reserved nodes too).
    """

    instance_id: Key
    instance_type: Key
    pool: Key
    tier: Tier
    state: InstanceState
