"""The Kubernetes actuator against a fake Kubernetes API server over real HTTP (``tests/fakes/kube_api.py``):
the server checks every request (path, verb, bearer token, the PATCH's content type and body, the
eviction's body) and plays the controller that makes and deletes pods as the replica counts change.

No cluster is available here; what the fake does not model (scheduling, PodDisruptionBudgets, watch
streams) is not claimed.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import aiohttp
import pytest
from certs import self_signed
from fakes.kube_api import FakeKubeApi
from waits import eventually_async

from agent.actuators.base import NodeChange
from agent.actuators.kubernetes import KubernetesActuator
from agent.actuators.kubernetes_settings import KubernetesSettings, ServiceMapping
from agent.core.reconcile import FleetNow, Launch, NodeNow, Release, Slot, TakeBack, reconcile

TOKEN = "s3cret-token"
NS = "llm"
DGD = "llama"
SPOT: Slot = ("g6.xlarge", "us-east-1a", "spot")
ONDEMAND: Slot = ("g6.xlarge", "us-east-1a", "ondemand")
SPOT_ADAPTER = "llama-vllmworkerspot"
ONDEMAND_ADAPTER = "llama-vllmworkerondemand"
SCALE_PATH = "/apis/nvidia.com/v1beta1/namespaces/llm/dynamographdeploymentscalingadapters/{}/scale"
BOOT = 60.0
T0 = 1000.0


@pytest.fixture
async def kube() -> AsyncIterator[FakeKubeApi]:
    fake = FakeKubeApi(token=TOKEN, namespace=NS, graph_deployment=DGD)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n", encoding="utf-8")
    return path


@pytest.fixture
def make_actuator(kube: FakeKubeApi, token_file: Path) -> Callable[..., KubernetesActuator]:
    def make(**overrides: object) -> KubernetesActuator:
        fields: dict[str, object] = {
            "api_url": kube.url,
            "namespace": NS,
            "token_file": str(token_file),
            "ca_file": "",
            "graph_deployment": DGD,
            "request_timeout_seconds": 2.0,
            "eviction_margin_seconds": 5.0,
            "services": [
                ServiceMapping(*SPOT, service="VllmWorkerSpot"),
                ServiceMapping(*ONDEMAND, service="VllmWorkerOnDemand"),
            ],
        }
        fields.update(overrides)
        return KubernetesActuator(KubernetesSettings(**fields), boot_s=BOOT, env={})  # type: ignore[arg-type]

    return make


@pytest.fixture
async def actuator(
    kube: FakeKubeApi, make_actuator: Callable[..., KubernetesActuator]
) -> AsyncIterator[KubernetesActuator]:
    kube.add_service("VllmWorkerSpot")
    kube.add_service("VllmWorkerOnDemand")
    driver = make_actuator()
    assert await driver.open(T0) == []
    yield driver
    await driver.close()


def states(changes: Sequence[NodeChange]) -> list[tuple[str, str]]:
    return [(c.instance_id, c.state) for c in changes]


def by_id(nodes: Sequence[NodeNow]) -> dict[str, NodeNow]:
    return {n.node_id: n for n in nodes}


def in_slot(driver: KubernetesActuator, slot: Slot, now: float = T0) -> list[NodeNow]:
    return [n for n in driver.fleet(now) if n.slot == slot]


async def scaled(driver: KubernetesActuator, kube: FakeKubeApi, slot: Slot, count: int) -> list[str]:
    """``count`` running (Ready) pods in ``slot``'s service; their names, oldest first."""
    await driver.carry_out([Launch(count, slot, T0 + BOOT, "test")], T0, "setup")
    service = "VllmWorkerSpot" if slot == SPOT else "VllmWorkerOnDemand"
    names = [p.name for p in kube.service_pods(service)]
    kube.make_ready(*names)
    await driver.poll(T0)
    return names


# -- scale up ------------------------------------------------------------------------------------------


async def test_a_launch_patches_its_own_services_replicas_up_and_reports_each_new_pod(
    kube: FakeKubeApi, actuator: KubernetesActuator
) -> None:
    changes = await actuator.carry_out([Launch(2, SPOT, T0 + BOOT, "short")], T0, "plan-1")

    [patch] = kube.made("PATCH")
    assert patch.path == SCALE_PATH.format(SPOT_ADAPTER)
    assert patch.content_type == "application/merge-patch+json"
    assert patch.body == {"spec": {"replicas": 2}}
    pods = [p.name for p in kube.service_pods("VllmWorkerSpot")]
    assert len(pods) == 2
    assert kube.service_pods("VllmWorkerOnDemand") == []
    assert states(changes) == [(pods[0], "launched"), (pods[1], "launched")]
    assert {(c.instance_type, c.pool, c.tier, c.cause, c.at) for c in changes} == {(*SPOT, "plan-1", T0)}
    fleet = in_slot(actuator, SPOT)
    assert sorted(n.node_id for n in fleet) == pods
    assert all(n.standing == "held" and n.ready_at == T0 + BOOT for n in fleet)


async def test_each_tier_scales_its_own_service(kube: FakeKubeApi, actuator: KubernetesActuator) -> None:
    await actuator.carry_out(
        [Launch(1, SPOT, T0 + BOOT, ""), Launch(3, ONDEMAND, T0 + BOOT, "")], T0, "plan-1"
    )

    assert [(r.path, r.body) for r in kube.made("PATCH")] == [
        (SCALE_PATH.format(SPOT_ADAPTER), {"spec": {"replicas": 1}}),
        (SCALE_PATH.format(ONDEMAND_ADAPTER), {"spec": {"replicas": 3}}),
    ]
    assert (len(in_slot(actuator, SPOT)), len(in_slot(actuator, ONDEMAND))) == (1, 3)


async def test_pods_that_turn_ready_are_reported_ready_on_poll(
    kube: FakeKubeApi, actuator: KubernetesActuator
) -> None:
    await actuator.carry_out([Launch(2, SPOT, T0 + BOOT, "")], T0, "plan-1")
    first, second = (p.name for p in kube.service_pods("VllmWorkerSpot"))
    kube.make_ready(first)

    changes = await actuator.poll(T0 + 30)

    assert states(changes) == [(first, "ready")]
    assert [c.cause for c in changes] == ["plan-1"]
    nodes = by_id(actuator.fleet(T0 + 30))
    assert nodes[first].ready_at is None
    assert nodes[second].ready_at == T0 + BOOT
    assert await actuator.poll(T0 + 31) == []


async def test_replicas_asked_for_before_the_controller_made_their_pods_are_booting_nodes(
    kube: FakeKubeApi, actuator: KubernetesActuator
) -> None:
    kube.paused = True
    changes = await actuator.carry_out([Launch(2, SPOT, T0 + BOOT, "")], T0, "plan-1")

    assert changes == []
    fleet = in_slot(actuator, SPOT)
    assert len(fleet) == 2
    assert all(n.standing == "held" and n.ready_at == T0 + BOOT for n in fleet)
    # The next plan for the same target launches nothing more: the replicas asked for count.
    assert reconcile(FleetNow(T0 + 1, actuator.fleet(T0 + 1)), {SPOT: 2}, boot_s=BOOT) == ()

    kube.resume()
    changes = await actuator.poll(T0 + 5)
    pods = [p.name for p in kube.service_pods("VllmWorkerSpot")]
    assert states(changes) == [(pods[0], "launched"), (pods[1], "launched")]
    assert [c.cause for c in changes] == ["plan-1", "plan-1"]
    assert sorted(n.node_id for n in in_slot(actuator, SPOT, T0 + 5)) == pods


# -- scale down ----------------------------------------------------------------------------------------


async def test_a_release_patches_the_replicas_down_and_kubernetes_picks_the_pod(
    kube: FakeKubeApi, actuator: KubernetesActuator
) -> None:
    oldest, middle, newest = await scaled(actuator, kube, SPOT, 3)

    changes = await actuator.carry_out([Release(oldest, SPOT, None, "surplus")], T0 + 10, "plan-2")

    assert kube.made("PATCH")[-1].body == {"spec": {"replicas": 2}}
    # The fake, like a ReplicaSet, deletes the newest Ready pod: that is the one going.
    assert states(changes) == [(newest, "draining")]
    assert changes[0].cause == "plan-2"
    nodes = by_id(actuator.fleet(T0 + 10))
    assert (nodes[oldest].standing, nodes[middle].standing, nodes[newest].standing) == (
        "held",
        "held",
        "released",
    )

    kube.end_terminations()
    changes = await actuator.poll(T0 + 20)
    assert states(changes) == [(newest, "terminated")]
    assert changes[0].cause == "plan-2"
    assert sorted(by_id(actuator.fleet(T0 + 20))) == sorted([oldest, middle])


async def test_a_release_not_yet_acted_on_shows_the_named_node_going(
    kube: FakeKubeApi, actuator: KubernetesActuator
) -> None:
    oldest, _middle, newest = await scaled(actuator, kube, SPOT, 3)
    kube.paused = True

    changes = await actuator.carry_out([Release(oldest, SPOT, None, "surplus")], T0 + 10, "plan-2")

    assert changes == []
    assert by_id(actuator.fleet(T0 + 10))[oldest].standing == "released"
    assert reconcile(FleetNow(T0 + 11, actuator.fleet(T0 + 11)), {SPOT: 2}, boot_s=BOOT) == ()

    kube.resume()
    changes = await actuator.poll(T0 + 12)
    assert states(changes) == [(newest, "draining")]
    assert changes[0].cause == "plan-2"
    assert by_id(actuator.fleet(T0 + 12))[oldest].standing == "held"


async def test_releasing_a_booting_replica_without_a_pod_forgets_it(
    kube: FakeKubeApi, actuator: KubernetesActuator
) -> None:
    kube.paused = True
    await actuator.carry_out([Launch(2, SPOT, T0 + BOOT, "")], T0, "plan-1")
    older, newer = sorted(in_slot(actuator, SPOT), key=lambda n: n.launch_order)

    await actuator.carry_out([Release(newer.node_id, SPOT, None, "booting")], T0 + 1, "plan-2")

    assert kube.made("PATCH")[-1].body == {"spec": {"replicas": 1}}
    assert in_slot(actuator, SPOT, T0 + 1) == [older]


async def test_pods_turning_ready_on_their_own_are_seen_by_polling(
    kube: FakeKubeApi, actuator: KubernetesActuator
) -> None:
    kube.ready_after = 0.2
    [launched] = await actuator.carry_out([Launch(1, SPOT, T0 + BOOT, "")], T0, "plan-1")
    seen: list[tuple[str, str]] = []

    async def polled() -> bool:  # the fake marks the pod Ready after a delay, read only by polling
        seen.extend(states(await actuator.poll(T0 + 1)))
        return bool(seen)

    await eventually_async(polled, "the pod seen ready", 10)
    assert seen == [(launched.instance_id, "ready")]


# -- make before break ---------------------------------------------------------------------------------


async def test_make_before_break_keeps_the_replica_until_its_leave_time_then_scales_down(
    kube: FakeKubeApi, actuator: KubernetesActuator
) -> None:
    older, newer = await scaled(actuator, kube, SPOT, 2)
    patches = len(kube.made("PATCH"))

    changes = await actuator.carry_out([Release(newer, SPOT, T0 + 100, "mbb")], T0 + 10, "plan-2")

    assert changes == []
    assert len(kube.made("PATCH")) == patches
    node = by_id(actuator.fleet(T0 + 10))[newer]
    assert (node.standing, node.leave_at) == ("leaving", T0 + 100)
    assert await actuator.poll(T0 + 99) == []
    assert len(kube.made("PATCH")) == patches

    changes = await actuator.poll(T0 + 100)

    assert kube.made("PATCH")[-1].body == {"spec": {"replicas": 1}}
    assert states(changes) == [(newer, "draining")]
    assert changes[0].cause == "plan-2"
    assert by_id(actuator.fleet(T0 + 100))[older].standing == "held"


async def test_a_take_back_cancels_the_pending_leave(kube: FakeKubeApi, actuator: KubernetesActuator) -> None:
    _older, newer = await scaled(actuator, kube, SPOT, 2)
    await actuator.carry_out([Release(newer, SPOT, T0 + 100, "mbb")], T0 + 10, "plan-2")
    patches = len(kube.made("PATCH"))

    await actuator.carry_out([TakeBack(newer, SPOT, "wanted again")], T0 + 20, "plan-3")

    assert by_id(actuator.fleet(T0 + 20))[newer].standing == "held"
    assert await actuator.poll(T0 + 200) == []
    assert len(kube.made("PATCH")) == patches
    assert len(kube.service_pods("VllmWorkerSpot")) == 2


# -- spot notices ---------------------------------------------------------------------------------------


async def test_a_notice_evicts_the_machines_worker_pods_with_a_grace_that_ends_before_the_deadline(
    kube: FakeKubeApi, actuator: KubernetesActuator
) -> None:
    pod, other = await scaled(actuator, kube, SPOT, 2)
    machine = kube.pods[pod].node
    assert actuator.runs(machine)
    assert actuator.runs(pod)
    assert not actuator.runs("some-other-machine")

    changes = await actuator.reclaim(machine, deadline=T0 + 30, now=T0, cause="notice-1")

    [eviction] = kube.made("POST")
    assert eviction.path == f"/api/v1/namespaces/{NS}/pods/{pod}/eviction"
    assert eviction.body == {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod, "namespace": NS},
        "deleteOptions": {"gracePeriodSeconds": 25},  # 30 s to the deadline, less the 5 s margin
    }
    assert kube.pods[pod].grace_seconds == 25
    assert states(changes) == [(pod, "draining")]
    assert changes[0].cause == "notice-1"
    # The pod's node goes into its fleet event: the sidecar's notice names the node, the agent the pod.
    assert changes[0].machine == machine
    # Its controller replaces it (the replica count is unchanged): a booting node at once, so that the
    # plan made on the notice does not launch a second replacement.
    fleet = in_slot(actuator, SPOT)
    assert by_id(fleet)[pod].standing == "reclaimed"
    assert by_id(fleet)[other].standing == "held"
    held = [n for n in fleet if n.standing == "held"]
    assert len(held) == 2
    assert reconcile(FleetNow(T0, fleet), {SPOT: 2}, boot_s=BOOT) == ()

    changes = await actuator.poll(T0 + 1)
    replacement = kube.service_pods("VllmWorkerSpot")[-1].name
    assert states(changes) == [(replacement, "launched")]
    kube.end_terminations()
    assert states(await actuator.poll(T0 + 25)) == [(pod, "terminated")]


async def test_a_notice_too_close_to_its_deadline_evicts_with_no_grace(
    kube: FakeKubeApi, actuator: KubernetesActuator
) -> None:
    [pod] = await scaled(actuator, kube, SPOT, 1)

    await actuator.reclaim(pod, deadline=T0 + 3, now=T0, cause="notice-1")

    assert kube.made("POST")[0].body["deleteOptions"] == {"gracePeriodSeconds": 0}


async def test_a_pod_a_disruption_budget_will_not_let_go_is_deleted_with_the_same_grace(
    kube: FakeKubeApi, actuator: KubernetesActuator
) -> None:
    [pod] = await scaled(actuator, kube, SPOT, 1)
    kube.disruption_budget_blocks = True

    changes = await actuator.reclaim(pod, deadline=T0 + 120, now=T0, cause="notice-1")

    assert [(r.method, r.status) for r in kube.requests[-2:]] == [("POST", 429), ("DELETE", 201)]
    assert kube.requests[-1].path == f"/api/v1/namespaces/{NS}/pods/{pod}"
    assert kube.requests[-1].body == {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 115}
    assert states(changes) == [(pod, "draining")]
    assert sum(actuator.api_errors.values()) == 0


async def test_a_notice_on_a_pod_already_draining_shortens_its_grace(
    kube: FakeKubeApi, actuator: KubernetesActuator
) -> None:
    _older, newer = await scaled(actuator, kube, SPOT, 2)
    await actuator.carry_out([Release(newer, SPOT, None, "surplus")], T0, "plan-2")
    assert kube.pods[newer].deleted

    changes = await actuator.reclaim(kube.pods[newer].node, deadline=T0 + 20, now=T0 + 1, cause="notice-1")

    assert changes == []  # already reported draining
    assert kube.pods[newer].grace_seconds == 14
    assert by_id(actuator.fleet(T0 + 1))[newer].standing == "reclaimed"


async def test_a_notice_for_a_machine_it_does_not_run_does_nothing(
    kube: FakeKubeApi, actuator: KubernetesActuator
) -> None:
    await scaled(actuator, kube, SPOT, 1)
    sent = len(kube.requests)

    assert await actuator.reclaim("not-ours", deadline=T0 + 30, now=T0, cause="notice-1") == []
    assert len(kube.requests) == sent


# -- adopt on open --------------------------------------------------------------------------------------


async def test_open_adopts_the_running_pods_and_launches_nothing(
    kube: FakeKubeApi, make_actuator: Callable[..., KubernetesActuator]
) -> None:
    kube.add_service("VllmWorkerSpot", replicas=3, ready=True)
    kube.add_service("VllmWorkerOnDemand", replicas=1)
    spot = [p.name for p in kube.service_pods("VllmWorkerSpot")]
    [booting] = [p.name for p in kube.service_pods("VllmWorkerOnDemand")]
    driver = make_actuator()
    try:
        changes = await driver.open(T0)

        assert sorted(states(changes)) == sorted([*((n, "ready") for n in spot), (booting, "launched")])
        assert {r.method for r in kube.requests} == {"GET"}
        nodes = by_id(driver.fleet(T0))
        assert sorted(nodes) == sorted([*spot, booting])
        assert all(nodes[n].ready_at is None for n in spot)
        assert nodes[booting].ready_at == T0 + BOOT
        assert reconcile(FleetNow(T0, driver.fleet(T0)), {SPOT: 3, ONDEMAND: 1}, boot_s=BOOT) == ()
    finally:
        await driver.close()


# -- API errors -------------------------------------------------------------------------------------------

FAULTS = {
    "forbidden": (403, None, "HTTP 403 (InternalError: injected fault 403)"),
    "not found": (404, None, "HTTP 404"),
    "server error": (500, None, "HTTP 500"),
    "garbage": (200, b"{not json", "malformed Scale"),
    "wrong shape": (200, b'{"spec": {"replicas": -3}}', "malformed Scale"),
}


@pytest.mark.parametrize(("status", "body", "why"), FAULTS.values(), ids=FAULTS.keys())
async def test_a_failed_patch_changes_nothing_and_says_why(
    kube: FakeKubeApi, actuator: KubernetesActuator, status: int, body: bytes | None, why: str
) -> None:
    await scaled(actuator, kube, SPOT, 1)
    before = actuator.fleet(T0)
    kube.fail("PATCH", status, body=body)

    changes = await actuator.carry_out([Launch(2, SPOT, T0 + BOOT, "")], T0, "plan-2")

    assert changes == []
    assert actuator.fleet(T0) == before
    assert kube.adapters[SPOT_ADAPTER].replicas == 1
    assert actuator.api_errors["patch_scale"] == 1
    assert actuator.last_error.startswith(f"PATCH scale of {SPOT_ADAPTER} to 3: ")
    assert why in actuator.last_error
    # The next plan tries again from what was last read.
    await actuator.carry_out([Launch(2, SPOT, T0 + BOOT, "")], T0, "plan-3")
    assert kube.adapters[SPOT_ADAPTER].replicas == 3


async def test_an_api_server_that_does_not_answer_in_time_is_an_error(
    kube: FakeKubeApi, make_actuator: Callable[..., KubernetesActuator]
) -> None:
    kube.add_service("VllmWorkerSpot")
    kube.add_service("VllmWorkerOnDemand")
    driver = make_actuator(request_timeout_seconds=0.3)
    await driver.open(T0)
    kube.fail("PATCH", hang=True)
    try:
        assert await driver.carry_out([Launch(1, SPOT, T0 + BOOT, "")], T0, "plan-1") == []
    finally:
        await driver.close()

    assert driver.last_error == f"PATCH scale of {SPOT_ADAPTER} to 1: no answer within 0.3 s"
    assert driver.fleet(T0) == []


READ_FAULTS = {
    "scale answers 500": ("/scale", 500, None, "get_scale", "GET scale of llama-vllmworkerspot: HTTP 500"),
    "pod list without a name": (
        "/pods",
        200,
        b'{"items": [{"metadata": {}}]}',
        "list_pods",
        "malformed PodList",
    ),
}


@pytest.mark.parametrize(
    ("path", "status", "body", "call", "why"), READ_FAULTS.values(), ids=READ_FAULTS.keys()
)
async def test_a_failed_read_keeps_the_last_view(
    kube: FakeKubeApi,
    actuator: KubernetesActuator,
    path: str,
    status: int,
    body: bytes | None,
    call: str,
    why: str,
) -> None:
    [pod] = await scaled(actuator, kube, SPOT, 1)
    before = actuator.fleet(T0)
    kube.delete_pod(pod)  # a change the failed read would have shown
    kube.fail("GET", status, body=body, path=path)

    changes = await actuator.poll(T0 + 1)

    assert [c for c in changes if c.tier == "spot"] == []
    assert actuator.fleet(T0) == before
    assert actuator.api_errors[call] == 1
    assert why in actuator.last_error
    # The next read sees it.
    assert (pod, "draining") in states(await actuator.poll(T0 + 2))


def rotate(token_file: Path, token: str) -> None:
    """The kubelet writes a new token into the file."""
    token_file.write_text(token, encoding="utf-8")


async def test_a_wrong_token_is_refused_and_a_rotated_token_is_read_again(
    kube: FakeKubeApi, actuator: KubernetesActuator, token_file: Path
) -> None:
    rotate(token_file, "stale-token")

    assert await actuator.carry_out([Launch(1, SPOT, T0 + BOOT, "")], T0, "plan-1") == []
    assert "HTTP 401" in actuator.last_error

    rotate(token_file, TOKEN)
    assert len(await actuator.carry_out([Launch(1, SPOT, T0 + BOOT, "")], T0, "plan-1")) == 1


async def test_nothing_is_changed_in_a_service_never_read(
    kube: FakeKubeApi, make_actuator: Callable[..., KubernetesActuator]
) -> None:
    kube.add_service("VllmWorkerOnDemand")  # the spot adapter is missing: its GET answers 404
    driver = make_actuator()
    try:
        assert await driver.open(T0) == []
        assert "HTTP 404" in driver.last_error

        assert await driver.carry_out([Launch(1, SPOT, T0 + BOOT, "")], T0, "plan-1") == []

        assert kube.made("PATCH") == []
        assert driver.api_errors["unusable_decision"] == 1
        assert "has not been read yet" in driver.last_error

        # Once the adapter answers, a poll adopts what runs, as open() would have.
        kube.add_service("VllmWorkerSpot", replicas=2, ready=True)
        changes = await driver.poll(T0 + 10)
        assert sorted(states(changes)) == [(p.name, "ready") for p in kube.service_pods("VllmWorkerSpot")]
        assert kube.made("PATCH") == []
    finally:
        await driver.close()


async def test_a_slot_no_service_maps_is_not_applied(kube: FakeKubeApi, actuator: KubernetesActuator) -> None:
    other: Slot = ("a100", "us-east-1b", "spot")

    assert await actuator.carry_out([Launch(1, other, T0 + BOOT, "")], T0, "plan-1") == []
    assert kube.made("PATCH") == []
    assert "no service maps this slot" in actuator.last_error


# -- TLS ----------------------------------------------------------------------------------------------------


async def test_over_tls_the_server_is_trusted_through_ca_file_only(tmp_path: Path, token_file: Path) -> None:
    cert, key = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    kube = FakeKubeApi(token=TOKEN, namespace=NS, graph_deployment=DGD)
    await kube.start(tls)
    kube.add_service("VllmWorkerSpot", replicas=1, ready=True)
    services = [ServiceMapping(*SPOT, service="VllmWorkerSpot")]
    common = {"api_url": kube.url, "namespace": NS, "token_file": str(token_file), "graph_deployment": DGD}
    trusting = KubernetesActuator(
        KubernetesSettings(**common, ca_file=str(cert), services=services), boot_s=BOOT
    )
    system = KubernetesActuator(KubernetesSettings(**common, ca_file="", services=services), boot_s=BOOT)
    try:
        assert kube.url.startswith("https://")
        assert len(await trusting.open(T0)) == 1
        assert await system.open(T0) == []
        assert "certificate verify failed" in system.last_error
        assert system.last_error.startswith(f"GET scale of {SPOT_ADAPTER}: ")
    finally:
        await trusting.close()
        await system.close()
        await kube.stop()


# -- the fake checks what it is sent ------------------------------------------------------------------------


async def test_the_fake_api_server_refuses_requests_the_real_one_would(kube: FakeKubeApi) -> None:
    kube.add_service("VllmWorkerSpot", replicas=1)
    [pod] = kube.service_pods("VllmWorkerSpot")
    scale = kube.url + SCALE_PATH.format(SPOT_ADAPTER)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    merge = {**auth, "Content-Type": "application/merge-patch+json"}
    evict = f"{kube.url}/api/v1/namespaces/{NS}/pods/{pod.name}/eviction"
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod.name}}
    async with aiohttp.ClientSession() as http:
        cases = [
            http.get(scale),
            http.get(scale, headers={"Authorization": "Bearer wrong"}),
            http.patch(scale, json={"spec": {"replicas": 2}}, headers=auth),
            http.patch(scale, data=b'{"spec": {"replicas": -1}}', headers=merge),
            http.patch(scale, data=b'{"replicas": 2}', headers=merge),
            http.get(kube.url + SCALE_PATH.format("llama-nope"), headers=auth),
            http.get(scale.replace("/llm/", "/other/"), headers=auth),
            http.post(evict, json=eviction, headers=auth),
            http.post(evict, json={**eviction, "deleteOptions": {"gracePeriodSeconds": -1}}, headers=auth),
            http.get(f"{kube.url}/api/v1/namespaces/{NS}/pods?labelSelector=a!=b", headers=auth),
            http.delete(evict.removesuffix("/eviction"), json={"gracePeriodSeconds": 5}, headers=auth),
        ]
        answers = []
        for case in cases:
            async with case as response:
                answers.append(response.status)

    assert answers == [401, 401, 415, 422, 422, 404, 404, 400, 400, 400, 400]
    assert kube.adapters[SPOT_ADAPTER].replicas == 1
    assert not pod.deleted
