"""Settings of the Kubernetes actuator (``[actuator.kubernetes]``): where the API server is, how to
authenticate, which DynamoGraphDeployment to scale, and which of its worker services runs each
(instance type, pool, tier) of a plan.

Dynamo knows no price, tier or zone: the mapping is ours. A typical deployment has one worker service
per capacity type, each pinned (node selector, tolerations) to a node pool of that type, e.g.
``VllmWorkerSpot`` on the spot pool of ``g6.xlarge`` in ``us-east-1a``. Each service is scaled through
its DynamoGraphDeploymentScalingAdapter, named ``{graph_deployment}-{service lowercased}`` as Dynamo's
own planner names it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Final

import msgspec

from agent.core.catalog import Tier

SERVICE_ACCOUNT_DIR: Final = "/var/run/secrets/kubernetes.io/serviceaccount"
MAX_NAME: Final = 253  # a Kubernetes object name (DNS-1123 subdomain)

# A DNS-1123 label (namespaces) and subdomain (object names); a Dynamo service name may use capitals
# (``VllmDecodeWorker``): the adapter's name lowercases it.
_DNS_LABEL: Final = r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)?$"
_DNS_SUBDOMAIN: Final = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$"
_SERVICE: Final = r"^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?$"
_API_URL: Final = r"^(https?://[^\s/?#@]+/?)?$"


class ServiceMapping(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The Dynamo worker service whose replicas are a plan's nodes of one (instance type, pool, tier)."""

    instance_type: Annotated[
        str, msgspec.Meta(min_length=1, max_length=MAX_NAME, description="the catalog's instance type")
    ]
    pool: Annotated[
        str,
        msgspec.Meta(min_length=1, max_length=MAX_NAME, description="the pool (zone) the service runs in"),
    ]
    tier: Annotated[Tier, msgspec.Meta(description="reserved, spot or ondemand")]
    service: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=MAX_NAME,
            pattern=_SERVICE,
            description="the worker service's name in the DynamoGraphDeployment (e.g. VllmWorkerSpot)",
        ),
    ]

    @property
    def slot(self) -> tuple[str, str, Tier]:
        return (self.instance_type, self.pool, self.tier)


class KubernetesSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How the agent scales Dynamo workers on Kubernetes. Defaults suit the agent running in the cluster
    under a service account allowed to get/patch ``dynamographdeploymentscalingadapters/scale``,
    list pods and create ``pods/eviction`` in the namespace."""

    api_url: Annotated[
        str,
        msgspec.Meta(
            pattern=_API_URL,
            description=(
                "the API server's base URL (https://host:port); empty: in the cluster, "
                "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"
            ),
        ),
    ] = ""
    namespace: Annotated[
        str,
        msgspec.Meta(
            max_length=63,
            pattern=_DNS_LABEL,
            description="the DynamoGraphDeployment's namespace; empty: the service account's namespace file",
        ),
    ] = ""
    token_file: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            description="the bearer token, re-read on every request (the kubelet rotates it)",
        ),
    ] = f"{SERVICE_ACCOUNT_DIR}/token"
    ca_file: Annotated[
        str,
        msgspec.Meta(
            description="the CA bundle the API server's certificate is checked with; empty: system trust"
        ),
    ] = f"{SERVICE_ACCOUNT_DIR}/ca.crt"
    graph_deployment: Annotated[
        str,
        msgspec.Meta(
            max_length=MAX_NAME,
            pattern=_DNS_SUBDOMAIN,
            description="the DynamoGraphDeployment whose worker services are scaled (required with services)",
        ),
    ] = ""
    request_timeout_seconds: Annotated[
        float, msgspec.Meta(gt=0, le=300, description="a request to the API server must answer within this")
    ] = 10.0
    eviction_margin_seconds: Annotated[
        float,
        msgspec.Meta(
            ge=0,
            le=3600,
            description=(
                "on a spot notice, the evicted pods' grace period ends this long before the notice's "
                "deadline, so they exit before the node dies"
            ),
        ),
    ] = 5.0
    services: Annotated[
        list[ServiceMapping],
        msgspec.Meta(
            max_length=1000,
            description="one Dynamo worker service per (instance_type, pool, tier) of a plan",
        ),
    ] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.services and not self.graph_deployment:
            raise ValueError("graph_deployment: required when services are mapped")
        slots: set[tuple[str, str, Tier]] = set()
        adapters: set[str] = set()
        for i, mapping in enumerate(self.services):
            if mapping.slot in slots:
                raise ValueError(f"services.{i}: {mapping.slot} is mapped twice")
            slots.add(mapping.slot)
            adapter = self.adapter_name(mapping.service)
            if adapter in adapters:
                raise ValueError(
                    f"services.{i}.service: {mapping.service!r} is mapped twice (both scale {adapter})"
                )
            adapters.add(adapter)
            if len(adapter) > MAX_NAME:
                raise ValueError(
                    f"services.{i}.service: the adapter name {adapter[:40]}… is longer than {MAX_NAME}"
                )

    def adapter_name(self, service: str) -> str:
        """The service's DynamoGraphDeploymentScalingAdapter, named as Dynamo's planner names it."""
        return f"{self.graph_deployment}-{service.lower()}"

    def base_url(self, env: Mapping[str, str] | None = None) -> str:
        """``api_url``, or in the cluster the address Kubernetes puts in every pod's environment."""
        if self.api_url:
            return self.api_url.rstrip("/")
        env = os.environ if env is None else env
        host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
        if not host or not port:
            raise ValueError(
                "api_url: empty, and KUBERNETES_SERVICE_HOST/PORT are not set (not in a cluster): give it"
            )
        return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"

    def resolved_namespace(self) -> str:
        """``namespace``, or the service account's own, from the namespace file beside ``token_file``."""
        if self.namespace:
            return self.namespace
        path = Path(self.token_file).parent / "namespace"
        try:
            found = path.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise ValueError(f"namespace: empty, and {path} cannot be read ({err.strerror or err})") from None
        if not found:
            raise ValueError(f"namespace: empty, and {path} is empty")
        return found
