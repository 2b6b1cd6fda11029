"""The Kubernetes API calls the Kubernetes actuator makes, on aiohttp, and the few fields it reads.

- ``GET   /apis/nvidia.com/v1beta1/namespaces/{ns}/dynamographdeploymentscalingadapters/{name}/scale``
- ``PATCH`` the same, ``application/merge-patch+json``, body ``{"spec": {"replicas": N}}``
- ``GET   /api/v1/namespaces/{ns}/pods?labelSelector=...``
- ``POST  /api/v1/namespaces/{ns}/pods/{pod}/eviction`` (a ``policy/v1`` Eviction)
- ``DELETE /api/v1/namespaces/{ns}/pods/{pod}`` (``DeleteOptions``), when a PodDisruptionBudget refuses
  the eviction of a pod whose machine is about to die anyway

Every call sends the service account's bearer token (re-read each time: the kubelet rotates it) and has
an overall timeout. Anything but a 2xx answer with the expected body (an error status, no answer in time,
a refused connection, a body that does not decode) raises :class:`KubeApiError`, one line naming the call.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Final, TypeVar
from urllib.parse import quote

import aiohttp
import msgspec

SCALE_GROUP: Final = "nvidia.com"
SCALE_VERSION: Final = "v1beta1"
SCALE_PLURAL: Final = "dynamographdeploymentscalingadapters"
MERGE_PATCH: Final = "application/merge-patch+json"
GRAPH_LABEL: Final = "nvidia.com/dynamo-graph-deployment-name"
COMPONENT_LABEL: Final = "nvidia.com/dynamo-component"
MAX_REPLICAS: Final = 10_000  # far above any worker service: a larger number is a garbled answer
MAX_BODY: Final = 64 << 20  # a pod list of a few thousand pods
MAX_GRACE_SECONDS: Final = 86_400

T = TypeVar("T")


class KubeApiError(Exception):
    """A call that did not do what was asked; the text names the call and says why. ``status`` is the
    HTTP status (0: no answer)."""

    def __init__(self, call: str, reason: str, status: int = 0) -> None:
        super().__init__(f"{call}: {reason}")
        self.call = call
        self.status = status


# -- the fields read from the answers (unknown fields are ignored) ---------------------------------------

Replicas = Annotated[int, msgspec.Meta(ge=0, le=MAX_REPLICAS)]


class ScaleSpec(msgspec.Struct, frozen=True):
    replicas: Replicas = 0


class ScaleStatus(msgspec.Struct, frozen=True):
    replicas: Replicas = 0
    selector: str = ""


class Scale(msgspec.Struct, frozen=True):
    """An ``autoscaling/v1`` Scale: the replicas asked for (``spec``) and seen (``status``)."""

    spec: ScaleSpec = msgspec.field(default_factory=ScaleSpec)
    status: ScaleStatus = msgspec.field(default_factory=ScaleStatus)


class PodMeta(msgspec.Struct, frozen=True, rename="camel"):
    name: Annotated[str, msgspec.Meta(min_length=1)]
    creation_timestamp: str = ""
    deletion_timestamp: str | None = None


class PodSpec(msgspec.Struct, frozen=True, rename="camel"):
    node_name: str = ""


class PodCondition(msgspec.Struct, frozen=True):
    type: str
    status: str = ""


class PodStatus(msgspec.Struct, frozen=True):
    phase: str = ""
    conditions: list[PodCondition] = msgspec.field(default_factory=list)


class Pod(msgspec.Struct, frozen=True):
    metadata: PodMeta
    spec: PodSpec = msgspec.field(default_factory=PodSpec)
    status: PodStatus = msgspec.field(default_factory=PodStatus)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def ready(self) -> bool:
        return any(c.type == "Ready" and c.status == "True" for c in self.status.conditions)

    @property
    def terminating(self) -> bool:
        return self.metadata.deletion_timestamp is not None

    @property
    def ended(self) -> bool:
        """Its containers have exited for good: it serves nothing and its controller replaces it."""
        return self.status.phase in ("Succeeded", "Failed")


class PodList(msgspec.Struct, frozen=True):
    items: list[Pod] = msgspec.field(default_factory=list)


class _Status(msgspec.Struct, frozen=True):
    """The ``Status`` object an error answer carries."""

    message: str = ""
    reason: str = ""


# -- the client ------------------------------------------------------------------------------------------


class KubeApi:
    """One aiohttp session to the API server, between :meth:`start` and :meth:`close`."""

    def __init__(
        self, base_url: str, namespace: str, *, token_file: str, ca_file: str, timeout_s: float
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.namespace = namespace
        self.token_file = Path(token_file)
        self.ca_file = ca_file
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the session (again after :meth:`close`); a session already open is kept."""
        if self._session is not None:
            return
        tls: ssl.SSLContext | bool = False
        if self.base_url.startswith("https://"):
            tls = ssl.create_default_context(cafile=self.ca_file or None)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls),
            headers={"Accept": "application/json", "User-Agent": "cost-agent"},
            trust_env=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def scale_path(self, adapter: str) -> str:
        return (
            f"/apis/{SCALE_GROUP}/{SCALE_VERSION}/namespaces/{self.namespace}/{SCALE_PLURAL}/"
            f"{quote(adapter, safe='')}/scale"
        )

    def pods_path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods"

    async def get_scale(self, adapter: str) -> Scale:
        call = f"GET scale of {adapter}"
        return _decode(call, await self._send(call, "GET", self.scale_path(adapter)), Scale)

    async def patch_replicas(self, adapter: str, replicas: int) -> Scale:
        """Ask for ``replicas``; the answer is the Scale as the server now holds it."""
        if not 0 <= replicas <= MAX_REPLICAS:
            raise ValueError(f"replicas: {replicas} is outside [0, {MAX_REPLICAS}]")
        call = f"PATCH scale of {adapter} to {replicas}"
        body = msgspec.json.encode({"spec": {"replicas": replicas}})
        answer = await self._send(
            call, "PATCH", self.scale_path(adapter), body=body, content_type=MERGE_PATCH
        )
        return _decode(call, answer, Scale)

    async def list_pods(self, selector: str) -> list[Pod]:
        call = f"LIST pods {selector}"
        answer = await self._send(call, "GET", self.pods_path(), params={"labelSelector": selector})
        return _decode(call, answer, PodList).items

    async def evict(self, pod: str, grace_s: int) -> bool:
        """Evict ``pod`` with a grace period of ``grace_s`` seconds; False when it is already gone. A
        PodDisruptionBudget's refusal is a :class:`KubeApiError` with status 429."""
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod, "namespace": self.namespace},
            "deleteOptions": {"gracePeriodSeconds": _grace(grace_s)},
        }
        return await self._pod_call(f"EVICT pod {pod}", "POST", f"{self._pod_path(pod)}/eviction", body)

    async def delete_pod(self, pod: str, grace_s: int) -> bool:
        """Delete ``pod`` with a grace period of ``grace_s`` seconds; False when it is already gone."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": _grace(grace_s)}
        return await self._pod_call(f"DELETE pod {pod}", "DELETE", self._pod_path(pod), body)

    def _pod_path(self, pod: str) -> str:
        return f"{self.pods_path()}/{quote(pod, safe='')}"

    async def _pod_call(self, call: str, method: str, path: str, body: Mapping[str, object]) -> bool:
        try:
            await self._send(
                call, method, path, body=msgspec.json.encode(body), content_type="application/json"
            )
        except KubeApiError as err:
            if err.status == 404:
                return False
            raise
        return True

    async def _send(
        self,
        call: str,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        content_type: str = "",
        params: dict[str, str] | None = None,
    ) -> bytes:
        """The body of a 2xx answer to one request; :class:`KubeApiError` for anything else."""
        if self._session is None:
            raise RuntimeError("KubeApi: call start() first")
        headers = {"Authorization": f"Bearer {self._token(call)}"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            async with self._session.request(
                method,
                self.base_url + path,
                params=params,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                allow_redirects=False,
            ) as response:
                if response.content_length is not None and response.content_length > MAX_BODY:
                    raise KubeApiError(call, f"answer of {response.content_length} bytes", response.status)
                data = await response.content.read(MAX_BODY + 1)
                if len(data) > MAX_BODY:
                    raise KubeApiError(call, f"answer of more than {MAX_BODY} bytes", response.status)
                status = response.status
        except TimeoutError:
            raise KubeApiError(call, f"no answer within {self.timeout_s:g} s") from None
        except (aiohttp.ClientError, OSError) as err:
            raise KubeApiError(call, f"{type(err).__name__}: {' '.join(str(err).split())}") from None
        if not 200 <= status < 300:
            raise KubeApiError(call, f"HTTP {status}{_status_text(data)}", status)
        return data

    def _token(self, call: str) -> str:
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise KubeApiError(
                call, f"cannot read token_file {self.token_file}: {err.strerror or err}"
            ) from None
        if not token:
            raise KubeApiError(call, f"token_file {self.token_file} is empty")
        return token


def _grace(grace_s: int) -> int:
    if not 0 <= grace_s <= MAX_GRACE_SECONDS:
        raise ValueError(f"grace period: {grace_s} s is outside [0, {MAX_GRACE_SECONDS}]")
    return grace_s


def _decode(call: str, data: bytes, kind: type[T]) -> T:
    try:
        return msgspec.json.decode(data, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        raise KubeApiError(call, f"malformed {kind.__name__}: {err}") from None


def _status_text(data: bytes) -> str:
    """`` (Forbidden: pods is forbidden ...)`` from a Status body, or nothing."""
    try:
        status = msgspec.json.decode(data, type=_Status)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""
    text = ": ".join(part for part in (status.reason, " ".join(status.message.split())) if part)
    return f" ({text[:300]})" if text else ""


def component_selector(graph_deployment: str, service: str) -> str:
    """The worker pods of one service, by the two labels Dynamo's operator puts on every worker pod."""
    return f"{GRAPH_LABEL}={graph_deployment},{COMPONENT_LABEL}={service}"
