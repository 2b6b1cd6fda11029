"""The nats-server configuration the Kubernetes manifests ship (deploy/kubernetes/nats-config.yaml, generated
from deploy/nats.conf) on a real nats-server: JetStream up behind the probes the StatefulSet uses, the
permissions enforced, and a real ``cost-agent run`` keeping its state and its leader lease there with the
agent's credentials alone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from cli import ROOT, start_cost_agent
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from test_bus_security import PASSWORDS, SUBJECTS, WAIT_S, Client, bus_config
from test_cli_run import from_schema
from waits import eventually_async

from agent.bus import settle
from agent.core.lease import lease_bucket
from agent.deploy_manifests import NATS_CONFIGMAP, NATS_DATA_DIR, NATS_MONITOR_PORT
from agent.runtime.bus_security import BusSecurity
from agent.runtime.connection import connect
from agent.runtime.leadership import KvLease
from agent.runtime.nats_server import NatsServer
from agent.runtime.state_store import JetStreamStore, bucket_name


def statefulset() -> dict[str, Any]:
    docs = yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "nats-statefulset.yaml").read_text())
    return next(d for d in docs if d["kind"] == "StatefulSet")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """nats-server run with the ConfigMap's nats.conf, the pod's volume and monitoring port swapped for a
    directory and a free port of this machine (the client port is the command line's); its client URL
    and monitoring base URL. The passwords come from the environment, as the Secret gives them."""
    directory = tmp_path_factory.mktemp("deployed-nats")
    config = yaml.safe_load((ROOT / NATS_CONFIGMAP).read_text(encoding="utf-8"))["data"]["nats.conf"]
    for pod_value, here in (
        (f'store_dir: "{NATS_DATA_DIR}/', f'store_dir: "{directory}/'),
        (f"http_port: {NATS_MONITOR_PORT}\n", "http_port: -1\n"),  # -1: a free port
    ):
        assert config.count(pod_value) == 1, pod_value
        config = config.replace(pod_value, here)
    conf = directory / "nats.conf"
    conf.write_text(config, encoding="utf-8")
    env = {f"COSTAGENT_{user.upper().replace('-', '_')}_PASSWORD": pw for user, pw in PASSWORDS.items()}
    server = NatsServer(config_file=conf, jetstream=False)  # JetStream as the file configures it
    with mock.patch.dict(os.environ, env):
        server.start()
    try:
        found = re.search(r"Starting http monitor on (\S+)", server.log_file.read_text())
        assert found, "no monitoring port in the server's log"
        yield server.url, f"http://{found[1]}"
    finally:
        server.stop()


def agent_security() -> BusSecurity:
    return BusSecurity(user="agent", password=PASSWORDS["agent"])


def test_jetstream_is_up_behind_the_probes_the_statefulset_uses(deployed: tuple[str, str]) -> None:
    _, monitor = deployed
    container = statefulset()["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        path = container[probe]["httpGet"]["path"]
        with urllib.request.urlopen(monitor + path, timeout=WAIT_S) as answer:
            assert answer.status == 200, probe


async def test_the_agent_s_credentials_keep_its_state_and_its_lease_in_jetstream(
    deployed: tuple[str, str],
) -> None:
    url, _ = deployed
    nc = await connect(url, "deploy-test-agent", agent_security())
    try:
        store = JetStreamStore(nc, bucket_name("costagent-deploy-test"))
        await store.open()
        await store.put("ledger", b"snapshot")
        assert await store.get("ledger") == b"snapshot"

        lease = await KvLease.open(nc, lease_bucket("costagent-deploy-test"), "replica-a", WAIT_S)
        revision = await lease.create()
        assert await lease.read() == ("replica-a", revision)
        await lease.release(revision)
    finally:
        await nc.close()


async def test_a_worker_can_neither_read_nor_forge_the_agent_s_state_or_lease(
    deployed: tuple[str, str],
) -> None:
    url, _ = deployed
    agent, worker = await Client().connect(url, "agent"), await Client().connect(url, "worker")
    try:
        bucket = lease_bucket("costagent-forged")
        await KvLease.open(agent.nc, bucket, "replica-a", WAIT_S)
        # A forged lease written straight to the key's subject, and the JetStream API behind the KV client.
        await worker.nc.publish(f"$KV.{bucket}.leader", b"worker")
        await worker.nc.publish(f"$JS.API.STREAM.INFO.KV_{bucket}", b"")
        await worker.nc.subscribe(f"$KV.{bucket}.>")
        await worker.refused("publish", f"$KV.{bucket}.leader")
        await worker.refused("subscription", f"$KV.{bucket}.>")
        await worker.refused("publish", f"$JS.API.STREAM.INFO.KV_{bucket}")
    finally:
        await agent.nc.close()
        await worker.nc.close()


async def only_allowed_arrives(sender: Client, listener: Client, refused: list[str], allowed: str) -> None:
    """The server refuses ``sender`` each of ``refused`` (and says so), and delivers ``allowed`` to
    ``listener``, subscribed to them all, which receives nothing else.

    ``allowed`` is published again until it arrives: with ``nc.flush()`` after the subscriptions, the first
    message was missing in 3 of 80 trials (nats-py's PING can overtake the SUB: agent.bus.settle); kept as a
    guard. The refusals are the server's own word, not an absence. Some roles may use no inbox.
    """
    received: list[str] = []
    arrived = asyncio.Event()

    async def on_message(msg: Msg) -> None:
        received.append(msg.subject)
        arrived.set()

    for subject in [*refused, allowed]:
        await listener.nc.subscribe(subject, cb=on_message)
    await settle(listener.nc, inbox=False)
    for subject in refused:
        await sender.nc.publish(subject, b"{}")
    async with asyncio.timeout(WAIT_S):
        while not arrived.is_set():
            await sender.nc.publish(allowed, b"{}")
            await settle(sender.nc, inbox=False)
            # A poll: the dropped first message above leaves no event to wait for but the next one.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), timeout=0.5)
    for subject in refused:
        await sender.refused("publish", subject)
    await settle(listener.nc, inbox=False)
    assert set(received) == {allowed}


async def test_the_roles_permissions_hold_on_the_deployed_server(deployed: tuple[str, str]) -> None:
    url, _ = deployed
    users = {user: await Client().connect(url, user) for user in ("agent", "worker", "sidecar", "actuator")}
    try:
        agent = users["agent"]
        notice, plan = SUBJECTS.spot_notice("i-reserved"), SUBJECTS.plan_allocation
        await only_allowed_arrives(users["worker"], agent, [notice, plan], SUBJECTS.worker_metrics("w1"))
        await only_allowed_arrives(users["sidecar"], agent, [plan], SUBJECTS.spot_notice("i-spot-1"))
        await only_allowed_arrives(users["actuator"], agent, [notice, plan], SUBJECTS.fleet_instance("i-new"))
    finally:
        for client in users.values():
            await client.nc.close()


async def test_cost_agent_run_leads_with_durable_state_on_the_deployed_server(
    deployed: tuple[str, str], tmp_path: Path
) -> None:
    url, _ = deployed
    # [state] store and [leader] as deploy/kubernetes/agent.toml sets them: JetStream, a lease.
    config = bus_config(tmp_path, url, "agent", PASSWORDS["agent"], namespace="costagent")
    with config.open("a") as file:
        file.write('[state]\nstore = "jetstream"\n[leader]\nenabled = true\n')
    agent = await start_cost_agent("run", "--config", str(config))
    try:
        await agent.wait_logged("leader_elected", timeout_s=60)
        await agent.wait_logged("agent_started", timeout_s=60)
        # An actuator reports a node: the agent saves its fleet at once, in its bucket.
        actuator = await Client().connect(url, "actuator")
        event = from_schema(
            "fleet.instance.v1",
            instance_id="r-1",
            instance_type="h100_8x",
            pool="default",
            tier="reserved",
            state="ready",
        )
        await actuator.nc.publish(SUBJECTS.fleet_instance("r-1"), event)
        await actuator.nc.close()
        nc: NATS = await connect(url, "deploy-test-reader", agent_security())
        try:
            kv = await nc.jetstream().key_value(bucket_name("costagent"))
            await eventually_async(lambda: _has_keys(kv), "an actor's first snapshot", WAIT_S)
        finally:
            await nc.close()
    finally:
        if agent.proc.returncode is None:
            agent.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(agent.finish(), timeout=30)
    assert code == 0
    assert not any("permissions violation" in repr(e).lower() for e in agent.events)


async def _has_keys(kv: Any) -> bool:
    """Whether the bucket holds a key yet (an actor's first snapshot, saved on its timer)."""
    try:
        return bool(await kv.keys())
    except Exception as err:  # nats-py raises NoKeysError while the bucket is empty
        if type(err).__name__ != "NoKeysError":
            raise
        return False
