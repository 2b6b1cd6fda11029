"""What the durable-state tests and bench/durable_restart.py share: the agent's peers on the bus (actuator,
workers, router, notice sidecar) in one connection, the agent's settings, and a real ``cost-agent run``.

Before :attr:`Bus.answering` is set the workers and the router answer none of the coordinator's commands, so
that a drain is still running when the agent is killed.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import msgspec
import nats
from cli import LoggedProcess, start_cost_agent
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from test_cli_run import check, from_schema, scrape

from agent.bus import settle
from schemas import InflightList, RouterAck, WorkerStatus, envelope


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
        await settle(bus.nc)
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
        await settle(self.nc)

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
