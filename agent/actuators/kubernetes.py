"""The Kubernetes actuator: a plan's nodes are replicas of Dynamo worker services, scaled through the scale
subresource of their DynamoGraphDeploymentScalingAdapters, as Dynamo's own planner scales them.

Each (instance type, pool, tier) a plan may list is one worker service of one DynamoGraphDeployment
(``[actuator.kubernetes] services``), e.g. a service per capacity type pinned to a node pool of that type.
A node is a worker pod; its id is the pod's name (its ``spec.nodeName`` is kept: a spot notice names the
machine).

What it calls (:mod:`agent.actuators.kubernetes_api`): GET and PATCH (``application/merge-patch+json``,
``{"spec": {"replicas": N}}``) of ``.../dynamographdeploymentscalingadapters/{dgd}-{service}/scale``;
LIST of the service's pods (the scale's ``status.selector``, else Dynamo's two worker labels); POST of a
``policy/v1`` Eviction per pod on a spot notice (a DELETE of the pod, with the same grace, when a
PodDisruptionBudget refuses it: the machine dies at the deadline whatever the budget says).

How the reconcile's decisions map onto replica counts:

- ``Launch(n)``: ``spec.replicas`` + n. Until the controller has created their pods, the new replicas
  are nodes without a pod (``{adapter}/asked-{k}``), booting; a pod that appears takes the place of the
  oldest. A pod not Ready is booting, expected to serve ``boot_s`` after it was asked for (or first seen).
- ``Release`` at once: ``spec.replicas`` − 1. **Kubernetes picks the pod it deletes**, not the reconcile
  (a controller deletes not-Ready pods first, so a booting replica released goes first as the reconcile
  wants). Until the pick is seen, the released node is shown as released; then the pod actually going is
  reported ``draining`` (then ``terminated``), and the released node, if it was not the one, is held again.
- ``Release`` with a ``leave_at`` (make before break): nothing is changed until :meth:`poll` reaches
  ``leave_at``; then ``spec.replicas`` − 1 as above. ``TakeBack`` cancels the pending leave.
- A spot notice (:meth:`reclaim`): every worker pod on the machine is evicted with a grace period that ends
  ``eviction_margin_seconds`` before the deadline; its controller starts a replacement (the replica count
  is unchanged), which is shown at once as a booting node without a pod, so no plan launches it twice.

Guarantees: an API call that fails (an error status, no answer in time, a body that does not decode) is
logged (``kubernetes_api_error``, with the call and why) and counted (:attr:`KubernetesActuator.api_errors`,
by call), never raised to the caller; a failed PATCH changes nothing recorded, and a failed read keeps the
last view. Every change is reported once, after it was read back from the API server.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import structlog

from agent.actuators.base import NodeChange
from agent.actuators.kubernetes_api import KubeApi, KubeApiError, Pod, Scale, component_selector
from agent.actuators.kubernetes_settings import KubernetesSettings, ServiceMapping
from agent.core.reconcile import Decision, Launch, NodeNow, Refuse, Release, Slot, Standing, TakeBack
from schemas import InstanceState

_log = structlog.get_logger("agent.actuators.kubernetes")

_ORDER: Final[dict[InstanceState, int]] = {"launched": 0, "ready": 1, "draining": 2, "terminated": 3}


@dataclass(slots=True)
class _Pod:
    """A worker pod as last read back, and what was last reported of it."""

    name: str
    machine: str
    order: int
    ready_at: float
    """When it was expected to serve (asked-for time or first sight, plus the boot)."""
    ready: bool
    terminating: bool
    reported: InstanceState
    cause: str


@dataclass(slots=True)
class _Asked:
    """A replica asked for whose pod has not been seen yet."""

    node_id: str
    order: int
    ready_at: float
    cause: str


@dataclass(slots=True)
class _Service:
    mapping: ServiceMapping
    adapter: str
    selector: str
    replicas: int | None = None
    """``spec.replicas`` as last read back; None: never read (nothing is changed until it is)."""
    pods: dict[str, _Pod] = field(default_factory=dict)
    asked: deque[_Asked] = field(default_factory=deque)
    releasing: dict[str, str] = field(default_factory=dict)
    """Pods released by a plan (cause by pod) whose replica Kubernetes has not yet picked."""
    leaving: dict[str, tuple[float, str]] = field(default_factory=dict)
    """Pods released make before break: (leave_at, cause)."""
    evicted: dict[str, str] = field(default_factory=dict)
    """Pods evicted on a spot notice: cause by pod."""

    def live(self) -> list[_Pod]:
        return [p for p in self.pods.values() if not p.terminating]


@dataclass(slots=True)
class _Patch:
    """What one service's PATCH is for; recorded only once the PATCH succeeded."""

    delta: int = 0
    asked: list[_Asked] = field(default_factory=list)
    unasked: set[str] = field(default_factory=set)
    releasing: dict[str, str] = field(default_factory=dict)


class KubernetesActuator:
    """See the module docstring. ``boot_s``: a new replica's expected boot (``[actuator] boot_seconds``).
    Call :meth:`open` first; ``env`` (for the in-cluster API address) defaults to the process's."""

    mode = "kubernetes"

    def __init__(
        self, settings: KubernetesSettings, *, boot_s: float, env: Mapping[str, str] | None = None
    ) -> None:
        if not settings.services:
            raise ValueError("services: none mapped, so there is nothing to scale")
        if not 0 <= boot_s <= 86_400:
            raise ValueError(f"boot_s: {boot_s} is outside [0, 86400]")
        self.settings = settings
        self.boot_s = boot_s
        self.api = KubeApi(
            settings.base_url(env),
            settings.resolved_namespace(),
            token_file=settings.token_file,
            ca_file=settings.ca_file,
            timeout_s=settings.request_timeout_seconds,
        )
        self.services: dict[Slot, _Service] = {
            m.slot: _Service(
                m, settings.adapter_name(m.service), component_selector(settings.graph_deployment, m.service)
            )
            for m in settings.services
        }
        self.api_errors: Counter[str] = Counter()
        """Failed API calls by kind (``get_scale``, ``patch_scale``, ``list_pods``, ``evict``,
        ``delete_pod``), and decisions that could not be applied (``unusable_decision``)."""
        self.last_error = ""
        self._seq = itertools.count(1)

    # --- the Actuator protocol --------------------------------------------------------------------

    async def open(self, now: float) -> list[NodeChange]:
        """Read every service's replicas and pods and adopt them as they are; launch nothing."""
        await self.api.start()
        changes: list[NodeChange] = []
        for svc in self.services.values():
            changes += await self._read_back(svc, now)
        return changes

    def fleet(self, now: float) -> Sequence[NodeNow]:
        nodes: list[NodeNow] = []
        for slot, svc in self.services.items():
            if svc.replicas is not None:
                nodes += _service_nodes(slot, svc, now)
        return nodes

    async def carry_out(self, decisions: Sequence[Decision], now: float, cause: str) -> list[NodeChange]:
        """One PATCH per service whose replica count changes, then a read-back of each."""
        patches: dict[Slot, _Patch] = {}
        for decision in decisions:
            if isinstance(decision, Refuse):
                continue  # nothing to do: the actor counts it
            svc = self.services.get(decision.slot)
            if svc is None or svc.replicas is None:
                self._unusable(decision, svc)
                continue
            if isinstance(decision, TakeBack):
                svc.leaving.pop(decision.node_id, None)
            elif isinstance(decision, Launch):
                patch = patches.setdefault(decision.slot, _Patch())
                patch.delta += decision.count
                patch.asked += (self._asked(svc, decision.ready_at, cause) for _ in range(decision.count))
            elif isinstance(decision, Release):
                self._plan_release(svc, patches, decision, cause)
        changes: list[NodeChange] = []
        for slot, patch in patches.items():
            svc = self.services[slot]
            if patch.delta != 0 and not await self._patch(svc, (svc.replicas or 0) + patch.delta):
                continue
            svc.asked = deque(a for a in svc.asked if a.node_id not in patch.unasked)
            svc.asked.extend(patch.asked)
            svc.releasing.update(patch.releasing)
            changes += await self._read_back(svc, now)
        return changes

    async def reclaim(self, instance_id: str, deadline: float, now: float, cause: str) -> list[NodeChange]:
        """Evict the worker pods on machine ``instance_id`` (or the pod of that name), their grace period
        ending ``eviction_margin_seconds`` before ``deadline``: they leave discovery, so the frontend stops
        routing to them, and finish what they can before the machine dies."""
        grace = max(0, math.floor(deadline - now - self.settings.eviction_margin_seconds))
        changes: list[NodeChange] = []
        for svc, pod in list(self._pods_on(instance_id)):
            if pod.name in svc.evicted:
                continue
            if not await self._evict(pod.name, grace):
                continue
            svc.evicted[pod.name] = cause
            svc.leaving.pop(pod.name, None)
            svc.releasing.pop(pod.name, None)
            pod.terminating = True
            _log.info(
                "pod_evicted", pod=pod.name, machine=pod.machine, grace_seconds=grace, deadline=deadline
            )
            changes += self._report(svc, pod, "draining", now, cause)
            self._settle_asked(svc, now)
        return changes

    async def _evict(self, pod: str, grace: int) -> bool:
        """Evict the pod; if a PodDisruptionBudget refuses (429), delete it with the same grace: its machine
        dies at the deadline whatever the budget says, and a deleted pod at least drains first. True when
        the pod is going (or already gone)."""
        try:
            await self.api.evict(pod, grace)
            return True
        except KubeApiError as err:
            if err.status != 429:
                self._failed("evict", err)
                return False
            _log.info("eviction_refused", pod=pod, error=str(err))
        try:
            await self.api.delete_pod(pod, grace)
            return True
        except KubeApiError as err:
            self._failed("delete_pod", err)
            return False

    async def poll(self, now: float) -> list[NodeChange]:
        """Scale down for the leaves due, then read every service back."""
        changes: list[NodeChange] = []
        for svc in self.services.values():
            due = {pod: why for pod, (at, why) in svc.leaving.items() if at <= now}
            if due and svc.replicas is not None and await self._patch(svc, svc.replicas - len(due)):
                for pod in due:
                    del svc.leaving[pod]
                svc.releasing.update(due)
            changes += await self._read_back(svc, now)
        return changes

    async def close(self) -> None:
        await self.api.close()

    def runs(self, instance_id: str) -> bool:
        """Whether a worker pod of a mapped service is, or runs on, ``instance_id``."""
        return any(True for _ in self._pods_on(instance_id))

    # --- reading back -----------------------------------------------------------------------------

    async def _read_back(self, svc: _Service, now: float) -> list[NodeChange]:
        """GET the scale and LIST the pods; the changes since the last read. A failed read keeps the last.
        The first read of a service adopts what runs (at :meth:`open`, or later if that read failed)."""
        try:
            scale = await self.api.get_scale(svc.adapter)
        except KubeApiError as err:
            self._failed("get_scale", err)
            return []
        if scale.status.selector:
            svc.selector = scale.status.selector
        try:
            pods = await self.api.list_pods(svc.selector)
        except KubeApiError as err:
            self._failed("list_pods", err)
            return []
        return self._observe(svc, scale, pods, now, adopting=svc.replicas is None)

    def _observe(
        self, svc: _Service, scale: Scale, pods: Sequence[Pod], now: float, adopting: bool
    ) -> list[NodeChange]:
        svc.replicas = scale.spec.replicas
        seen = {p.name: p for p in pods if not p.ended}
        changes: list[NodeChange] = []
        for name in [n for n in svc.pods if n not in seen]:
            pod = svc.pods.pop(name)
            cause = self._going_cause(svc, pod)
            changes += self._report(svc, pod, "terminated", now, cause)
            svc.leaving.pop(name, None)
            svc.evicted.pop(name, None)
        for found in sorted(
            (p for p in pods if p.name in seen and p.name not in svc.pods),
            key=lambda p: (p.metadata.creation_timestamp, p.name),
        ):
            changes += self._adopt(svc, found, now, adopting)
        for name, found in seen.items():
            pod = svc.pods[name]
            pod.machine = found.spec.node_name or pod.machine
            if found.ready and not pod.ready:
                pod.ready = True
                changes += self._report(svc, pod, "ready", now, pod.cause)
            if found.terminating and not pod.terminating:
                pod.terminating = True
                changes += self._report(svc, pod, "draining", now, self._going_cause(svc, pod))
        live = {p.name for p in svc.live()}
        svc.leaving = {n: v for n, v in svc.leaving.items() if n in live}
        surplus = max(0, len(live) - svc.replicas)
        svc.releasing = dict(itertools.islice(svc.releasing.items(), surplus))
        self._settle_asked(svc, now)
        return changes

    def _adopt(self, svc: _Service, found: Pod, now: float, adopting: bool) -> list[NodeChange]:
        """A pod seen for the first time: it takes the place of the oldest replica asked for."""
        asked = svc.asked.popleft() if svc.asked and not found.terminating else None
        pod = _Pod(
            name=found.name,
            machine=found.spec.node_name,
            order=asked.order if asked else next(self._seq),
            ready_at=asked.ready_at if asked else now + self.boot_s,
            ready=found.ready,
            terminating=found.terminating,
            reported="launched",
            cause=asked.cause if asked else "",
        )
        svc.pods[pod.name] = pod
        states: list[InstanceState] = ["launched"]
        if found.ready:
            states.append("ready")
        if found.terminating:
            states.append("draining")
        if adopting:
            states = states[-1:]  # an agent restarted: the pod's state now, not its history
        changes = [self._change(svc, pod.name, state, now, pod.cause) for state in states]
        pod.reported = states[-1]
        return changes

    def _settle_asked(self, svc: _Service, now: float) -> None:
        """As many pod-less replicas as ``spec.replicas`` has more than the live pods: the newest asked
        for go first; the controller's own (a replacement) are expected ``boot_s`` from now."""
        need = max(0, (svc.replicas or 0) - len(svc.live()))
        while len(svc.asked) > need:
            svc.asked.pop()
        while len(svc.asked) < need:
            svc.asked.append(self._asked(svc, now + self.boot_s, ""))

    def _going_cause(self, svc: _Service, pod: _Pod) -> str:
        """Why a pod is going: the notice it was evicted for, or the plan that released a replica (the
        pod Kubernetes picked takes the release, whichever node the plan named)."""
        if pod.name in svc.evicted:
            return svc.evicted[pod.name]
        if pod.reported == "draining":
            return pod.cause
        if pod.name in svc.releasing:
            pod.cause = svc.releasing.pop(pod.name)
        elif svc.releasing:
            pod.cause = svc.releasing.pop(next(iter(svc.releasing)))
        else:
            pod.cause = ""
        return pod.cause

    # --- changing -----------------------------------------------------------------------------------

    def _plan_release(self, svc: _Service, patches: dict[Slot, _Patch], release: Release, cause: str) -> None:
        if release.node_id in svc.pods and release.leave_at is not None:
            svc.leaving[release.node_id] = (release.leave_at, cause)
            return
        patch = patches.setdefault(release.slot, _Patch())
        patch.delta -= 1
        if release.node_id in svc.pods:
            patch.releasing[release.node_id] = cause
        else:
            patch.unasked.add(release.node_id)

    async def _patch(self, svc: _Service, replicas: int) -> bool:
        try:
            scale = await self.api.patch_replicas(svc.adapter, max(0, replicas))
        except KubeApiError as err:
            self._failed("patch_scale", err)
            return False
        _log.info("replicas_patched", adapter=svc.adapter, replicas=scale.spec.replicas, was=svc.replicas)
        svc.replicas = scale.spec.replicas
        return True

    def _asked(self, svc: _Service, ready_at: float, cause: str) -> _Asked:
        order = next(self._seq)
        return _Asked(f"{svc.adapter}/asked-{order}", order, ready_at, cause)

    # --- reporting ----------------------------------------------------------------------------------

    def _report(
        self, svc: _Service, pod: _Pod, state: InstanceState, now: float, cause: str
    ) -> list[NodeChange]:
        if _ORDER[state] <= _ORDER[pod.reported] and state != "terminated":
            return []
        pod.reported = state
        return [self._change(svc, pod.name, state, now, cause)]

    def _change(
        self, svc: _Service, node_id: str, state: InstanceState, now: float, cause: str
    ) -> NodeChange:
        m = svc.mapping
        pod = svc.pods.get(node_id)
        machine = pod.machine if pod is not None else ""
        return NodeChange(node_id, m.instance_type, m.pool, m.tier, state, now, cause, machine)

    def _pods_on(self, instance_id: str) -> Iterable[tuple[_Service, _Pod]]:
        for svc in self.services.values():
            for pod in list(svc.pods.values()):
                if instance_id in (pod.name, pod.machine):
                    yield svc, pod

    def _failed(self, call: str, err: KubeApiError) -> None:
        self.api_errors[call] += 1
        self.last_error = str(err)
        _log.warning("kubernetes_api_error", call=call, status=err.status, error=str(err))

    def _unusable(self, decision: Decision, svc: _Service | None) -> None:
        """A decision for a slot no service maps, or a service never read: nothing can be done safely."""
        why = "no service maps this slot" if svc is None else f"{svc.adapter} has not been read yet"
        self.api_errors["unusable_decision"] += 1
        self.last_error = f"{type(decision).__name__} for {decision.slot}: {why}"
        _log.warning("decision_not_applied", slot=list(decision.slot), reason=why)


def _service_nodes(slot: Slot, svc: _Service, now: float) -> list[NodeNow]:
    """One node per replica of ``svc`` and one per pod still terminating, as the reconcile sees them."""
    replicas = svc.replicas or 0
    nodes: list[NodeNow] = []
    live = svc.live()
    # The pods Kubernetes will take for the replicas released but not yet picked: those a plan named,
    # else as a ReplicaSet picks (not Ready first, then the newest).
    likely = sorted(live, key=lambda p: (p.name not in svc.releasing, p.ready, -p.order))
    going = {p.name for p in likely[: max(0, len(live) - replicas)]}
    for pod in svc.pods.values():
        standing: Standing = "held"
        leave_at = None
        if pod.terminating or pod.name in going:
            standing = "reclaimed" if pod.name in svc.evicted else "released"
        elif pod.name in svc.leaving:
            standing, leave_at = "leaving", svc.leaving[pod.name][0]
        ready_at = None if pod.ready or standing != "held" else max(pod.ready_at, now)
        nodes.append(NodeNow(pod.name, slot, pod.order, ready_at, standing, leave_at))
    nodes += (NodeNow(a.node_id, slot, a.order, max(a.ready_at, now)) for a in svc.asked)
    return nodes
