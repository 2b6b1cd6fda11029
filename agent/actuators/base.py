"""The actuator interface: a plan's node counts in, launches and releases out, every result an InstanceEvent.

One rule decides what to change: :func:`agent.core.reconcile.reconcile`. An actuator only describes the
nodes it runs (:meth:`Actuator.fleet`) and carries the reconcile's decisions out (:meth:`Actuator.carry_out`);
the :class:`~agent.actors.actuator.ActuatorActor` is the one place that applies plans to any of them (the
newest plan wins, the spot market's room comes from the latest quotes, every change is published).

Every method returns the :class:`NodeChange` list of what it changed, in order; the actor publishes each as
an ``InstanceEvent`` on ``{ns}.evt.fleet.instance.{instance_id}``. A change is reported once, when it
happens: a node's ``launched``, then ``ready``, ``draining`` and ``terminated``.

The drivers:
- :mod:`agent.actuators.local`: one process per node (a Dynamo worker, e.g. ``python -m dynamo.mocker``).
- :mod:`agent.actuators.kubernetes`: the scale subresource of DynamoGraphDeploymentScalingAdapters.
- :mod:`agent.actuators.shadow`: changes nothing; says what it would have done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.core.catalog import Tier
from agent.core.reconcile import Decision, NodeNow
from schemas import InstanceState


@dataclass(frozen=True, slots=True)
class NodeChange:
    """A node entered ``state`` at ``at`` (clock seconds); ``cause`` is the ``msg_id`` of the plan or
    notice that caused it ("" when none: a boot, an exit)."""

    instance_id: str
    instance_type: str
    pool: str
    tier: Tier
    state: InstanceState
    at: float
    cause: str = ""
    machine: str = ""
    """The machine it runs on when the node is not the machine itself (a Kubernetes pod's node)."""


class Actuator(Protocol):
    """What turns decisions into running nodes. Methods are called one at a time (the actor holds a
    lock), with ``now`` the clock time; none may block the event loop for long."""

    mode: str
    """``local``, ``kubernetes`` or ``shadow``: a metric label and the log's word for it."""

    async def open(self, now: float) -> list[NodeChange]:
        """Adopt the nodes already running (an agent restarted: nothing is launched twice) and report
        their current states."""
        ...

    def fleet(self, now: float) -> Sequence[NodeNow]:
        """Every node not terminated, as the reconcile sees it (booting, held, leaving, draining)."""
        ...

    async def carry_out(self, decisions: Sequence[Decision], now: float, cause: str) -> list[NodeChange]:
        """Apply the reconcile's decisions, in order (``Refuse`` needs nothing: the actor counts it)."""
        ...

    async def reclaim(self, instance_id: str, deadline: float, now: float, cause: str) -> list[NodeChange]:
        """A spot notice for a node this actuator runs: stop routing to it and drain at once; it dies at
        ``deadline``. A node it does not run: nothing (an empty list)."""
        ...

    async def poll(self, now: float) -> list[NodeChange]:
        """Observe: boots finished, drains ended, leave times reached, deadlines passed, nodes that died."""
        ...

    def runs(self, instance_id: str) -> bool:
        """Whether this node is one the actuator runs and drains (not terminated)."""
        ...

    async def close(self) -> None:
        """Stop watching. Running nodes are left running: the fleet outlives the agent."""
        ...
