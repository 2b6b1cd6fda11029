"""The messages a spot node's neighbours send about it, as the actuator and the node's sidecar would: shared
by the spot monitor's tests and the guardrails' tests."""

from __future__ import annotations

from harness import Peer

from schemas import InstanceEvent, PreemptionNotice


def instance_event(peer: Peer, instance: str, tier: str, state: str = "ready") -> InstanceEvent:
    """The actuator's word that an h100_8x node in the default pool is in ``state``."""
    return InstanceEvent(
        **peer.env("actuator"),
        instance_id=instance,
        instance_type="h100_8x",
        pool="default",
        tier=tier,  # type: ignore[arg-type]
        state=state,  # type: ignore[arg-type]
    )


def notice_message(
    peer: Peer, instance: str, kind: str = "terminate", in_s: float = 120.0
) -> PreemptionNotice:
    """The sidecar's notice that the node goes in ``in_s`` seconds of the peer's clock."""
    return PreemptionNotice(
        **peer.env("sidecar"),
        instance_id=instance,
        kind=kind,  # type: ignore[arg-type]
        deadline=peer.clock.now() + in_s,
        provider="aws",
        received_at=peer.clock.now(),
    )
