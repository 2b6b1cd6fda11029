"""Replicas of ``cost-agent run`` on one namespace and a fleet feeding them (tests/e2e/test_leader.py,
bench/leader_failover.py): real processes, their JSON logs read as they come, the plans each one sends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import nats
from cli import ROOT, LoggedProcess, cost_agent_command, cost_agent_env
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from test_cli_run import check, from_schema, reserved_node_ready, scrape, worker_report
from waits import eventually

from agent.bus import settle


@dataclass
class Replica:
    name: str
    process: LoggedProcess

    @property
    def port(self) -> int:
        return int(self.process.event("metrics_serving")["port"])

    def leads(self) -> bool:
        return len(self.process.named("leader_elected")) > len(self.process.named("leader_lost"))

    def signal(self, sig: signal.Signals) -> None:
        os.killpg(self.process.proc.pid, sig)


async def start_replica(url: str, ns: str, name: str) -> Replica:
    env = {k: v for k, v in cost_agent_env().items() if k != "NATS_URL"}
    env |= {
        "COST_AGENT_METRICS__PORT": "0",
        "COST_AGENT_BUS__NAMESPACE": ns,
        "COST_AGENT_BUS__SOURCE": name,
        "COST_AGENT_LEADER__REPLICA_ID": name,
    }
    proc = await asyncio.create_subprocess_exec(
        *cost_agent_command("run", "--nats-url", url, "--log-format", "json"),
        cwd=ROOT,
        env=env,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # so that a failed test can kill it whatever it started
    )
    replica = Replica(name, LoggedProcess(proc))
    await replica.process.wait_logged("replica_started", timeout_s=60)
    return replica


@dataclass
class Fleet:
    """What a fleet tells the agent, twice a second: four workers' reports and a plan tick. Every plan
    and who sent it (the envelope's source is the replica's [bus] source), with when it arrived."""

    nc: NATS
    ns: str
    plans: list[tuple[float, str]] = field(default_factory=list)

    def plans_from(self, name: str, after: float = 0.0) -> int:
        return sum(1 for at, source in self.plans if source == name and at > after)

    async def on_plan(self, msg: Msg) -> None:
        plan = check("plan.allocation.v1", msg.data)
        self.plans.append((time.monotonic(), plan["source"]))

    async def feed(self) -> None:
        await self.nc.publish(f"{self.ns}.evt.fleet.instance.r-1", reserved_node_ready())
        while True:
            for w in range(4):
                await self.nc.publish(f"{self.ns}.evt.worker.metrics.worker-{w}", worker_report(w))
            await self.nc.publish(f"{self.ns}.cmd.plan.tick", from_schema("plan.replan.v1", note="e2e"))
            # The fleet's own rhythm, not a wait for a condition: workers report on a period.
            await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def fleet_and_replicas(url: str) -> AsyncIterator[tuple[Fleet, list[Replica]]]:
    """A fresh namespace, a fleet feeding it, and a list for the replicas started on it (killed at the
    end)."""
    ns = f"lead{os.urandom(4).hex()}"
    nc = await nats.connect(url)
    fleet = Fleet(nc, ns)
    await nc.subscribe(f"{ns}.evt.plan.allocation", cb=fleet.on_plan)
    await settle(nc)
    feeding = asyncio.ensure_future(fleet.feed())
    replicas: list[Replica] = []
    try:
        yield fleet, replicas
    finally:
        feeding.cancel()
        for replica in replicas:
            if replica.process.proc.returncode is None:
                replica.signal(signal.SIGKILL)
            await replica.process.finish()
        await nc.close()


def metric(port: int, name: str) -> float | None:
    status, text = scrape(port, "/metrics")
    assert status == 200
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def start_pair(url: str, fleet: Fleet, replicas: list[Replica]) -> tuple[Replica, Replica]:
    """Two replicas started together; (leader, follower) once one of them leads and plans."""
    replicas += await asyncio.gather(*(start_replica(url, fleet.ns, name) for name in ("one", "two")))
    await eventually(lambda: any(r.leads() for r in replicas), "a leader elected", timeout_s=30)
    leader, follower = sorted(replicas, key=lambda r: not r.leads())
    await eventually(lambda: fleet.plans_from(leader.name) >= 3, "the leader's plans", timeout_s=30)
    return leader, follower
