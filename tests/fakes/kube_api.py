"""A fake Kubernetes API server (aiohttp, 127.0.0.1, port 0) with only the endpoints the Kubernetes
actuator calls, each request checked as the real API server would refuse it:

- ``GET|PATCH /apis/nvidia.com/v1beta1/namespaces/{ns}/dynamographdeploymentscalingadapters/{name}/scale``:
  PATCH only as ``application/merge-patch+json`` (else 415) with exactly ``{"spec": {"replicas": N}}``,
  N an integer ≥ 0 (else 422);
- ``GET /api/v1/namespaces/{ns}/pods?labelSelector=k=v,...`` (equality selectors only, else 400);
- ``POST /api/v1/namespaces/{ns}/pods/{pod}/eviction``: a ``policy/v1`` Eviction naming the pod, with
  ``deleteOptions.gracePeriodSeconds`` an integer ≥ 0 (else 400); 404 for a pod that is not there; 429
  while ``disruption_budget_blocks`` (a PodDisruptionBudget allows no disruption);
- ``DELETE /api/v1/namespaces/{ns}/pods/{pod}``: a ``v1`` DeleteOptions with ``gracePeriodSeconds`` an
  integer ≥ 0 (else 400); 404 for a pod that is not there.

Every request needs ``Authorization: Bearer <token>`` (else 401) and the served namespace (else 404); an
unknown path is 404, another verb 405. Errors carry a ``Status`` body. Every request is recorded
(:attr:`FakeKubeApi.requests`), refused or not.

It also plays the controller: after each change, each adapter's service has exactly ``replicas`` pods
not terminating. New pods are not Ready (:meth:`make_ready`, or ``ready_after`` seconds later); the
surplus is deleted as a ReplicaSet picks (not Ready first, then the newest). A deleted or evicted pod is
terminating until :meth:`end_terminations` (or at once with ``linger=False``).

Faults (:meth:`fail`) replace the next matching request's answer: an error status, garbage, or no answer.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import ssl
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

GRAPH_LABEL = "nvidia.com/dynamo-graph-deployment-name"
COMPONENT_LABEL = "nvidia.com/dynamo-component"
_LABEL = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_./]*")  # equality selectors only: no !=, in (...), exists
_SCALE = "/apis/nvidia.com/v1beta1/namespaces/{ns}/dynamographdeploymentscalingadapters/{name}/scale"
_PODS = "/api/v1/namespaces/{ns}/pods"
_POD = "/api/v1/namespaces/{ns}/pods/{pod}"
_EVICTION = _POD + "/eviction"


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any
    """The JSON body (None when empty or not JSON)."""
    status: int
    """What the fake answered."""


@dataclass
class FakePod:
    name: str
    service: str
    node: str
    created: int
    ready: bool = False
    deleted: bool = False
    grace_seconds: int | None = None
    """The grace period of the eviction or deletion that deleted it."""


@dataclass
class Adapter:
    name: str
    service: str
    replicas: int


@dataclass
class Fault:
    method: str
    status: int = 500
    body: bytes | None = None
    hang: bool = False
    path: str = ""


@dataclass
class FakeKubeApi:
    token: str
    namespace: str
    graph_deployment: str
    ready_after: float | None = None
    """Seconds after creation a pod turns Ready; None: only by :meth:`make_ready`."""
    linger: bool = True
    paused: bool = False
    """The controller does nothing (as one that has not caught up yet)."""
    disruption_budget_blocks: bool = False
    """A PodDisruptionBudget allows no eviction (429)."""
    requests: list[Recorded] = field(default_factory=list)
    adapters: dict[str, Adapter] = field(default_factory=dict)
    pods: dict[str, FakePod] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    url: str = ""
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None
    _release_hung: asyncio.Event = field(default_factory=asyncio.Event)

    # --- the test's side -------------------------------------------------------------------------------

    async def start(self, tls: ssl.SSLContext | None = None) -> str:
        """Serve on a free port of 127.0.0.1 (over TLS with ``tls``); the base URL."""
        app = web.Application(middlewares=[self._record_and_check])
        app.router.add_route("*", _SCALE.format(ns="{ns}", name="{name}"), self._scale)
        app.router.add_route("*", _PODS.format(ns="{ns}"), self._pods)
        app.router.add_route("*", _EVICTION.format(ns="{ns}", pod="{pod}"), self._eviction)
        app.router.add_route("*", _POD.format(ns="{ns}", pod="{pod}"), self._pod)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        self._release_hung.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def add_service(self, service: str, replicas: int = 0, ready: bool = False) -> str:
        """A worker service with its scaling adapter and ``replicas`` pods; returns the adapter's name."""
        name = f"{self.graph_deployment}-{service.lower()}"
        self.adapters[name] = Adapter(name, service, replicas)
        self._control()
        for pod in self.service_pods(service):
            pod.ready = ready
        return name

    def service_pods(self, service: str, *, deleted: bool | None = False) -> list[FakePod]:
        """The service's pods, oldest first (``deleted=None``: terminating ones too)."""
        return [
            p
            for p in sorted(self.pods.values(), key=lambda p: p.created)
            if p.service == service and (deleted is None or p.deleted == deleted)
        ]

    def resume(self) -> None:
        """The controller catches up."""
        self.paused = False
        self._control()

    def make_ready(self, *names: str) -> None:
        for name in names:
            self.pods[name].ready = True

    def end_terminations(self) -> list[str]:
        """The terminating pods exit and are gone; their names."""
        gone = [name for name, pod in self.pods.items() if pod.deleted]
        for name in gone:
            del self.pods[name]
        return gone

    def delete_pod(self, name: str) -> None:
        """Someone else deletes a pod (the controller replaces it)."""
        self._delete(self.pods[name], None)
        self._control()

    def fail(
        self, method: str, status: int = 500, *, body: bytes | None = None, hang: bool = False, path: str = ""
    ) -> None:
        """The next ``method`` request (whose path contains ``path``) gets ``status`` with ``body``
        (default: a Status), or no answer."""
        self.faults.append(Fault(method, status, body, hang, path))

    def made(self, method: str) -> list[Recorded]:
        """The requests of one verb that the fake accepted."""
        return [r for r in self.requests if r.method == method and r.status < 300]

    # --- the API server's side ------------------------------------------------------------------------

    @web.middleware
    async def _record_and_check(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record = Recorded(request.method, request.path, dict(request.query), request.content_type, body, 0)
        self.requests.append(record)
        response = await self._answer(request, handler, raw)
        record.status = response.status
        return response

    async def _answer(self, request: web.Request, handler: Any, raw: bytes) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        if request.match_info.get("ns") not in (None, self.namespace):
            return _status(404, "NotFound", f"namespaces {request.match_info['ns']!r} not found")
        fault = next(
            (f for f in self.faults if (f.method, True) == (request.method, f.path in request.path)), None
        )
        if fault is not None:
            self.faults.remove(fault)
            if fault.hang:
                await self._release_hung.wait()
            if fault.body is not None:
                return web.Response(status=fault.status, body=fault.body, content_type="application/json")
            return _status(fault.status, "InternalError", f"injected fault {fault.status}")
        try:
            json.loads(raw or b"null")
        except ValueError:
            return _status(400, "BadRequest", "the body is not JSON")
        response: web.StreamResponse = await handler(request)
        return response

    async def _scale(self, request: web.Request) -> web.Response:
        adapter = self.adapters.get(request.match_info["name"])
        if adapter is None:
            return _status(
                404, "NotFound", f"dynamographdeploymentscalingadapters {request.match_info['name']!r}"
            )
        if request.method == "PATCH":
            if request.content_type != "application/merge-patch+json":
                return _status(415, "UnsupportedMediaType", f"PATCH as {request.content_type!r}")
            body = await _json(request)
            replicas = _replicas_of(body)
            if replicas is None:
                return _status(422, "Invalid", f'not {{"spec": {{"replicas": N}}}}: {body!r}')
            adapter.replicas = replicas
            self._control()
        elif request.method != "GET":
            return _status(405, "MethodNotAllowed", request.method)
        return web.json_response(self._scale_body(adapter))

    async def _pods(self, request: web.Request) -> web.Response:
        if request.method != "GET":
            return _status(405, "MethodNotAllowed", request.method)
        wanted: dict[str, str] = {}
        for term in filter(None, request.query.get("labelSelector", "").split(",")):
            key, eq, value = term.partition("=")
            if not eq or not _LABEL.fullmatch(key) or not _LABEL.fullmatch(value or "x"):
                return _status(400, "BadRequest", f"unsupported selector term {term!r}")
            wanted[key] = value
        items = [
            self._pod_body(p)
            for p in sorted(self.pods.values(), key=lambda p: p.created)
            if all(self._labels(p).get(k) == v for k, v in wanted.items())
        ]
        return web.json_response({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})

    async def _eviction(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return _status(405, "MethodNotAllowed", request.method)
        name = request.match_info["pod"]
        body = await _json(request)
        grace = _eviction_grace(body, name, self.namespace)
        if grace is None:
            return _status(400, "BadRequest", f"not a policy/v1 Eviction of {name!r}: {body!r}")
        if self.disruption_budget_blocks and name in self.pods:
            return _status(
                429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption budget."
            )
        return self._deleted(name, grace)

    async def _pod(self, request: web.Request) -> web.Response:
        if request.method != "DELETE":
            return _status(405, "MethodNotAllowed", request.method)
        name = request.match_info["pod"]
        body = await _json(request)
        grace = _delete_grace(body)
        if grace is None:
            return _status(400, "BadRequest", f"not a v1 DeleteOptions: {body!r}")
        return self._deleted(name, grace)

    def _deleted(self, name: str, grace: int) -> web.Response:
        pod = self.pods.get(name)
        if pod is None:
            return _status(404, "NotFound", f"pods {name!r} not found")
        if pod.deleted:  # deleted again: a shorter grace period takes over, as in Kubernetes
            grace = min(grace, pod.grace_seconds if pod.grace_seconds is not None else grace)
        self._delete(pod, grace)
        self._control()
        return _status(201, "", "", kind_status="Success")

    # --- the controller -------------------------------------------------------------------------------

    def _control(self) -> None:
        if self.paused:
            return
        for adapter in self.adapters.values():
            live = self.service_pods(adapter.service)
            for _ in range(adapter.replicas - len(live)):
                self._create(adapter)
            surplus = len(live) - adapter.replicas
            if surplus > 0:
                for pod in sorted(live, key=lambda p: (p.ready, -p.created))[:surplus]:
                    self._delete(pod, None)

    def _create(self, adapter: Adapter) -> None:
        seq = next(self._seq)
        pod = FakePod(f"{adapter.name}-{seq:04d}", adapter.service, f"node-{seq:04d}", seq)
        self.pods[pod.name] = pod
        if self.ready_after == 0:
            pod.ready = True
        elif self.ready_after is not None:
            asyncio.get_running_loop().call_later(self.ready_after, self._ready_later, pod.name)

    def _ready_later(self, name: str) -> None:
        if name in self.pods:
            self.pods[name].ready = True

    def _delete(self, pod: FakePod, grace: int | None) -> None:
        pod.deleted, pod.grace_seconds = True, grace
        if not self.linger:
            del self.pods[pod.name]

    def _labels(self, pod: FakePod) -> dict[str, str]:
        return {GRAPH_LABEL: self.graph_deployment, COMPONENT_LABEL: pod.service, "app": "worker"}

    def _scale_body(self, adapter: Adapter) -> dict[str, Any]:
        selector = f"{GRAPH_LABEL}={self.graph_deployment},{COMPONENT_LABEL}={adapter.service}"
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": adapter.name, "namespace": self.namespace},
            "spec": {"replicas": adapter.replicas},
            "status": {"replicas": len(self.service_pods(adapter.service)), "selector": selector},
        }

    def _pod_body(self, pod: FakePod) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "name": pod.name,
            "namespace": self.namespace,
            "labels": self._labels(pod),
            "creationTimestamp": f"2026-12-03T{pod.created // 3600:02d}:{pod.created // 60 % 60:02d}:"
            f"{pod.created % 60:02d}Z",
        }
        if pod.deleted:
            metadata["deletionTimestamp"] = "2026-12-03T23:59:59Z"
            metadata["deletionGracePeriodSeconds"] = pod.grace_seconds or 30
        return {
            "metadata": metadata,
            "spec": {"nodeName": pod.node, "containers": [{"name": "worker"}]},
            "status": {
                "phase": "Running" if pod.ready else "Pending",
                "conditions": [{"type": "Ready", "status": "True" if pod.ready else "False"}],
            },
        }


async def _json(request: web.Request) -> Any:
    """The request's JSON body (the middleware has checked that it parses)."""
    return json.loads(await request.read() or b"null")


def _replicas_of(body: Any) -> int | None:
    if not isinstance(body, dict) or set(body) != {"spec"}:
        return None
    spec = body["spec"]
    if not isinstance(spec, dict) or set(spec) != {"replicas"}:
        return None
    replicas = spec["replicas"]
    return (
        replicas if isinstance(replicas, int) and not isinstance(replicas, bool) and replicas >= 0 else None
    )


def _eviction_grace(body: Any, name: str, namespace: str) -> int | None:
    if not isinstance(body, dict) or body.get("apiVersion") != "policy/v1" or body.get("kind") != "Eviction":
        return None
    metadata = body.get("metadata")
    if not isinstance(metadata, dict) or metadata.get("name") != name:
        return None
    if metadata.get("namespace", namespace) != namespace:
        return None
    return _delete_grace({"apiVersion": "v1", "kind": "DeleteOptions", **(body.get("deleteOptions") or {})})


def _delete_grace(body: Any) -> int | None:
    if not isinstance(body, dict) or body.get("apiVersion") != "v1" or body.get("kind") != "DeleteOptions":
        return None
    grace = body.get("gracePeriodSeconds")
    return grace if isinstance(grace, int) and not isinstance(grace, bool) and grace >= 0 else None


def _status(code: int, reason: str, message: str, kind_status: str = "Failure") -> web.Response:
    body = {
        "apiVersion": "v1",
        "kind": "Status",
        "status": kind_status,
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)
