"""Durable state: a real ``cost-agent run`` on a real nats-server with JetStream, killed with SIGKILL and
started again, or stopped with SIGTERM in the middle of a drain.

The test plays everyone else on the bus: the actuator (fleet events), the workers (metrics, and the answers
to the coordinator's requests), the router and the notice sidecar. Before the kill it answers none of the
coordinator's commands, so that its drains are still running when the agent dies.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from cli import LoggedProcess, run_cost_agent, start_cost_agent
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from test_cli_run import check, from_schema, scrape
from waits import eventually

from agent.runtime.nats_server import NatsServer
from schemas import InflightList, RouterAck, WorkerStatus, envelope

WAIT_S = 30.0  # generous: every wait is for a condition, never for the time itself


@pytest.fixture(scope="module")
def jetstream_url() -> Iterator[str]:
    with NatsServer(jetstream=True) as server:
        yield server.url


class Bus:
    """The test's connection: what it publishes as the agent's peers, and what it hears from the agent."""

    def __init__(self, nc: NATS, ns: str) -> None:
        self.nc = nc
        self.ns = ns
        self.answering = False
        """The workers and the router answer the coordinator only once this is set."""
        self.commands: list[str] = []
        self.drains: list[dict[str, Any]] = []
        self.reports: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, url: str, ns: str) -> Bus:
        bus = cls(await nats.connect(url), ns)
        await bus.nc.subscribe(f"{ns}.cmd.router.*", cb=bus._router)
        await bus.nc.subscribe(f"{ns}.req.worker.*.*", cb=bus._worker)
        await bus.nc.subscribe(f"{ns}.evt.spot.drain.*", cb=bus._heard(bus.drains, "spot.drain.v1"))
        await bus.nc.subscribe(
            f"{ns}.evt.migration.report.*", cb=bus._heard(bus.reports, "migration.report.v1")
        )
        await bus.nc.flush()
        return bus

    @staticmethod
    def _heard(into: list[dict[str, Any]], tag: str) -> Any:
        async def heard(msg: Msg) -> None:
            into.append(check(tag, msg.data))

        return heard

    async def _router(self, msg: Msg) -> None:
        op = msg.subject.rsplit(".", 1)[1]
        self.commands.append(f"router.{op}")
        if self.answering:
            await msg.respond(msgspec.json.encode(RouterAck(**envelope("router"), op=op, ok=True)))

    async def _worker(self, msg: Msg) -> None:
        worker, op = msg.subject.split(".")[-2:]
        self.commands.append(f"{worker}.{op}")
        if not self.answering:
            return
        instance = f"s-{worker.removeprefix('w-')}"
        reply: Any
        if op == "inflight":
            reply = InflightList(
                **envelope(worker),
                worker_id=worker,
                instance_id=instance,
                decode_tokens_per_s=8000.0,
                max_batch=256,
                requests=[],
            )
        elif op == "status":
            reply = WorkerStatus(
                **envelope(worker),
                worker_id=worker,
                instance_id=instance,
                instance_type="h100_8x",
                accepting=False,
                max_batch=256,
                active=0,
                queued=0,
                prefill_tokens_per_s=50000.0,
                decode_tokens_per_s=8000.0,
            )
        else:
            return  # nothing else is asked of a worker with no request in flight
        await msg.respond(msgspec.json.encode(reply))

    async def publish(self, subject: str, data: bytes) -> None:
        await self.nc.publish(f"{self.ns}.{subject}", data)
        await self.nc.flush()

    async def node(self, instance: str, tier: str) -> None:
        """A ready node, and (for a spot node) its worker's report."""
        await self.publish(
            f"evt.fleet.instance.{instance}",
            from_schema(
                "fleet.instance.v1",
                instance_id=instance,
                instance_type="h100_8x",
                pool="default",
                tier=tier,
                state="ready",
            ),
        )
        if tier != "spot":
            return
        worker = f"w-{instance.removeprefix('s-')}"
        await self.publish(
            f"evt.worker.metrics.{worker}",
            from_schema(
                "worker.metrics.v1",
                worker_id=worker,
                instance_id=instance,
                instance_type="h100_8x",
                pool="default",
                tier="spot",
                interval_s=5.0,
                requests_completed=10,
                prompt_tokens=10_000,
                output_tokens=5_000,
                in_flight=0,
                queued=0,
                kv_blocks_used=0,
                kv_blocks_total=16000,
            ),
        )

    async def notice(self, instance: str, deadline: float) -> None:
        await self.publish(
            f"evt.spot.notice.{instance}",
            from_schema(
                "spot.notice.v1",
                instance_id=instance,
                provider="sim",
                kind="terminate",
                deadline=deadline,
                received_at=time.time(),
            ),
        )

    async def cost_report(self) -> dict[str, Any]:
        reply = await self.nc.request(
            f"{self.ns}.req.cost.report", from_schema("cost.report_request.v1"), timeout=10
        )
        return check("cost.report.v1", reply.data)

    def drained(self, instance: str) -> bool:
        return any(d["instance_id"] == instance for d in self.drains)

    def reported(self, instance: str) -> list[dict[str, Any]]:
        return [r for r in self.reports if r["instance_id"] == instance]


def agent_config(tmp_path: Path, url: str, ns: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        "\n".join(
            [
                "[bus]",
                f'url = "{url}"',
                f'namespace = "{ns}"',
                "[metrics]",
                "port = 0",
                "[reporter]",
                "interval_seconds = 3600  # reports on request only",
                "[state]",
                "snapshot_seconds = 0.5",
                "[spot_monitor]",
                "missed_intervals = 10000  # the test's workers report once: never lost",
                "[migration]",
                # A command the test leaves unanswered waits until the drain's deadline.
                "command_timeout_seconds = 600",
                "safety_margin_seconds = 0",
            ]
        )
        + "\n"
    )
    return path


async def start_agent(config: Path) -> LoggedProcess:
    agent = await start_cost_agent("run", "--config", str(config))
    await agent.wait_logged("agent_started", timeout_s=60)
    return agent


@pytest.fixture
async def rig(jetstream_url: str, tmp_path: Path) -> AsyncIterator[tuple[Bus, Path]]:
    """The test's connection on a fresh namespace, and the settings file of the agent it runs there."""
    ns = f"dur{uuid.uuid4().hex[:8]}"
    bus = await Bus.open(jetstream_url, ns)
    yield bus, agent_config(tmp_path, jetstream_url, ns)
    await bus.nc.close()


@pytest.fixture
async def agents() -> AsyncIterator[list[LoggedProcess]]:
    """Every agent process a test starts; killed at the end if still running."""
    started: list[LoggedProcess] = []
    yield started
    for agent in started:
        if agent.proc.returncode is None:
            agent.proc.kill()  # an embedded nats-server goes with it (it dies with its parent)
            await agent.finish()


def metric(port: int, name: str) -> dict[str, float]:
    """Every sample of one metric, by its label text."""
    _, text = scrape(port, "/metrics")
    return {
        line.split("{", 1)[1].split("}", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{")
    }


def saves(port: int, key: str) -> float:
    return metric(port, "costagent_state_saves_total").get(f'key="{key}"', 0.0)


async def kill_9(agent: LoggedProcess) -> None:
    agent.proc.kill()
    assert await agent.finish() == -signal.SIGKILL


async def test_after_kill_9_the_agent_bills_the_gap_accepts_a_notice_and_finishes_or_reports_its_drains(
    rig: tuple[Bus, Path], agents: list[LoggedProcess]
) -> None:
    bus, config = rig
    agents.append(first := await start_agent(config))

    await bus.node("r-1", "reserved")
    for instance in ("s-1", "s-2", "s-3"):
        await bus.node(instance, "spot")
    # s-1 has two minutes left, s-2 a few seconds: the agent is killed while both drains wait on the
    # workers, and comes back after s-2's deadline.
    long_deadline, short_deadline = time.time() + 120, time.time() + 6
    await bus.notice("s-1", long_deadline)
    await bus.notice("s-2", short_deadline)
    await eventually(
        lambda: {"router.stop_routing"} <= set(bus.commands) and bus.drained("s-1") and bus.drained("s-2"),
        "both drains under way",
        WAIT_S,
    )
    before = await bus.cost_report()
    assert before["instance_hours"]["reserved"] > 0
    # The drains were saved when they started, the fleet at each event; the tokens served within
    # [state] snapshot_seconds: once a save follows the report, the report's figures are all saved.
    port = first.event("metrics_serving")["port"]
    saved = saves(port, "cost_reporter")
    await eventually(lambda: saves(port, "cost_reporter") > saved, "a save after the report", WAIT_S)
    await kill_9(first)
    assert not bus.reported("s-1")
    assert not bus.reported("s-2")

    await eventually(lambda: time.time() > short_deadline, "s-2's deadline passed", WAIT_S)
    bus.answering = True
    agents.append(second := await start_agent(config))

    # A drain whose deadline passed while the agent was down: reported, saying so, with what it knew.
    await eventually(lambda: bool(bus.reported("s-2")), "s-2 reported", WAIT_S)
    (interrupted,) = bus.reported("s-2")
    assert interrupted["interrupted_by"] == "restart"
    assert interrupted["deadline"] == pytest.approx(short_deadline)
    # A drain with time left: finished (stop routing, read in-flight, report).
    await eventually(lambda: bool(bus.reported("s-1")), "s-1 finished", WAIT_S)
    (finished,) = bus.reported("s-1")
    assert finished["interrupted_by"] is None
    assert finished["lost"] == 0
    assert "w-1.inflight" in bus.commands

    # A notice for a node the agent knew before the kill is accepted: a drain order, not "unknown".
    await bus.notice("s-3", time.time() + 120)
    await eventually(lambda: bus.drained("s-3"), "a drain order for s-3", WAIT_S)
    assert not [e for e in second.named("bad_message") if "s-3" in str(e)]

    # The ledger goes on from before the kill, and the nodes running across it are billed for the gap.
    after = await bus.cost_report()
    assert after["period_start"] == pytest.approx(before["period_start"])
    gap_h = (after["period_end"] - before["period_end"]) / 3600
    assert gap_h > 0
    reserved_h = after["instance_hours"]["reserved"] - before["instance_hours"]["reserved"]
    assert reserved_h == pytest.approx(gap_h, rel=0.02)
    spot_h = after["instance_hours"]["spot"] - before["instance_hours"]["spot"]
    assert spot_h == pytest.approx(3 * gap_h, rel=0.02)
    assert after["total_cost"] > before["total_cost"]
    assert after["tokens"] == before["tokens"] == 3 * 15_000  # served before the kill, counted once

    loaded = {e["key"] for e in second.named("state_loaded")}
    assert {"cost_reporter", "spot_monitor", "migration", "optimizer"} <= loaded
    assert not second.named("state_snapshot_rejected")

    second.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(second.finish(), timeout=30) == 0


async def test_sigterm_during_a_drain_reports_it_and_a_restart_finishes_it(
    rig: tuple[Bus, Path], agents: list[LoggedProcess]
) -> None:
    bus, config = rig
    agents.append(first := await start_agent(config))
    await bus.node("s-1", "spot")
    await bus.notice("s-1", time.time() + 120)
    await eventually(lambda: "router.stop_routing" in bus.commands, "the drain under way", WAIT_S)

    first.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(first.finish(), timeout=30) == 0
    await eventually(lambda: bool(bus.reported("s-1")), "a report of the drain", WAIT_S)
    (report,) = bus.reported("s-1")
    assert report["interrupted_by"] == "shutdown"
    assert first.named("drain_interrupted")

    # Its deadline has not passed: a restarted agent finishes it.
    bus.answering = True
    agents.append(second := await start_agent(config))
    await eventually(lambda: len(bus.reported("s-1")) == 2, "the drain finished", WAIT_S)
    assert bus.reported("s-1")[1]["interrupted_by"] is None
    assert second.named("drain_resumed")
    second.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(second.finish(), timeout=30) == 0


async def test_the_embedded_server_keeps_the_state_in_store_dir_for_the_next_cost_agent_run(
    tmp_path: Path, agents: list[LoggedProcess]
) -> None:
    ns = f"dur{uuid.uuid4().hex[:8]}"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[bus]\nnamespace = "{ns}"\n[metrics]\nport = 0\n[state]\nstore_dir = "{tmp_path / "js"}"\n'
    )
    agents.append(first := await start_agent(config))
    bus = await Bus.open(first.event("nats_embedded")["url"], ns)
    await bus.node("r-1", "reserved")
    port = first.event("metrics_serving")["port"]
    await eventually(lambda: saves(port, "cost_reporter") > 0, "the fleet saved", WAIT_S)
    before = await bus.cost_report()
    await bus.nc.close()
    # Its embedded nats-server goes with it (else it would still hold the store dir).
    await kill_9(first)

    agents.append(second := await start_agent(config))
    assert "cost_reporter" in {e["key"] for e in second.named("state_loaded")}
    bus = await Bus.open(second.event("nats_embedded")["url"], ns)
    after = await bus.cost_report()
    assert after["period_start"] == pytest.approx(before["period_start"])
    assert after["instance_hours"]["reserved"] > before["instance_hours"]["reserved"]
    await bus.nc.close()


def test_a_server_without_jetstream_stops_cost_agent_run_with_one_line_naming_state_store(
    tmp_path: Path,
) -> None:
    with NatsServer(jetstream=False) as server:
        config = tmp_path / "agent.toml"
        config.write_text(f'[bus]\nurl = "{server.url}"\n[metrics]\nport = 0\n[leader]\nenabled = false\n')
        done = run_cost_agent("run", "--config", str(config), timeout_s=60)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]  # after the log lines of start-up: the error, in one line
    assert last.startswith('cost-agent: [state] store = "jetstream": the NATS server has no JetStream')
    assert "Traceback" not in done.stderr
