"""``[actuator.kubernetes]``, read as a specification: what a valid mapping is, and the one-line error that
names the field of an invalid one; where the API server and the namespace come from in the cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent.actuators.kubernetes_settings import KubernetesSettings
from agent.core.validation import split_error


def mapping(
    instance_type: str = "g6.xlarge", pool: str = "us-east-1a", tier: str = "spot", service: str = "W"
) -> dict[str, str]:
    return {"instance_type": instance_type, "pool": pool, "tier": tier, "service": service}


def mapped(**fields: str) -> dict[str, Any]:
    """A graph deployment with one service mapped."""
    return {"graph_deployment": "llama", "services": [mapping(**fields)]}


def read(**fields: Any) -> KubernetesSettings:
    return msgspec.convert(fields, KubernetesSettings)


def error(**fields: Any) -> tuple[str, str]:
    """(the field named, the reason) of the settings' validation error, which must be one line."""
    with pytest.raises(msgspec.ValidationError) as caught:
        read(**fields)
    assert len(str(caught.value).splitlines()) == 1, caught.value
    return split_error(caught.value)


def test_the_defaults_are_the_in_cluster_service_account() -> None:
    settings = KubernetesSettings()
    assert settings.api_url == ""
    assert settings.token_file == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert settings.ca_file == "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    assert settings.services == []


def test_one_service_per_slot_each_scaled_by_its_adapter_named_as_dynamo_names_it() -> None:
    settings = read(
        graph_deployment="llama",
        services=[
            mapping(tier="spot", service="VllmWorkerSpot"),
            mapping(tier="ondemand", service="VllmWorker"),
        ],
    )
    assert [m.slot for m in settings.services] == [
        ("g6.xlarge", "us-east-1a", "spot"),
        ("g6.xlarge", "us-east-1a", "ondemand"),
    ]
    assert settings.adapter_name("VllmWorkerSpot") == "llama-vllmworkerspot"


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        (
            {"graph_deployment": "llama", "services": [mapping(service="A"), mapping(service="B")]},
            "?",
            "services.1: ('g6.xlarge', 'us-east-1a', 'spot') is mapped twice",
        ),
        (
            {
                "graph_deployment": "llama",
                "services": [mapping(service="W"), mapping(tier="ondemand", service="w")],
            },
            "?",
            "services.1.service: 'w' is mapped twice (both scale llama-w)",
        ),
        (mapped(tier="preemptible"), "services.0.tier", "Invalid enum"),
        (mapped(instance_type=""), "services.0.instance_type", ">= 1"),
        (mapped(pool=""), "services.0.pool", ">= 1"),
        (mapped(service=""), "services.0.service", "length >= 1"),
        (mapped(service="my worker"), "services.0.service", "regex"),
        ({"services": [mapping()]}, "?", "graph_deployment: required when services are mapped"),
        ({"graph_deployment": "Llama_1"}, "graph_deployment", "regex"),
        ({"namespace": "Prod"}, "namespace", "regex"),
        ({"api_url": "https://kube:6443/api"}, "api_url", "regex"),
        ({"request_timeout_seconds": 0}, "request_timeout_seconds", "> 0"),
        ({"eviction_margin_seconds": -1}, "eviction_margin_seconds", ">= 0"),
        ({"services": [{**mapping(), "zone": "a"}]}, "services.0.zone", "unknown field"),
    ],
)
def test_an_invalid_setting_is_one_line_naming_the_field(
    fields: dict[str, Any], field: str, reason: str
) -> None:
    named, why = error(**fields)
    if field == "?":  # a rule across fields: the reason starts with the field
        assert why.startswith(reason), why
    else:
        assert named == field
        assert reason in why


def test_in_the_cluster_the_api_server_is_the_service_address_from_the_environment() -> None:
    settings = KubernetesSettings()
    assert settings.base_url({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}) == (
        "https://10.0.0.1:443"
    )
    assert settings.base_url({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}) == (
        "https://[fd00::1]:443"
    )
    assert read(api_url="http://127.0.0.1:8001/").base_url({}) == "http://127.0.0.1:8001"
    with pytest.raises(ValueError, match=r"^api_url: empty, and KUBERNETES_SERVICE_HOST/PORT are not set"):
        settings.base_url({})


def test_an_empty_namespace_is_the_service_accounts_own(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t", encoding="utf-8")
    (tmp_path / "namespace").write_text("inference\n", encoding="utf-8")
    assert read(token_file=str(tmp_path / "token")).resolved_namespace() == "inference"
    assert read(namespace="llm", token_file=str(tmp_path / "token")).resolved_namespace() == "llm"
    with pytest.raises(ValueError, match=r"^namespace: empty, and .*/missing/namespace cannot be read"):
        read(token_file=str(tmp_path / "missing" / "token")).resolved_namespace()
