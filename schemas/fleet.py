"""Fleet changes, published by the actuator (``{ns}.evt.fleet.instance.{instance_id}``)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.envelope import Key, Message, Tier, doc

InstanceState = Literal["launched", "ready", "draining", "terminated"]
MachineName = Annotated[str, msgspec.Meta(max_length=128)]
"""A machine's name as a notice gives it (an instance id, a Kubernetes node name), or empty."""


class InstanceEvent(Message, frozen=True, tag="fleet.instance.v1"):
    """An instance entered ``state`` at ``sent_at``.

    An instance is paid for from ``launched`` until ``terminated``; it serves only while ``ready``.
    ``draining`` means it takes no new work and will be gone soon (a spot reclaim or a scale-down).
    ``pool`` is the zone it runs in (reserved nodes too).
    """

    instance_id: Annotated[Key, doc("The node: unique, never reused; also the subject key.")]
    instance_type: Annotated[Key, doc("Its type (a catalog type).")]
    pool: Annotated[
        Key,
        doc(
            "The zone it runs in (reserved nodes too); for spot and on-demand, a pool of that type in the "
            "catalog, for reserved any."
        ),
    ]
    tier: Annotated[Tier, doc("Its tier.")]
    state: Annotated[InstanceState, doc("The state entered.")]
    machine: Annotated[
        MachineName,
        doc(
            "The machine it runs on, when the instance is not the machine itself: a Kubernetes worker pod's "
            "node (`spec.nodeName`), empty until scheduled. A spot notice names the machine; the agent "
            "drains every instance on it. Empty: the instance is the machine."
        ),
    ] = ""
