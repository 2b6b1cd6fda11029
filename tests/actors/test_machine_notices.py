"""A notice names a machine; on Kubernetes the agent's instances are the worker pods on it.

The Kubernetes actuator's fleet events name each pod and the node it runs on (``machine``); the node's
sidecar names the node. The spot monitor drains every pod on the node: one DrainOrder for the node (the
actuator evicts what runs there), each pod counted out of the fleet in one plan. A node that also runs a
pod of another tier is not drained on a notice (only the spot market reclaims), and the mapping survives
a restart of the agent.
"""

from __future__ import annotations

import msgspec
from harness import Inbox, Peer, eventually, handled, rejected
from spot_messages import notice_message

from agent.core.workers import RegistrySnapshot, WorkerRegistry
from agent.service import Agent
from schemas import AllocationPlan, DrainOrder, InstanceEvent


async def pod_on(peer: Peer, pod: str, node: str, tier: str = "spot") -> None:
    """The Kubernetes actuator's word: worker pod ``pod`` is ready on node ``node``."""
    await peer.send(
        peer.subjects.fleet_instance(pod),
        InstanceEvent(
            **peer.env("actuator"),
            instance_id=pod,
            instance_type="h100_8x",
            pool="default",
            tier=tier,  # type: ignore[arg-type]
            state="ready",
            machine=node,
        ),
    )


async def test_a_notice_for_a_node_drains_every_worker_pod_on_it_in_one_order_and_one_plan(
    running: tuple[Agent, Peer],
) -> None:
    agent, peer = running
    drains = await Inbox.open(peer.nc, peer.subjects.spot_drain_all, DrainOrder)
    plans = await Inbox.open(peer.nc, peer.subjects.plan_allocation, AllocationPlan)
    for pod in ("llm-spot-0", "llm-spot-1"):
        await pod_on(peer, pod, "ip-10-0-1-7")
    await pod_on(peer, "llm-spot-2", "ip-10-0-1-8")
    await handled(agent, "spot_monitor", "evt.fleet.instance.*", 3)
    await handled(agent, "optimizer_tick", "evt.fleet.instance.*", 3)

    notice = notice_message(peer, "ip-10-0-1-7")
    await peer.send(peer.subjects.spot_notice("ip-10-0-1-7"), notice)
    order = await drains.next()
    assert (order.instance_id, order.deadline, order.reason) == ("ip-10-0-1-7", notice.deadline, "notice")
    registry = agent.spot_monitor.registry
    assert registry.life("llm-spot-0") == registry.life("llm-spot-1") == "draining"
    assert registry.life("llm-spot-2") == "active"

    peer.clock.advance(agent.spot_monitor.settings.notice_batch_seconds)
    plan = await plans.next()
    assert plan.reason == "preemption"
    fleet = agent.optimizer.fleet
    assert fleet.state("llm-spot-0") == fleet.state("llm-spot-1") == "draining"
    assert fleet.state("llm-spot-2") == "ready"

    await peer.send(peer.subjects.spot_notice("ip-10-0-1-7"), notice)  # a repeat changes nothing
    await handled(agent, "spot_monitor", "evt.spot.notice.*", 2)
    assert drains.pending == 0


async def test_a_node_running_a_pod_that_is_not_spot_is_not_drained_on_a_notice(
    running: tuple[Agent, Peer],
) -> None:
    agent, peer = running
    drains = await Inbox.open(peer.nc, peer.subjects.spot_drain_all, DrainOrder)
    await pod_on(peer, "llm-spot-0", "node-mixed")
    await pod_on(peer, "llm-reserved-0", "node-mixed", tier="reserved")
    await handled(agent, "spot_monitor", "evt.fleet.instance.*", 2)

    await peer.send(peer.subjects.spot_notice("node-mixed"), notice_message(peer, "node-mixed"))
    await rejected(agent, "spot_monitor", "evt.spot.notice.*", "invalid", 1)
    assert drains.pending == 0
    assert agent.spot_monitor.registry.life("llm-reserved-0") == "active"


def test_the_machine_and_the_fleets_word_on_each_pod_are_kept_in_the_registrys_snapshot() -> None:
    registry = WorkerRegistry()
    registry.add_instance("pod-a", "h100_8x", "default", "spot", from_fleet=True, machine="node-1")
    registry.add_instance("pod-b", "h100_8x", "default", "spot", from_fleet=True, machine="node-1")
    registry.add_instance("node-2", "h100_8x", "default", "spot", from_fleet=True)
    data = msgspec.msgpack.encode(registry.snapshot())

    restored = WorkerRegistry()
    restored.restore(msgspec.msgpack.decode(data, type=RegistrySnapshot))
    assert restored.instances_named("node-1") == ["pod-a", "pod-b"]
    assert restored.instances_named("node-2") == ["node-2"]
    assert restored.instances_named("node-3") == []
    # The actuator's word on a tier is kept too: a forged worker report still cannot relabel the pod.
    restored.observe("w-forged", "pod-a", "h100_8x", "default", "reserved", 0.0, 5.0)
    assert restored.describe("pod-a") == ("h100_8x", "default", "spot")
    # An older snapshot, from before machines were kept, still loads.
    old = msgspec.msgpack.encode(
        {"instances": [["pod-a", "active", "h100_8x", "default", "spot"]], "workers": []}
    )
    restored.restore(msgspec.msgpack.decode(old, type=RegistrySnapshot))
    assert restored.instances_named("node-1") == []
    assert restored.instances_named("pod-a") == ["pod-a"]


async def test_a_notice_for_an_unknown_machine_is_refused(running: tuple[Agent, Peer]) -> None:
    agent, peer = running
    await peer.send(peer.subjects.spot_notice("nowhere"), notice_message(peer, "nowhere"))
    await rejected(agent, "spot_monitor", "evt.spot.notice.*", "invalid", 1)
    await eventually(lambda: agent.spot_monitor.drains == 0)
