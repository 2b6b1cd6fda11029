"""deploy/kubernetes/, deploy/Dockerfile and deploy/grafana/ as a cluster, a builder and Grafana would read
them, checked offline: every manifest against the Kubernetes API schemas (strict), the Role against the
calls the actuator's client really makes, the agent's settings through our own loader, every container's
arguments through our own command line, and every metric the dashboard plots against the agent's registry.
(tests/e2e/test_deploy_nats.py runs the generated nats.conf on a real nats-server.)"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
import shlex
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

import agent.actors
from agent.__main__ import _parser
from agent.actuators.kubernetes_api import KubeApi
from agent.config import load_settings
from agent.deploy_manifests import (
    AGENT_CONFIGMAP,
    AGENT_TOML,
    KUBERNETES_DIR,
    NATS_CONF,
    NATS_CONFIGMAP,
    config_map,
    kubernetes_nats_conf,
)
from agent.generated import ROOT
from agent.runtime.actor import Actor
from agent.runtime.metrics import AgentMetrics

KUBERNETES_VERSION = "1.34.0"
"""The API the manifests are written for: every managed Kubernetes (EKS, GKE, AKS) offers it in 2026."""
MANIFESTS = sorted((ROOT / KUBERNETES_DIR).glob("*.yaml"))
KUSTOMIZATION = ROOT / KUBERNETES_DIR / "kustomization.yaml"
OBJECTS = [p for p in MANIFESTS if p != KUSTOMIZATION]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DASHBOARD = ROOT / "deploy" / "grafana" / "cost-agent.json"
IMAGE = "cost-agent"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def every_object() -> Iterator[dict[str, Any]]:
    for path in OBJECTS:
        yield from documents(path)


def the(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in every_object() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def our_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) for every container that runs deploy/Dockerfile's image."""
    for workload in every_object():
        pod = workload.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []):
            if container["image"].split(":")[0] == IMAGE:
                yield workload, container


# --- the objects -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", OBJECTS, ids=lambda p: p.name)
def test_every_object_is_valid_for_the_kubernetes_api_in_strict_mode(path: Path) -> None:
    objects = documents(path)
    assert objects, f"{path.name} holds no object"
    for obj in objects:
        # Strict: a misspelt or misplaced field is an error, not ignored as the API server would.
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        assert "namespace" not in obj["metadata"], "applied with -n to the DynamoGraphDeployment's namespace"


def test_the_kustomization_lists_every_object_file_once_and_nothing_else() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text(encoding="utf-8"))

    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in OBJECTS)
    assert [image["name"] for image in kustomization["images"]] == [IMAGE]


def test_the_agent_runs_two_replicas_as_a_non_root_user_on_a_read_only_root() -> None:
    deployment = the("Deployment", "cost-agent")
    assert deployment["spec"]["replicas"] == 2
    for workload, container in our_containers():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == dockerfile_user()
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert container["resources"]["limits"]["memory"]


def test_every_secret_and_config_map_a_pod_uses_is_shipped_or_the_nats_secret() -> None:
    config_maps = {o["metadata"]["name"] for o in every_object() if o["kind"] == "ConfigMap"}
    secrets_used = set()
    for workload in every_object():
        pod = workload.get("spec", {}).get("template", {}).get("spec", {})
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
        for container in pod.get("containers", []):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secrets_used.add((ref["name"], ref["key"]))
    # One Secret, created by the team (README): a password per user of deploy/nats.conf.
    users = set(re.findall(r"user: (\S+)", (ROOT / NATS_CONF).read_text(encoding="utf-8")))
    assert {name for name, _ in secrets_used} == {"cost-agent-nats"}
    assert {key for _, key in secrets_used} == users


# --- RBAC: exactly what the actuator's client calls ---------------------------------------------------


def request_attributes(method: str, path: str) -> tuple[str, str, str]:
    """(API group, resource[/subresource], verb) of a request, as the API server's authorizer sees it."""
    parts = path.strip("/").split("/")
    if parts[0] == "api":
        group, rest = "", parts[2:]
    else:
        group, rest = parts[1], parts[3:]
    assert rest[0] == "namespaces", path  # namespaced calls only: a Role can grant them
    resource, named = rest[2], rest[3:]
    if len(named) > 1:
        resource += "/" + named[1]
    verbs = {"GET": "get" if named else "list", "PATCH": "patch", "POST": "create", "DELETE": "delete"}
    return group, resource, verbs[method]


@pytest.fixture
async def api_server() -> AsyncIterator[tuple[str, list[tuple[str, str]]]]:
    """A local HTTP server answering every call as the API server would; the (method, path) of each."""
    calls: list[tuple[str, str]] = []
    scale = {"spec": {"replicas": 2}, "status": {"replicas": 2, "selector": "app=w"}}
    pods = {"items": [{"metadata": {"name": "w-1"}, "spec": {"nodeName": "node-a"}}]}

    async def answer(request: web.Request) -> web.Response:
        calls.append((request.method, request.path))
        body = scale if request.path.endswith("/scale") else pods if request.method == "GET" else {}
        return web.json_response(body, status=201 if request.method == "POST" else 200)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", calls
    finally:
        await runner.cleanup()


async def test_the_role_grants_exactly_the_calls_the_kubernetes_actuator_makes(
    api_server: tuple[str, list[tuple[str, str]]], tmp_path: Path
) -> None:
    url, calls = api_server
    token = tmp_path / "token"
    token.write_text("t")
    api = KubeApi(url, "dynamo", token_file=str(token), ca_file="", timeout_s=5)
    exercised = {
        "get_scale": lambda: api.get_scale("llm-vllmworkerspot"),
        "patch_replicas": lambda: api.patch_replicas("llm-vllmworkerspot", 3),
        "list_pods": lambda: api.list_pods("app=w"),
        "evict": lambda: api.evict("w-1", 25),
        "delete_pod": lambda: api.delete_pod("w-1", 25),
    }
    # Every call the client can make is exercised: a new one fails here until the Role is reviewed.
    public = {
        name
        for name, member in inspect.getmembers(KubeApi, inspect.iscoroutinefunction)
        if not name.startswith("_") and name not in ("start", "close")
    }
    assert public == set(exercised)
    await api.start()
    try:
        for call in exercised.values():
            await call()
    finally:
        await api.close()

    needed = {request_attributes(method, path) for method, path in calls}
    role = the("Role", "cost-agent-actuator")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == needed
    assert not any("resourceNames" in rule or "nonResourceURLs" in rule for rule in role["rules"])


def test_the_role_is_bound_to_the_agent_s_service_account_and_only_the_agent_gets_a_token() -> None:
    binding = the("RoleBinding", "cost-agent-actuator")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "cost-agent-actuator",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cost-agent"}]
    the("ServiceAccount", "cost-agent")
    for workload in every_object():
        pod = workload.get("spec", {}).get("template", {}).get("spec")
        if pod is None:
            continue
        if workload["metadata"]["name"] == "cost-agent":
            assert pod["serviceAccountName"] == "cost-agent"
        else:  # nats and the sidecars call no Kubernetes API
            assert pod["automountServiceAccountToken"] is False


# --- the agent's settings and command lines -----------------------------------------------------------


def pod_environment(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet would set it, with a stand-in for each Secret."""
    env = {}
    for var in container.get("env", []):
        source = var.get("valueFrom", {})
        if "secretKeyRef" in source:
            env[var["name"]] = f"secret-{source['secretKeyRef']['key']}"
        elif "fieldRef" in source:
            env[var["name"]] = {"metadata.name": "cost-agent-7d9f-x2", "spec.nodeName": "ip-10-0-1-7"}[
                source["fieldRef"]["fieldPath"]
            ]
        else:
            env[var["name"]] = var["value"]
    return env


def expanded(args: list[str], env: dict[str, str]) -> list[str]:
    """``$(VAR)`` replaced as the kubelet does; a variable the container does not define is an error."""

    def value(match: re.Match[str]) -> str:
        assert match[1] in env, f"$({match[1]}) is not in the container's env"
        return env[match[1]]

    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", value, arg) for arg in args]


def test_the_config_maps_hold_our_files_byte_for_byte() -> None:
    agent = yaml.safe_load((ROOT / AGENT_CONFIGMAP).read_text(encoding="utf-8"))
    nats = yaml.safe_load((ROOT / NATS_CONFIGMAP).read_text(encoding="utf-8"))

    assert agent["data"]["agent.toml"] == (ROOT / AGENT_TOML).read_text(encoding="utf-8")
    expected = kubernetes_nats_conf((ROOT / NATS_CONF).read_text(encoding="utf-8"))
    assert nats["data"]["nats.conf"] == expected


@pytest.mark.parametrize(
    "text", ["a\n\n  indented\n\tand a tab  \n", "x: 1\n   \nend\n"], ids=["indent", "spaces-line"]
)
def test_a_config_map_keeps_blank_lines_indentation_and_trailing_spaces(text: str) -> None:
    doc = yaml.safe_load(config_map("c", "test", "f", text, Path("f")))

    assert doc["data"]["f"] == text


@pytest.mark.parametrize("text", ["  starts indented\n", "no newline", "two newlines\n\n"])
def test_a_file_a_literal_block_cannot_carry_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="exactly one newline"):
        config_map("c", "test", "f", text, Path("f"))


def test_the_agent_s_settings_load_in_shadow_mode_with_a_leader_and_durable_state(tmp_path: Path) -> None:
    deployment = the("Deployment", "cost-agent")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = _parser().parse_args(expanded(container["args"], pod_environment(container)))
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    config = Path(args.config)
    config_map = the("ConfigMap", volumes[mounts[str(config.parent)]]["configMap"]["name"])
    file = tmp_path / config.name
    file.write_text(config_map["data"][config.name], encoding="utf-8")

    settings = load_settings(file, env=pod_environment(container))

    assert settings.actuator.mode == "shadow"  # shadow first
    assert settings.actuator.kubernetes.services, "shadow reads the fleet from Kubernetes"
    assert settings.state.store == "jetstream"
    assert settings.leader.active(settings.state.store)
    assert settings.bus.user == "agent"
    assert settings.bus.password == "secret-agent"
    assert settings.bus.url == "nats://{}:{}".format(
        the("Service", "nats")["metadata"]["name"], the("Service", "nats")["spec"]["ports"][0]["port"]
    )
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
    assert (settings.metrics.host, settings.metrics.port) == ("0.0.0.0", port)
    service = the("Service", "cost-agent-metrics")
    assert service["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "metrics"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_every_container_of_our_image_runs_a_real_subcommand_with_real_options() -> None:
    commands = []
    for workload, container in our_containers():
        args = expanded(container["args"], pod_environment(container))
        parsed = _parser().parse_args(args)  # exits (SystemExit) on an unknown command or option
        commands.append((workload["kind"], parsed.command))
        if parsed.command == "sidecar":
            assert parsed.nats_url == "nats://nats:4222"
            env = pod_environment(container)
            assert env["COST_AGENT_BUS__USER"] == "sidecar"
            assert env["COST_AGENT_BUS__PASSWORD"] == "secret-sidecar"
    assert sorted(commands) == [
        ("DaemonSet", "sidecar"),
        ("DaemonSet", "sidecar"),
        ("DaemonSet", "sidecar"),
        ("Deployment", "run"),
    ]


def test_each_cloud_s_sidecar_runs_only_on_that_cloud_s_spot_nodes() -> None:
    for workload, container in our_containers():
        if workload["kind"] != "DaemonSet":
            continue
        args = _parser().parse_args(expanded(container["args"], pod_environment(container)))
        terms = workload["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"]
        # Each term asks for a spot capacity label: an on-demand or reserved node matches none.
        for term in terms:
            assert any(
                e["operator"] == "In" and e["values"][0].lower() in ("spot", "true")
                for e in term["matchExpressions"]
            )
        assert workload["metadata"]["labels"]["cost-agent/provider"] == args.provider
        assert workload["spec"]["template"]["spec"]["hostNetwork"] is True  # the node's metadata service


# --- the image ----------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def dockerfile_user() -> int:
    users = [arg for op, arg in dockerfile_instructions() if op == "USER"]
    return int(users[-1].split(":")[0])


def test_the_dockerfile_copies_files_that_exist_and_installs_from_the_lock() -> None:
    instructions = dockerfile_instructions()
    assert next(arg for op, arg in instructions if op == "FROM").startswith("python:3.11-slim")
    copied = [
        source
        for op, arg in instructions
        if op == "COPY" and not arg.startswith("--from")
        for source in shlex.split(arg)[:-1]
    ]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the build context (the repository root)"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["readme"] in copied  # the build reads it
    assert {"pyproject.toml", "uv.lock", "agent", "schemas"} <= set(copied)
    syncs = [arg for op, arg in instructions if op == "RUN" and "uv sync" in arg]
    assert syncs
    assert all("--locked" in arg for arg in syncs)
    assert dockerfile_user() != 0


def test_the_image_s_entry_point_is_our_console_script_and_its_default_a_real_subcommand() -> None:
    instructions = dict(dockerfile_instructions())  # the last of each
    entrypoint, command = json.loads(instructions["ENTRYPOINT"]), json.loads(instructions["CMD"])
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

    assert entrypoint == ["cost-agent"]
    assert entrypoint[0] in pyproject["project"]["scripts"]
    assert _parser().parse_args(command).command == "run"
    for _, container in our_containers():
        assert "command" not in container  # the image's entry point, the manifest's arguments


# --- the dashboard ------------------------------------------------------------------------------------

_SUFFIXES = {Counter: ("_total",), Gauge: ("",), Histogram: ("_bucket", "_sum", "_count")}


def exposed_series() -> set[str]:
    """Every series name the agent's registry can expose (a labelled metric before its first sample too)."""
    metrics = AgentMetrics()
    names = set()
    for value in vars(metrics).values():
        for kind, suffixes in _SUFFIXES.items():
            if isinstance(value, kind):
                names |= {value._name + suffix for suffix in suffixes}
    for family in metrics.registry.collect():  # collectors of our own, e.g. the handled-messages counts
        names |= {family.name + "_total" if family.type == "counter" else family.name}
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_every_metric_the_dashboard_plots_is_one_the_agent_exposes() -> None:
    series = exposed_series()
    queried = {name for expr in dashboard_queries() for name in re.findall(r"\bcostagent_\w+", expr)}

    assert queried, "the dashboard queries no metric"
    assert sorted(queried - series) == []


def test_the_dashboard_covers_cost_plans_drains_rejections_restarts_and_the_leader() -> None:
    queried = " ".join(dashboard_queries())
    for metric in (
        "costagent_fleet_hourly_cost_dollars",
        "costagent_plan_hourly_cost_dollars",
        "costagent_plans_published_total",
        "costagent_plan_limited_total",
        "costagent_messages_rejected_total",
        "costagent_actor_restarts_total",
        "costagent_leader",
    ):
        assert metric in queried
    assert 'type="spot.drain.v1"' in queried
    assert 'type="migration.report.v1"' in queried


def subclasses(cls: type[Actor]) -> set[type[Actor]]:
    found = set(cls.__subclasses__())
    return found.union(*(subclasses(c) for c in found))


def test_the_dashboard_s_label_values_are_real_message_tags_and_actor_names() -> None:
    tags = {p.name.removesuffix(".json") for p in (ROOT / "schemas" / "jsonschema").glob("*.json")}
    for module in pkgutil.iter_modules(agent.actors.__path__):
        importlib.import_module(f"agent.actors.{module.name}")
    actors = {a.name for a in subclasses(Actor) if hasattr(a, "name")}
    queried = " ".join(dashboard_queries())

    assert set(re.findall(r'type="([^"]+)"', queried)) <= tags
    assert set(re.findall(r'actor="([^"]+)"', queried)) <= actors


def test_every_dashboard_panel_reads_the_chosen_prometheus() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
